#!/bin/sh
# hier.sh: a hierarchical model in GCViT's form (tests/e2e/hier.moe: a
# convolution stem, local and global window attention, a 2x2 token merge,
# a mixture of experts) on the real MNIST and digits: the CPU trainer builds
# warning-free, learns, and its first step matches PyTorch (the loss and
# every gradient); the CUDA backend, which does not generate these layers
# yet (unless MOECC_CUDA_HIER=1: their kernels are not yet run on a GPU),
# refuses the model and says where.
. "${top_srcdir:-.}/tests/e2e/common.sh"

if [ ! -e "$DATA/mnist" ] || [ ! -e "$DATA/digits" ]; then
    echo "1..0 # SKIP no data: run make data"
    exit 77
fi
gen_or_stop hier tests/e2e/hier.moe
if out=$(cd "$top_srcdir" && env -u MOECC_CUDA_HIER "$MOECC" --target cuda tests/e2e/hier.moe -o "$WORK/hier_cuda" 2>&1); then
    not_ok "--target cuda refuses the window layers (it compiled)"
elif printf '%s\n' "$out" | grep -q '^tests/e2e/hier.moe:[0-9]*:[0-9]*: error: the CUDA backend does not generate conv_stem yet'; then
    ok "--target cuda refuses them, located: $(printf '%s\n' "$out" | grep -m 1 'error:')"
else
    printf '%s\n' "$out"
    not_ok "--target cuda refuses the window layers with a located error"
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
