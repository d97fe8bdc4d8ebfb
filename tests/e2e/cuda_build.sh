#!/bin/sh
# cuda_build.sh: the CUDA trainer of every example that has one, and of the
# GPU benchmark configs (P also with recompute = all), of tests/e2e/hier.moe (the hierarchical layers),
# and of tests/cuda/dp.moe data parallel and expert
# parallel, and of config S on 8 GPUs with one expert each and with 4
# groups of 2 (NCCL, as GCViT-MoE's 8 GPUs; skipped where nccl.h is not
# found), compiles and links
# with nvcc, every warning an error (nvcc's own and the host compiler's
# -Wall -Wextra), and so do bench/narrow.cu and bench/lt_algos.cu. No GPU needed;
# skipped where nvcc is not found. An example whose model the CUDA backend
# does not generate must be refused by --target cuda with a located reason.
. "${top_srcdir:-.}/tests/e2e/common.sh"

NVCC=$(command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
if [ -z "$NVCC" ]; then
    echo "1..0 # SKIP nvcc not found: the CUDA output is compiled where the CUDA toolkit is"
    exit 77
fi
export NVCC
STRICT="-Werror all-warnings -Xcompiler -Wall,-Wextra,-Wno-unused-function,-Werror"

# the multi-GPU trainers link NCCL
parallel=
have_nccl=no
CUDA_HOME=$(nvcc_home "$NVCC")
if [ -f "$CUDA_HOME/include/nccl.h" ] || [ -f /usr/include/nccl.h ] || [ -n "${NCCL_HOME:-}" ]; then
    have_nccl=yes
    sed 's/^parallel(data = 2, /parallel(data = 2, expert = 2, /' "$top_srcdir/tests/cuda/dp.moe" > "$WORK/dp_expert.moe"
    # config S on 8 GPUs, one expert each (the scaling benchmark's largest)
    { cat "$top_srcdir/bench/gpu_s.moe"; echo "parallel(data = 8, expert = 8)"; } > "$WORK/gpu_s_ep8.moe"
    # 4 groups of 2: the experts' gradients averaged over the 4 GPUs that hold them
    { cat "$top_srcdir/bench/gpu_s.moe"; echo "parallel(data = 8, expert = 2)"; } > "$WORK/gpu_s_dp8_ep2.moe"
    parallel="$top_srcdir/tests/cuda/dp.moe $WORK/dp_expert.moe $WORK/gpu_s_ep8.moe $WORK/gpu_s_dp8_ep2.moe"
else
    echo "# SKIP the multi-GPU trainers: nccl.h not found (NCCL_HOME=DIR)"
fi

# config P with recompute = all (the backward makes each MoE layer's
# expert rows and each attention layer's q, k, v and heads' outputs again)
with_recompute "$top_srcdir/bench/gpu_p.moe" "$WORK/gpu_p_rc.moe" || not_ok "with_recompute edits gpu_p.moe"
for f in "$top_srcdir"/examples/*.moe "$top_srcdir"/bench/gpu_p.moe "$top_srcdir"/bench/gpu_s.moe \
    "$WORK/gpu_p_rc.moe" "$top_srcdir"/tests/e2e/hier.moe "$top_srcdir"/tests/e2e/routers.moe $parallel; do
    rel=${f#"$top_srcdir"/}
    name=$(basename "$f" .moe)
    if [ $have_nccl = no ] && grep -q '^parallel(' "$f"; then
        echo "# SKIP $name: its multi-GPU trainer links NCCL, and nccl.h was not found"
        continue
    fi
    compile_or_refused "$name" "$rel" --target cuda || continue
    if [ ! -f "$WORK/$name/model.cu" ]; then
        not_ok "$name: --target cuda wrote no model.cu"
        continue
    fi
    if env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$WORK/$name" MOERT="$top_builddir" \
        MOERT_SRC="$top_srcdir" BACKEND=cuda NVCC_WARN="$STRICT" CFLAGS="-O1 -Werror" \
        > "$WORK/$name.build.log" 2>&1 && [ -x "$WORK/$name/train" ]; then
        ok "$name: the CUDA trainer compiles and links without a warning"
        # a 1-GPU trainer runs without NCCL installed; a multi-GPU one links it
        nccl=no
        ldd "$WORK/$name/train" 2> /dev/null | grep -q libnccl && nccl=yes
        if grep -q '^#define PARALLEL_DATA 1$' "$WORK/$name/model.h"; then
            [ $nccl = no ] || not_ok "$name: the 1-GPU trainer does not link NCCL"
        else
            [ $nccl = yes ] || not_ok "$name: the multi-GPU trainer links NCCL"
        fi
    else
        cat "$WORK/$name.build.log"
        not_ok "$name: the CUDA trainer compiles and links without a warning"
    fi
done

# nvcc on PATH may be a wrapper script elsewhere than its toolkit (Debian's
# CI has /usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc): the
# trainer still links, with the libraries of the toolkit nvcc reports
if [ -f "$WORK/damex/train.o" ]; then
    mkdir -p "$WORK/wrapper"
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$NVCC" > "$WORK/wrapper/nvcc"
    chmod +x "$WORK/wrapper/nvcc"
    rm -f "$WORK/damex/train"
    if env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u CUDA_HOME make -s -C "$WORK/damex" MOERT="$top_builddir" \
        MOERT_SRC="$top_srcdir" BACKEND=cuda NVCC="$WORK/wrapper/nvcc" > "$WORK/wrapper.log" 2>&1 &&
        [ -x "$WORK/damex/train" ]; then
        ok "damex: the CUDA trainer links where nvcc is a wrapper script outside its toolkit"
    else
        cat "$WORK/wrapper.log"
        not_ok "damex: the CUDA trainer links where nvcc is a wrapper script outside its toolkit"
    fi
fi

# the benchmarks of single kernels compile without a warning:
# bench/narrow.cu, the routers' kernels timed alone against kernels.cuh
# (notes-gpu.md item 96), and bench/lt_algos.cu, cuBLASLt's algorithms for
# the dense products (item 101)
for b in narrow lt_algos; do
    if "$NVCC" -std=c++17 -O1 $STRICT -gencode=arch=compute_90a,code=sm_90a -I "$top_srcdir/templates/cuda" \
        -c "$top_srcdir/bench/$b.cu" -o "$WORK/$b.o" > "$WORK/$b.log" 2>&1; then
        ok "bench/$b.cu compiles without a warning"
    else
        cat "$WORK/$b.log"
        not_ok "bench/$b.cu compiles without a warning"
    fi
done

# the default target: both backends where the model has a CUDA form, the
# CPU's alone (and no stale CUDA files) where it does not
(cd "$top_srcdir" && "$MOECC" examples/damex.moe -o "$WORK/both") > /dev/null 2>&1
if [ -f "$WORK/both/model.cu" ] && [ -f "$WORK/both/model.c" ] && [ -f "$WORK/both/backend.cu" ]; then
    ok "without --target, damex gets both backends"
else
    not_ok "without --target, damex gets both backends"
fi
(cd "$top_srcdir" && "$MOECC" --target cpu examples/damex.moe -o "$WORK/both") > /dev/null 2>&1
if [ ! -e "$WORK/both/model.cu" ] && [ ! -e "$WORK/both/backend.cu" ] && [ -f "$WORK/both/model.c" ] &&
    grep -q '^BACKEND = cpu' "$WORK/both/Makefile"; then
    ok "--target cpu over an earlier directory leaves no CUDA sources, and the Makefile builds the CPU"
else
    not_ok "--target cpu over an earlier directory leaves no CUDA sources, and the Makefile builds the CPU"
fi
finish
