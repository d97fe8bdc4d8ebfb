#!/usr/bin/env python3
"""image_check.py TOOL: libmoert's image files against Pillow's.

Writes image files with Pillow (PPM/PGM, PNG and JPEG of quality 90; RGB
and gray; random pixels and smooth ramps; sizes from 1x1 to ImageNet's
500x375) into a temporary folder, asks TOOL (tests/tools/image_tool,
moert_image_load) for each at a shape (1 or 3 channels; larger, smaller,
the same, or the same along one axis only), and compares its bytes with
Pillow's Image.open(path).convert("RGB" or "L").resize((w, h),
Image.BILINEAR): what torchvision's Resize gives a PIL image. Every byte
must match: decoding (the same libjpeg, libpng), the luma of a gray
request, and the resampling (moert's resize is Pillow's, bit for bit).
Exit 0: all match; 1: a mismatch (printed); 77: Pillow missing."""
import os
import random
import subprocess
import sys
import tempfile

try:
    from PIL import Image
except ImportError:
    print("1..0 # SKIP Pillow is not installed (python3-pil)")
    sys.exit(77)


def source(rng, mode, w, h, smooth):
    """an image of random pixels, or a ramp along both axes with a little noise"""
    bands = 3 if mode == "RGB" else 1
    if smooth:
        px = bytes(min(255, (x * 255 // max(w - 1, 1) + y * 97 // max(h - 1, 1) + 41 * b + rng.randrange(4)) % 256)
                   for y in range(h) for x in range(w) for b in range(bands))
    else:
        px = rng.randbytes(w * h * bands)
    return Image.frombytes(mode, (w, h), px)


def chw(img):
    return b"".join(band.tobytes() for band in img.split())


def main():
    tool = sys.argv[1]
    rng = random.Random(20261205)
    sizes = [(1, 1), (500, 375), (375, 500), (224, 224), (31, 17), (2, 300)]
    sizes += [(rng.randrange(1, 400), rng.randrange(1, 400)) for _ in range(18)]
    cases = []
    with tempfile.TemporaryDirectory(prefix="moert-image-check.") as tmp:
        for k, (w, h) in enumerate(sizes):
            mode = "RGB" if k % 3 else "L"
            img = source(rng, mode, w, h, smooth=k % 2 == 1)
            for fmt, ext in (("PPM", "ppm"), ("PNG", "png"), ("JPEG", "jpg")):
                path = os.path.join(tmp, "%d.%s" % (k, ext))
                img.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
                targets = [(w, h), (w, rng.randrange(1, 300)), (rng.randrange(1, 300), h), (224, 224),
                           (rng.randrange(1, 300), rng.randrange(1, 300))]
                for tw, th in targets:
                    cases.append((path, rng.choice((1, 3)), th, tw))
        stream = "".join("%d %d %d %s\n" % (c, h, w, p) for p, c, h, w in cases).encode()
        run = subprocess.run([tool], input=stream, capture_output=True)
        if run.returncode != 0:
            print("not ok - %s exited with %d: %s" % (tool, run.returncode, run.stderr.decode()[-500:]))
            return 1
        out = run.stdout
        at = 0
        failed = 0
        for path, c, h, w in cases:
            status = out[at] if at < len(out) else None
            at += 1
            want = chw(Image.open(path).convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR))
            what = "%s (%dx%d) to %d x %dx%d" % (os.path.basename(path), *Image.open(path).size, c, w, h)
            if status != 0:
                failed += 1
                print("not ok - %s: not read" % what)
                continue
            got = out[at:at + len(want)]
            at += len(want)
            bad = sum(a != b for a, b in zip(got, want))
            if bad:
                failed += 1
                print("not ok - %s: %d of %d bytes differ from Pillow's" % (what, bad, len(want)))
    print("%s %d files at %d shapes: %d differ from Pillow %s" % ("ok -" if not failed else "not ok -",
                                                                  len(sizes) * 3, len(cases), failed,
                                                                  Image.__version__))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
