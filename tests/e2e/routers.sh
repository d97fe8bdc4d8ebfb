#!/bin/sh
# routers.sh: the routers and MoE options of tests/e2e/routers.moe on the
# real MNIST and digits: the trainer builds warning-free, learns, and its
# first step matches PyTorch (loss and every gradient).
. "${top_srcdir:-.}/tests/e2e/common.sh"

if [ ! -e "$DATA/mnist" ] || [ ! -e "$DATA/digits" ]; then
    echo "1..0 # SKIP no data: run make data"
    exit 77
fi
gen_or_stop routers tests/e2e/routers.moe
cd "$WORK/routers" || exit 1
learns_mnist routers
torch_check routers
finish
