#!/usr/bin/env python3
"""randaug_check.py TOOL: libmoert's RandAugment against torchvision's.

For each of the 14 operations, at magnitude bins 0, 5, 9, 15, 23 and 30
(with both signs where torchvision draws one), on random and on smooth
uint8 images of 1 and 3 channels: the magnitude libmoert uses must equal
torchvision's (to a float32 ulp: torch.linspace's vectorised kernel
rounds a few bins otherwise than its formula), and its result must equal
torchvision.transforms.
functional's on the same tensor (RandAugment._apply_op's calls). The
colour and the integer operations must match every pixel; the geometric
ones (nearest-pixel sampling through float32 grids, whose sums torch may
order otherwise) may differ in at most 0.5% of the pixels.
Exit 0: all match; 1: a mismatch (printed); 77: torchvision missing."""
import subprocess
import sys

try:
    import torch
    import torchvision
    from torchvision.transforms import InterpolationMode, RandAugment
    from torchvision.transforms.autoaugment import _apply_op  # RandAugment's own operation calls
except ImportError:
    print("1..0 # SKIP torchvision is not installed (python3-torchvision)")
    sys.exit(77)

GEOMETRIC = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate"}
TV_NAMES = {"identity": "Identity", "shear_x": "ShearX", "shear_y": "ShearY", "translate_x": "TranslateX",
            "translate_y": "TranslateY", "rotate": "Rotate", "brightness": "Brightness", "color": "Color",
            "contrast": "Contrast", "sharpness": "Sharpness", "posterize": "Posterize", "solarize": "Solarize",
            "autocontrast": "AutoContrast", "equalize": "Equalize"}


def images(gen):
    for c in (1, 3):
        for h, w in ((32, 32), (28, 20)):
            yield torch.randint(0, 256, (c, h, w), generator=gen, dtype=torch.uint8)
            # smooth ramps with a narrow range: the contrast and equalize cases
            y = torch.arange(h).view(h, 1).float()
            x = torch.arange(w).view(1, w).float()
            base = (60 + 2 * y + 3 * x).clamp(0, 255)
            yield torch.stack([(base + 17 * k) % 256 for k in range(c)]).to(torch.uint8)


def main():
    tool = sys.argv[1]
    ops = subprocess.run([tool, "ops"], capture_output=True, text=True, check=True).stdout.split("\n")
    ours = {}
    for line in filter(None, ops):
        f = line.split()
        ours[f[0]] = (int(f[1]), [float(v) for v in f[2:]])
    space = RandAugment(num_ops=2, magnitude=9)._augmentation_space(31, (32, 32))
    failed = 0
    # the magnitudes, for a 32 x 32 image
    if list(ours) != list(TV_NAMES):
        print("not ok - the operations' order: %s" % list(ours))
        return 1
    for name, (signed, mags) in ours.items():
        tv_mags, tv_signed = space[TV_NAMES[name]]
        want = [float(tv_mags[m].item()) if tv_mags.ndim > 0 else 0.0 for m in range(31)]
        # torch.linspace's vectorised kernel adds the step to a vector's first
        # value, so a bin may be a float32 ulp off the formula; one ulp passes
        if any(abs(a - b) > 2.4e-7 * abs(b) for a, b in zip(mags, want)) or bool(signed) != tv_signed:
            diff = [(m, mags[m], want[m]) for m in range(31) if mags[m] != want[m]]
            print("not ok - %s magnitudes (signed %d, torchvision's %s) differ at (bin, ours, torchvision): %s"
                  % (name, signed, tv_signed, diff[:4]))
            failed += 1
    gen = torch.Generator().manual_seed(0)
    cases = []
    for img in images(gen):
        c, h, w = img.shape
        space = RandAugment()._augmentation_space(31, (h, w))
        for name in ours:
            tv_mags, tv_signed = space[TV_NAMES[name]]
            for m in (0, 5, 9, 15, 23, 30) if tv_mags.ndim > 0 else (0,):
                mag = float(tv_mags[m].item()) if tv_mags.ndim > 0 else 0.0
                for sign in ((1.0, -1.0) if tv_signed else (1.0,)):
                    cases.append((img, name, mag * sign))
    stream = b"".join(b"%d %d %d %s %.17g\n" % (i.shape[0], i.shape[1], i.shape[2], n.encode(), mg) + i.numpy().tobytes()
                      for i, n, mg in cases)
    out = subprocess.run([tool], input=stream, capture_output=True, check=True).stdout
    at = 0
    worst = {}
    for img, name, mag in cases:
        n = img.numel()
        got = torch.frombuffer(bytearray(out[at:at + n]), dtype=torch.uint8).view(img.shape)
        at += n
        want = _apply_op(img, TV_NAMES[name], mag, interpolation=InterpolationMode.NEAREST, fill=None)
        bad = (got != want).sum().item()
        frac = bad / n
        allowed = 0.005 if name in GEOMETRIC else 0.0
        worst[name] = max(worst.get(name, 0.0), frac)
        if frac > allowed:
            failed += 1
            print("not ok - %s, magnitude %.6g, %s: %d of %d pixels differ (largest by %d)"
                  % (name, mag, tuple(img.shape), bad, n, (got.int() - want.int()).abs().max().item()))
    for name in ours:
        print("ok - %s: at most %.2f%% of the pixels differ from torchvision %s" % (name, 100 * worst[name],
                                                                                     torchvision.__version__)
              if worst[name] <= (0.005 if name in GEOMETRIC else 0.0) else "# %s: see above" % name)
    print("%d cases, %d failed" % (len(cases), failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
