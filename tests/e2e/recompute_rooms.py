#!/usr/bin/env python3
"""recompute_rooms.py: check that a generated model.cu with recompute reads
each layer's values from a shared room only while that layer's are there.

With `recompute = experts` or `all`, moecc gives the buffers of one kind
in every layer a single room ("#define XE18 XE10 /* ...: recompute */"):
each layer's forward writes it in turn, and the backward of every layer
but the last makes that layer's values again before reading them. This
check follows the training step as the code runs it, dev_forward's lines
in order and then dev_backward's. A line that names a room's buffer of
layer i (A(XE18)) leaves layer i's values there; at every such line of
dev_backward outside a recomputation (the calls of forward functions
after a "/* recompute" comment, up to the next backward function), the
room must hold layer i's values, else the line reads what another layer
left. Within a recomputation, a call's first buffer and the ops' insides
(QKV, Y, XE, ...) are what it writes, and another value (V<op>) is its
input, which must be there in the same way (a layer norm's output, or
the stream within a block, made again before it).

Usage: recompute_rooms.py model.cu. Exit status 1 on a failure; prints the
number of rooms and checked reads otherwise.
"""
import re
import sys


def main():
    if len(sys.argv) != 2:
        print("usage: recompute_rooms.py model.cu")
        sys.exit(2)
    src = open(sys.argv[1]).read()
    # the rooms: root name -> its members (the root included)
    room_of = {}
    for m in re.finditer(r"^#define (\w+)\s+(\w+) /\*[^\n]*the room of \w+: recompute \*/", src, re.M):
        room_of[m.group(1)] = m.group(2)
    for member, root in list(room_of.items()):
        room_of.setdefault(root, root)
    if not room_of:
        print("recompute_rooms: no shared rooms in %s" % sys.argv[1])
        sys.exit(1)

    def layer(name):
        return int(re.search(r"(\d+)$", name).group(1))

    fwd = src[src.index("void dev_forward("):src.index("void dev_backward(")]
    bwd = src[src.index("void dev_backward("):]
    bwd = bwd[:bwd.index("\n}\n")]
    last = {}  # room -> layer of the last line that named it
    reads = bad = 0
    for part, lines in (("forward", fwd.split("\n")), ("backward", bwd.split("\n"))):
        remake = False  # in the backward, within a "/* recompute ..." block
        for line in lines:
            if part == "backward" and "/* recompute" in line:
                remake = True
            code = re.sub(r"/\*.*?\*/", "", line)
            call = re.match(r"\s*(\w+)\s*(<[^>]*>)?\(", code)
            if call and "backward" in call.group(1):
                remake = False  # the block's calls are the forward's functions
            args = re.findall(r"\bA\((\w+)\)", code)
            names = [n for n in args if n in room_of]
            if part == "backward" and remake:
                # a forward call made again: its first buffer (named again
                # for its bf16 copy), and the op's insides (QKV, Y, XE,
                # ...), are what it writes; another value (V<op>) is its
                # input, which must be there (made again before it)
                checked = [n for n in args[1:] if n in room_of and n != args[0] and re.match(r"V\d+$", n)]
                names = [n for n in names if n not in checked]
            else:
                checked = names if part == "backward" else []
            for n in checked:
                r, i = room_of[n], layer(n)
                reads += 1
                if last.get(r) != i:
                    print("%s: the backward reads %s (layer %d) while its room %s holds layer %s's values:\n    %s"
                          % (sys.argv[1], n, i, r, last.get(r), line.strip()))
                    bad += 1
            for n in names:
                last[room_of[n]] = layer(n)
    if bad:
        sys.exit(1)
    print("%d shared rooms, %d backward uses, each while its room holds its layer's values"
          % (len(set(room_of.values())), reads))


main()
