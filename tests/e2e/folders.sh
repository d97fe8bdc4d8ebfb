#!/bin/sh
# folders.sh: datasets of image files with test sets of their own
# (tests/e2e/folders.moe): class folders with a test folder beside the
# training folder (ImageNet's train/ and val/), numbered by the .moe file's
# labels or by the training folders' names, and GTSRB's test images with
# GT-final_test.csv, decoded at start-up or as they are drawn
# (in_memory = false). The CPU trainer learns each, the same either way; the test folders, which
# lack a class, are numbered as the training folders are (numbered on their
# own they score at most 50% here); a test class the training data lack, a
# test label beyond the classes, and a training or test image that cannot
# be decoded when it is drawn stop the trainer with a message naming it.
. "${top_srcdir:-.}/tests/e2e/common.sh"

gen_or_stop folders tests/e2e/folders.moe

# 8x8 PPM images, a colour a class (ant red, bee green, cow blue) with noise;
# GTSRB's images are 10x10, the sign the ROI (1,1)-(9,9) inside a grey rim
python3 - "$WORK/data" <<'PY' || { not_ok "the test images are written"; finish; exit 1; }
import os, random, sys
root = sys.argv[1]
rnd = random.Random(7)
colour = {"ant": (220, 30, 30), "bee": (30, 220, 30), "cow": (30, 30, 220)}
def ppm(path, cls, size=8, rim=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    px = bytearray()
    for y in range(size):
        for x in range(size):
            inside = rim <= x < size - rim and rim <= y < size - rim
            px += bytes(max(0, min(255, c + rnd.randint(-40, 40))) if inside else 128 for c in colour[cls])
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (size, size) + px)
for cls in colour:
    for i in range(16):
        ppm(f"{root}/shapes/train/{cls}/{i:02d}.ppm", cls)
for cls in ("ant", "cow"):
    for i in range(8):
        ppm(f"{root}/shapes/val/{cls}/{i:02d}.ppm", cls)
head = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
for k, cls in enumerate(colour):
    d = f"{root}/signs/Final_Training/Images/{k:05d}"
    rows = []
    for i in range(16):
        ppm(f"{d}/{i:05d}.ppm", cls, 10, 1)
        rows.append(f"{i:05d}.ppm;10;10;1;1;9;9;{k}\n")
    open(f"{d}/GT-{k:05d}.csv", "w").write(head + "".join(rows))
d = f"{root}/signs/Final_Test/Images"
rows = []
for i in range(12):
    k = i % 3
    ppm(f"{d}/{i:05d}.ppm", list(colour)[k], 10, 1)
    rows.append(f"{i:05d}.ppm;10;10;1;1;9;9;{k}\n")
open(f"{d}/GT-final_test.csv", "w").write(head + "".join(rows))
# the file that comes with the test images has no ClassId: passed over
open(f"{d}/GT-final_test.test.csv", "w").write(head.replace(";ClassId", "") + "00000.ppm;10;10;1;1;9;9\n")
PY

# stops WHAT PATTERN [ARGS...]: ./train ARGS... (default: --steps 1) in the
# current directory fails with a message that matches PATTERN
stops() {
    s_what=$1
    s_pattern=$2
    shift 2
    [ $# -gt 0 ] || set -- --steps 1
    if ./train --data "$WORK/data" "$@" > bad.log 2>&1; then
        not_ok "$s_what stops the trainer (it ran)"
    elif grep -q "$s_pattern" bad.log; then
        ok "$s_what stops the trainer: $(grep -m 1 '^train: ' bad.log)"
    else
        cat bad.log
        not_ok "$s_what stops the trainer with a message"
    fi
}

# accuracy NAME: the test accuracy of dataset NAME in run.log, in percent
accuracy() {
    awk -v n="$1" '$1 == n && $2 ~ /%$/ { sub("%", "", $2); print $2; exit }' "$WORK/folders/run.log"
}
cd "$WORK/folders" || exit 1
if ./train --data "$WORK/data" --eval-every 0 > run.log 2>&1; then
    for ds in shapes plain signs; do
        a=$(accuracy $ds)
        if [ -n "$a" ] && awk -v a="$a" 'BEGIN { exit !(a >= 90) }'; then
            ok "$ds: learns, and its test set scores $a%"
        else
            cat run.log
            not_ok "$ds: its test set scores at least 90% (got ${a:-nothing})"
        fi
    done
else
    cat run.log
    not_ok "the trainer runs on image folders and GTSRB files"
fi

# the same datasets with in_memory = false: the files are listed and each
# image decoded as it is drawn (by 3 loader threads); the same batches, so
# the same weights, bit for bit, and the same test accuracies
sed 's/^\(dataset [a-z]*(format = [a-z_]*,\)/\1 in_memory = false,/' "$top_srcdir/tests/e2e/folders.moe" \
    > "$WORK/folders_listed.moe"
if [ "$(grep -c 'in_memory = false' "$WORK/folders_listed.moe")" -eq 3 ] &&
    [ "$("$MOECC" --summary "$WORK/folders_listed.moe" | grep -c 'decoded as drawn')" -eq 3 ] &&
    gen folders_listed "$WORK/folders_listed.moe"; then
    ok "folders.moe with in_memory = false compiles and builds"
    if (cd "$WORK/folders_listed" && ./train --data "$WORK/data" --eval-every 0 --loader-threads 3 \
            --checkpoint "$WORK/listed.safetensors" > run.log 2>&1) &&
        python3 - "$WORK/listed.safetensors" "$WORK/folders/folders.safetensors" <<'PY' &&
import json, struct, sys
def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    meta = json.loads(b[8:8 + n]).get("__metadata__", {})
    meta.pop("source", None)  # the .moe file's path
    return meta, b[8 + n:]
sys.exit(load(sys.argv[1]) != load(sys.argv[2]))
PY
        [ "$(grep '%' "$WORK/folders_listed/run.log")" = "$(grep '%' "$WORK/folders/run.log")" ]; then
        ok "images decoded as drawn train to the same weights, bit for bit, and the same accuracies"
    else
        cat "$WORK/folders_listed/run.log"
        not_ok "images decoded as drawn train to the same weights and accuracies as decoded ones"
    fi
    # a file that cannot be decoded when it is drawn stops the trainer,
    # which names it
    bad=$WORK/data/signs/Final_Training/Images/00001/00003.ppm
    cp "$bad" "$WORK/good.ppm"
    printf 'P6\n10 10\n255\ncut short' > "$bad"
    cd "$WORK/folders_listed" || exit 1
    stops "an image file that cannot be decoded" \
        "train: the data loader stopped: .*signs/Final_Training/Images/00001/00003.ppm" --eval-every 0
    cp "$WORK/good.ppm" "$bad"
    # and a test image, when the evaluation draws it
    bad=$WORK/data/shapes/val/cow/03.ppm
    cp "$bad" "$WORK/good.ppm"
    printf 'not an image' > "$bad"
    stops "a test image that cannot be decoded" "train: evaluation of dataset 'shapes': .*shapes/val/cow/03.ppm"
    cp "$WORK/good.ppm" "$bad"
    cd "$WORK/folders" || exit 1
else
    not_ok "folders.moe with in_memory = false compiles and builds"
fi

# a test class that the training data lack
mv "$WORK/data/shapes/val/cow" "$WORK/data/shapes/val/zebra"
stops "a test class without training images" "dataset 'shapes': .*shapes/val: class 'zebra' is not among the dataset's labels"
mv "$WORK/data/shapes/val/zebra" "$WORK/data/shapes/val/cow"

# a test label beyond the classes
sed -i 's/^00011.ppm;10;10;1;1;9;9;2$/00011.ppm;10;10;1;1;9;9;7/' "$WORK/data/signs/Final_Test/Images/GT-final_test.csv"
stops "a test label beyond the classes" "dataset 'signs': its test labels go up to 7, but the .moe file says 3 classes"
finish
