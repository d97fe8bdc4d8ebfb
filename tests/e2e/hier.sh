#!/bin/sh
# hier.sh: a hierarchical model in GCViT's form (tests/e2e/hier.moe: a
# convolution stem, local and global window attention, a 2x2 token merge,
# a mixture of experts) on the real MNIST and digits: the CPU trainer builds
# warning-free, learns, and its first step matches PyTorch (the loss and
# every gradient); --target cuda generates the same layers for the GPU
# (which `make check-cuda` runs against this CPU trainer), windows of 196
# tokens included.
. "${top_srcdir:-.}/tests/e2e/common.sh"

if [ ! -e "$DATA/mnist" ] || [ ! -e "$DATA/digits" ]; then
    echo "1..0 # SKIP no data: run make data"
    exit 77
fi
gen_or_stop hier tests/e2e/hier.moe
if (cd "$top_srcdir" && "$MOECC" --target cuda tests/e2e/hier.moe -o "$WORK/hier_cuda") > "$WORK/hier_cuda.log" 2>&1 &&
    grep -q 'conv_col2im(' "$WORK/hier_cuda/model.cu" && grep -q 'global_window_qkv_backward(' "$WORK/hier_cuda/model.cu" &&
    grep -q 'merge2x2_backward(' "$WORK/hier_cuda/model.cu"; then
    ok "--target cuda generates the stem, both window attentions and the merge"
else
    cat "$WORK/hier_cuda.log"
    not_ok "--target cuda generates the stem, both window attentions and the merge"
fi
# the attention kernels' shared memory is asked for at each window shape
# (7x7 windows in heads of 16: 2 heads in stage 1, 4 in stage 2), as for
# plain attention
if grep -q '^    attention_setup<49, 16, 2>();$' "$WORK/hier_cuda/model.cu" &&
    grep -q '^    attention_setup<49, 16, 4>();$' "$WORK/hier_cuda/model.cu"; then
    ok "--target cuda sets up the attention kernels for each window shape"
else
    grep attention_setup "$WORK/hier_cuda/model.cu"
    not_ok "--target cuda sets up the attention kernels for each window shape"
fi
# stage 1's local windows at 14x14: 196 tokens of head width 16, too many
# for a (sample, head) in one block's shared memory, take the row tiles
# (kernels.cuh), whose setup is asked for like the others' (check-cuda runs
# this model against the CPU)
hier14_moe "$WORK/hier14.moe"
if "$MOECC" --target cuda "$WORK/hier14.moe" -o "$WORK/hier14" > "$WORK/hier14.log" 2>&1 &&
    grep -q '^    attention_setup<196, 16, 2>();$' "$WORK/hier14/model.cu" &&
    grep -q '^    attention_forward<196, 16, 2>(' "$WORK/hier14/model.cu"; then
    ok "--target cuda generates windows of 196 tokens"
else
    cat "$WORK/hier14.log"
    not_ok "--target cuda generates windows of 196 tokens"
fi
cd "$WORK/hier" || exit 1
if grep -q '"op": "window_attention".*"global_query": true' model.json &&
    grep -q 'global_window_qkv(' model.c && grep -q 'conv_col2im(' model.c && grep -q 'merge2x2_backward(' model.c; then
    ok "the generated code has the stem, both window attentions and the merge"
else
    not_ok "the generated code has the stem, both window attentions and the merge"
fi
learns_mnist hier
torch_check hier
finish
