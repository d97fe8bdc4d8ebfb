#!/usr/bin/env python3
"""grad_rooms.py: check a generated model.cu's gradient arena against its
own backward code.

moecc gives the values' gradients rooms that are reused as their lives
allow (emit_cuda.c's plan_grad_rooms). This check derives those lives
again from the code the rooms serve, independently of the planner:

  - a value's room size from the forward's heading of its op
    ("/* 5: layernorm ... -> [B, 65, 256] */", times model.h's BATCH over
    PARALLEL_DATA: one GPU's share);
  - each room's offset from the "#define Vi_G" lines, following the
    rooms that plan_grad_alias shares ("#define V3_G V7_G");
  - each room's life from dev_backward: the ops whose code names it
    (G(Vi)), and the loss for the logits' (DEV_LAYOUT's dlogits).

It fails when two rooms whose lives meet overlap, when a room reaches
into the scratch (GSCRATCH) or past the arena (grad_floats), or when a
value's gradient has no room. Usage: grad_rooms.py model.cu model.h;
prints TAP lines' text and exits non-zero on a failure.
"""
import re
import sys


def fail(msg):
    print("grad_rooms: " + msg)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        fail("usage: grad_rooms.py model.cu model.h")
    src = open(sys.argv[1]).read()
    hdr = open(sys.argv[2]).read()
    m = re.search(r"^#define BATCH (\d+)", hdr, re.M)
    if not m:
        fail("%s: no BATCH" % sys.argv[2])
    batch = int(m.group(1))
    m = re.search(r"^#define PARALLEL_DATA (\d+)", hdr, re.M)
    if m:  # the arenas hold one GPU's share of the batch
        batch //= int(m.group(1))

    # the forward's headings: each op's output shape
    fwd = src[src.index("void dev_forward("):src.index("void dev_backward(")]
    size = {}
    for m in re.finditer(r"^    /\* (\d+): [^\n]*-> \[B, ([\d, ]+)\]", fwd, re.M):
        n = batch
        for dim in m.group(2).split(","):
            n *= int(dim)
        size[int(m.group(1))] = n

    # the rooms: Vi_G -> an offset, or the value whose room it shares
    define = {}
    for m in re.finditer(r"^#define (V\d+)_G\s+(\S+)", src, re.M):
        define[m.group(1)] = m.group(2)
    m = re.search(r"^#define GSCRATCH (\d+)L", src, re.M)
    if not m:
        fail("no GSCRATCH")
    scratch = int(m.group(1))
    m = re.search(r"(\d+)L, /\* grad_floats \*/", src)
    arena = int(m.group(1))

    def root(v, seen=()):
        d = define.get(v)
        if d is None:
            fail("%s_G is used but has no room" % v)
        if re.fullmatch(r"\d+L", d):
            return v
        a = re.fullmatch(r"(V\d+)_G", d)
        if not a or v in seen:
            fail("%s_G: unexpected definition %s" % (v, d))
        return root(a.group(1), seen + (v,))

    # lives, in backward order: op indices that name the room
    bwd = src[src.index("void dev_backward("):]
    bwd = bwd[:bwd.index("\n}\n")]
    life = {}
    op = None
    for line in bwd.split("\n"):
        h = re.match(r"    /\* (\d+): ", line)
        if h:
            op = int(h.group(1))
            continue
        code = re.sub(r"/\*.*?\*/", "", line)
        for v in re.findall(r"\bG\((V\d+)\)", code):
            if op is None:
                fail("G(%s) before the first op's heading" % v)
            r = root(v)
            lo, hi = life.get(r, (op, op))
            life[r] = (min(lo, op), max(hi, op))
    logits = re.search(r"(V\d+)_G, /\* their gradient \*/", src)
    if logits:  # written by the loss, before the backward's first op
        r = root(logits.group(1))
        lo, _ = life.get(r, (10**9, 0))
        life[r] = (min(lo, 10**9), 10**9)

    rooms = {}
    for v in define:
        r = root(v)
        i = int(v[1:])
        if i not in size:
            fail("%s_G: op %d has no heading with its shape in dev_forward" % (v, i))
        n = size[i]
        off = int(define[r][:-1])
        rooms[r] = (off, max(rooms.get(r, (off, 0))[1], n))

    bad = 0
    for r, (off, n) in rooms.items():
        if off + n > scratch:
            print("%s_G [%d, %d) reaches into the scratch at %d" % (r, off, off + n, scratch))
            bad += 1
        if off + n > arena:
            print("%s_G [%d, %d) reaches past the arena's %d floats" % (r, off, off + n, arena))
            bad += 1
    names = sorted(r for r in rooms if r in life)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            ra, rb = names[a], names[b]
            (oa, na), (ob, nb) = rooms[ra], rooms[rb]
            (la, ha), (lb, hb) = life[ra], life[rb]
            if la <= hb and lb <= ha and oa < ob + nb and ob < oa + na:
                print("%s_G [%d, %d) (ops %d..%d) overlaps %s_G [%d, %d) (ops %d..%d)" %
                      (ra, oa, oa + na, la, ha, rb, ob, ob + nb, lb, hb))
                bad += 1
    if bad:
        sys.exit(1)
    print("%d gradient rooms in %d floats, none overlapping one it meets" % (len(names), scratch))


main()
