#!/usr/bin/env python3
"""grad_stored.py: check a generated model.cu's GRAD_STORED against its
own backward code.

Each training step zeroes the gradient arena before the backward, which
adds to it, except the tensors GRAD_STORED marks: their one writer
(moe_experts_backward, dw1 and dw2) stores them whole, so they are not
zeroed (backend.cu, grad_zero_runs). A wrong mark either adds a step's
gradient to the last step's (marked, but added to or written twice) or
costs a pass (written whole, unmarked). From the arrays DEV_TENSOR_OFF
and GRAD_STORED and the code of dev_backward, this fails when:

  - a marked tensor's gradient (DP(offset)) is named in the backward
    other than once, or not as moe_experts_backward's dw1 or dw2;
  - a moe_experts_backward call's dw1 or dw2 is not marked.

Usage: grad_stored.py model.cu; prints a line and exits non-zero on a
failure.
"""
import re
import sys

# moe_experts_backward's arguments: (k, dx, dgate, dye, dyr, dxr, dxe,
# dout, xr, h, a, ye, r, w1, w2, b2, dw1, db1, dw2, db2, N, cap, acc)
DW1, DW2 = 16, 18


def fail(msg):
    print("grad_stored: " + msg)
    sys.exit(1)


def int_array(src, name):
    m = re.search(r"const [a-z0-9_ ]+ " + name + r"\[N_TENSORS\] = \{([^}]*)\};", src)
    if not m:
        fail("no %s" % name)
    return [int(v.strip().rstrip("L")) for v in m.group(1).split(",") if v.strip()]


def call_args(src, at):
    """the top-level arguments of the call whose '(' is at src[at]"""
    depth, args, cur = 0, [], []
    for i in range(at, len(src)):
        c = src[i]
        if c == "(":
            depth += 1
            if depth == 1:
                continue
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(cur).strip())
                return args
        elif c == "," and depth == 1:
            args.append("".join(cur).strip())
            cur = []
            continue
        cur.append(c)
    fail("an unclosed call")


def main():
    if len(sys.argv) != 2:
        fail("usage: grad_stored.py model.cu")
    src = open(sys.argv[1]).read()
    off = int_array(src, "DEV_TENSOR_OFF")
    stored = int_array(src, "GRAD_STORED")
    if len(off) != len(stored):
        fail("DEV_TENSOR_OFF has %d entries, GRAD_STORED %d" % (len(off), len(stored)))
    m = re.search(r"\nvoid dev_backward\(.*?\n\}\n", src, re.S)
    if not m:
        fail("no dev_backward")
    bwd = m.group(0)
    dw = set()
    calls = 0
    for c in re.finditer(r"moe_experts_backward<[^>]*>\(", bwd):
        args = call_args(bwd, c.end() - 1)
        if len(args) != 23:
            fail("a moe_experts_backward call with %d arguments" % len(args))
        calls += 1
        for i in (DW1, DW2):
            a = re.fullmatch(r"DP\((\d+)L\)", args[i])
            if not a:
                fail("moe_experts_backward's argument %d is %s, not DP(offset)" % (i, args[i]))
            dw.add(int(a.group(1)))
    named = {}
    for a in re.finditer(r"DP\((\d+)L\)", bwd):
        named[int(a.group(1))] = named.get(int(a.group(1)), 0) + 1
    marked = 0
    for t, (o, s) in enumerate(zip(off, stored)):
        if s:
            marked += 1
            if o not in dw:
                fail("tensor %d (offset %d) is marked stored but is no moe_experts_backward's dw1 or dw2" % (t, o))
            if named.get(o, 0) != 1:
                fail("tensor %d (offset %d) is marked stored but the backward names it %d times"
                     % (t, o, named.get(o, 0)))
        elif o in dw:
            fail("tensor %d (offset %d) is a moe_experts_backward's dw1 or dw2 but not marked stored" % (t, o))
    print("%d tensors' gradients stored by %d moe_experts_backward call%s, the other %d zeroed"
          % (marked, calls, "" if calls == 1 else "s", len(off) - marked))


main()
