#!/usr/bin/env python3
"""ckpt_check.py: check that PyTorch reads a libmoert checkpoint, and write a
reference checkpoint for libmoert to read.

    ckpt_check.py FILE          load FILE two ways and print what it holds
    ckpt_check.py --write FILE  write a small checkpoint the PyTorch way

Reading parses FILE by hand (struct + json, following the safetensors spec)
and loads every tensor with PyTorch (torch.frombuffer, or the safetensors
package when it is installed); both must agree. It prints one line per
tensor and per metadata entry, then "OK":

    tensor NAME DTYPE [D0, D1] sum=FLOAT
    meta KEY VALUE

NAME, KEY and VALUE are JSON strings. Exit status: 0 when the file is good,
1 when it is not, 2 on bad usage, 77 when PyTorch is not installed (the
automake code for a skipped test).
"""
import json
import math
import struct
import sys

try:
    import torch
except ImportError:
    torch = None

try:
    from safetensors import safe_open  # optional
except ImportError:
    safe_open = None

MAX_HEADER = 100_000_000

# dtype: (bytes per element, struct code or None, torch dtype name or None)
DTYPES = {
    "BOOL": (1, "?", "bool"),
    "U8": (1, "B", "uint8"),
    "I8": (1, "b", "int8"),
    "U16": (2, "H", None),
    "I16": (2, "h", "int16"),
    "F16": (2, "e", "float16"),
    "BF16": (2, None, "bfloat16"),
    "U32": (4, "I", None),
    "I32": (4, "i", "int32"),
    "F32": (4, "f", "float32"),
    "U64": (8, "Q", None),
    "I64": (8, "q", "int64"),
    "F64": (8, "d", "float64"),
}


class Bad(Exception):
    pass


def parse(path):
    """Returns (metadata, [(name, dtype, shape, bytes)]) in data order."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise Bad("shorter than 8 bytes")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8 or n > MAX_HEADER:
        raise Bad(f"header length {n} exceeds file size or limit")
    text = blob[8:8 + n]
    if not text.startswith(b"{"):
        raise Bad("header does not start with '{'")
    if (8 + n) % 8 != 0:
        raise Bad(f"data does not start at a multiple of 8 ({8 + n})")

    def no_duplicates(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise Bad(f"duplicate key {k!r}")
            d[k] = v
        return d

    header = json.loads(text.decode("utf-8"), object_pairs_hook=no_duplicates)
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise Bad("__metadata__ is not a string map")
    tensors = []
    for name, info in header.items():
        if set(info) != {"dtype", "shape", "data_offsets"}:
            raise Bad(f"{name}: fields {sorted(info)}")
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise Bad(f"{name}: unknown dtype {dtype}")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise Bad(f"{name}: bad shape {shape}")
        if end - begin != math.prod(shape) * DTYPES[dtype][0]:
            raise Bad(f"{name}: size does not match shape")
        tensors.append((name, dtype, shape, begin, end))
    tensors.sort(key=lambda t: (t[3], t[4]))
    at = 0
    for name, _, _, begin, end in tensors:
        if begin != at:
            raise Bad(f"{name}: gap or overlap at {begin}")
        at = end
    if at != len(data):
        raise Bad(f"tensors cover {at} bytes, file has {len(data)}")
    return meta, [(nm, dt, sh, data[b:e]) for nm, dt, sh, b, e in tensors]


def hand_sum(dtype, raw):
    """Sum of the elements, decoded with struct alone."""
    size, code, _ = DTYPES[dtype]
    count = len(raw) // size
    if dtype == "BF16":
        halves = struct.unpack(f"<{count}H", raw)
        values = [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
    else:
        values = struct.unpack(f"<{count}{code}", raw)
    return math.fsum(float(v) for v in values)


def torch_sum(path, name, dtype, shape, raw):
    """Sum of the elements as PyTorch loads them; None if torch lacks dtype."""
    tname = DTYPES[dtype][2]
    if tname is None:
        return None
    if safe_open is not None:
        with safe_open(path, framework="pt") as f:
            t = f.get_tensor(name)
    elif len(raw) == 0:
        t = torch.empty(shape, dtype=getattr(torch, tname))
    else:
        t = torch.frombuffer(bytearray(raw), dtype=getattr(torch, tname)).reshape(shape)
    if list(t.shape) != list(shape) or t.dtype != getattr(torch, tname):
        raise Bad(f"{name}: torch sees {t.dtype} {list(t.shape)}")
    return math.fsum(t.to(torch.float64).flatten().tolist())


def check(path):
    if torch is None:
        print("PyTorch is not installed: skipped", file=sys.stderr)
        return 77
    try:
        meta, tensors = parse(path)
        for name, dtype, shape, raw in tensors:
            s = hand_sum(dtype, raw)
            ts = torch_sum(path, name, dtype, shape, raw)
            if ts is not None and not (ts == s or (math.isnan(ts) and math.isnan(s))):
                raise Bad(f"{name}: torch sum {ts!r} != struct sum {s!r}")
            dims = ", ".join(str(d) for d in shape)
            print(f"tensor {json.dumps(name)} {dtype} [{dims}] sum={s!r}")
        for key in sorted(meta):
            print(f"meta {json.dumps(key)} {json.dumps(meta[key])}")
    except (Bad, OSError, ValueError, UnicodeDecodeError, RuntimeError) as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    loader = "safetensors" if safe_open is not None else "torch.frombuffer"
    print(f"OK {len(tensors)} tensors ({loader}, torch {torch.__version__})")
    return 0


def write(path):
    """A checkpoint as PyTorch users write one (safetensors.torch.save_file
    when installed, else the same layout by hand with json.dumps' default
    spacing and \\u escapes): something libmoert did not write itself."""
    if torch is None:
        print("PyTorch is not installed: skipped", file=sys.stderr)
        return 77
    tensors = {
        "a.f32": torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.5,
        "b.i64": torch.tensor([-2, -1, 0, 2**40], dtype=torch.int64),
        "c.bf16": torch.tensor([1.0, -2.5, 0.15625], dtype=torch.bfloat16),
        "d.u8": torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8),
        "na\u00efve/\u540d": torch.tensor([3.25, -1e300], dtype=torch.float64),
        "scalar": torch.tensor(7.0, dtype=torch.float32),
        "empty": torch.zeros((0, 3), dtype=torch.float32),
        "i32": torch.tensor([[1, -2], [3, -4]], dtype=torch.int32),
    }
    meta = {"format": "pt", "note": "caf\u00e9 \"quoted\"\n"}
    try:
        from safetensors.torch import save_file
        save_file(tensors, path, metadata=meta)
        return 0
    except ImportError:
        pass
    header = {"__metadata__": meta}
    chunks, at = [], 0
    # Largest dtypes first, as the safetensors library orders them.
    for name, t in sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0])):
        raw = bytes(t.reshape(-1).view(torch.uint8).tolist()) if t.numel() else b""
        dtype = {v[2]: k for k, v in DTYPES.items() if v[2]}[str(t.dtype)[6:]]
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [at, at + len(raw)]}
        chunks.append(raw)
        at += len(raw)
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))
    return 0


def main(argv):
    if len(argv) == 2 and not argv[1].startswith("-"):
        return check(argv[1])
    if len(argv) == 3 and argv[1] == "--write":
        return write(argv[2])
    print(__doc__.strip().splitlines()[0], file=sys.stderr)
    print("usage: ckpt_check.py FILE | ckpt_check.py --write FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
