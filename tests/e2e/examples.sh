#!/bin/sh
# examples.sh: every example either compiles, builds warning-free and
# trains briefly, or is refused by the backend with a message that names
# what is not generated yet (never silently something else). switch_cifar
# trains on a small CIFAR-10 file written here in the real binary format.
. "${top_srcdir:-.}/tests/e2e/common.sh"

for f in "$top_srcdir"/examples/*.moe; do
    name=$(basename "$f" .moe)
    [ "$name" = damex ] && continue # damex.sh covers it
    compile_or_refused "$name" "examples/$name.moe" || continue
    if gen "$name"; then ok "$name compiles and builds without warnings"; else not_ok "$name builds"; fi
done

# switch_cifar on a small CIFAR-10 in the real format: 1 label byte, then
# 3072 pixel bytes (three 32x32 planes), per record
if [ -x "$WORK/switch_cifar/train" ]; then
    dir=$WORK/data/cifar-10-batches-bin
    mkdir -p "$dir"
    make_batch() {
        i=0
        while [ $i -lt "$2" ]; do
            printf "\\$(printf '%03o' $((i % 10)))"
            head -c 3072 /dev/urandom
            i=$((i + 1))
        done > "$1"
    }
    for k in 1 2 3 4 5; do make_batch "$dir/data_batch_$k.bin" 40; done
    make_batch "$dir/test_batch.bin" 40
    if (cd "$WORK/switch_cifar" && ./train --data "$WORK/data" --steps 3 --batch 16 -q > run.log 2>&1) &&
        grep -q "test accuracy per dataset" "$WORK/switch_cifar/run.log"; then
        ok "switch_cifar trains on CIFAR-10 binary files"
    else
        cat "$WORK/switch_cifar/run.log"
        not_ok "switch_cifar trains on CIFAR-10 binary files"
    fi
fi
# damex_gpu: Fashion-MNIST with its own augment (crops and flips), the
# others with train's (crops); two small steps through the loader
if [ -x "$WORK/damex_gpu/train" ] && [ -e "$DATA/fashion-mnist" ] && [ -e "$DATA/mnist" ] && [ -e "$DATA/digits" ]; then
    if (cd "$WORK/damex_gpu" && ./train --data "$DATA" --steps 2 --batch 32 --max-eval 32 -q > run.log 2>&1) &&
        grep -q "test accuracy per dataset" "$WORK/damex_gpu/run.log"; then
        ok "damex_gpu trains with a dataset's own augmentations"
    else
        cat "$WORK/damex_gpu/run.log"
        not_ok "damex_gpu trains with a dataset's own augmentations"
    fi
fi
# soft_moe_mnist on the real MNIST digits: it learns, and one step agrees
# with PyTorch (the soft router with its temperature, the importance loss)
if [ -x "$WORK/soft_moe_mnist/train" ] && [ -e "$DATA/mnist" ]; then
    cd "$WORK/soft_moe_mnist" || exit 1
    learns_mnist soft_moe_mnist --steps 150
    torch_check soft_moe_mnist
    cd "$WORK" || exit 1
fi
# the same with RandAugment (train's augment = [randaugment(n = 2, m = 9)]):
# the trainer is built with it and trains on MNIST through the loader, and
# its first batch differs from the plain one's (the same images, augmented)
if [ -x "$WORK/soft_moe_mnist/train" ] && [ -e "$DATA/mnist" ]; then
    sed 's/^    batch = 64 *$/    batch = 64\n    augment = [randaugment(n = 2, m = 9)]/' "$top_srcdir/examples/soft_moe_mnist.moe" \
        > "$WORK/soft_ra.moe"
    if gen soft_ra "$WORK/soft_ra.moe" && grep -q '^#define RANDAUG_N 2 ' "$WORK/soft_ra/model.h" &&
        (cd "$WORK/soft_ra" && ./train --data "$DATA" --steps 3 --max-eval 64 -q > run.log 2>&1 &&
            ./train --data "$DATA" --dump-step ra.safetensors > dump.log 2>&1) &&
        (cd "$WORK/soft_moe_mnist" && ./train --data "$DATA" --dump-step plain.safetensors > dump.log 2>&1) &&
        grep -q "test accuracy per dataset" "$WORK/soft_ra/run.log" &&
        ! cmp -s "$WORK/soft_ra/ra.safetensors" "$WORK/soft_moe_mnist/plain.safetensors"; then
        ok "soft_moe_mnist with randaugment builds, trains, and its first batch is augmented"
    else
        cat "$WORK/soft_ra/run.log" "$WORK/soft_ra/dump.log" 2>/dev/null
        not_ok "soft_moe_mnist with randaugment builds, trains, and its first batch is augmented"
    fi
fi
# CutMix (train's augment = [cutmix(alpha = 1.0, prob = 1.0)]: every batch
# mixed): the soft MoE learns MNIST with it, and on its first, mixed step
# PyTorch's soft-target cross-entropy of timm's mixed targets agrees on the
# loss and every gradient; DAMEX too, whose heads are per dataset (its
# pairs are made within each dataset)
if [ -x "$WORK/soft_moe_mnist/train" ] && [ -e "$DATA/mnist" ]; then
    with_cutmix "$top_srcdir/examples/soft_moe_mnist.moe" "$WORK/soft_cm.moe"
    if gen soft_cm "$WORK/soft_cm.moe" && grep -q '^#define CUTMIX_PROB 1 ' "$WORK/soft_cm/model.h"; then
        cd "$WORK/soft_cm" || exit 1
        learns_mnist "soft_moe_mnist with cutmix" --steps 300
        torch_check "soft_moe_mnist with cutmix"
        grep -q '^cutmix: lam' torch.log || not_ok "the first step of soft_cm is mixed"
        # three loader threads make the batch one makes (the CPU trainer's
        # default), bit for bit; a count out of range is refused
        if ./train --data "$DATA" --dump-step one.safetensors > /dev/null 2>&1 &&
            ./train --data "$DATA" --loader-threads 3 --dump-step three.safetensors > /dev/null 2>&1 &&
            cmp -s one.safetensors three.safetensors; then
            ok "soft_cm: 3 loader threads make the first step's batch, loss and gradients of 1"
        else
            not_ok "soft_cm: 3 loader threads make the first step's batch, loss and gradients of 1"
        fi
        ./train --data "$DATA" --loader-threads 300 --steps 1 > bad.log 2>&1
        if [ $? -ne 0 ] && grep -q "loader-threads: .*300 loader threads (must be 1..256)" bad.log; then
            ok "soft_cm: --loader-threads 300 is refused with the range"
        else
            cat bad.log
            not_ok "soft_cm: --loader-threads 300 is refused with the range"
        fi
        cd "$WORK" || exit 1
    else
        not_ok "soft_moe_mnist with cutmix compiles"
    fi
fi
if [ -e "$DATA/fashion-mnist" ] && [ -e "$DATA/mnist" ] && [ -e "$DATA/digits" ]; then
    with_cutmix "$top_srcdir/examples/damex.moe" "$WORK/damex_cm.moe"
    if gen damex_cm "$WORK/damex_cm.moe" && grep -q '^#define CUTMIX_PROB 1 ' "$WORK/damex_cm/model.h"; then
        cd "$WORK/damex_cm" || exit 1
        torch_check "damex with cutmix"
        grep -q '^cutmix: lam' torch.log || not_ok "the first step of damex_cm is mixed"
        cd "$WORK" || exit 1
    else
        not_ok "damex with cutmix compiles"
    fi
fi
finish
