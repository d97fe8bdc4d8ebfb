## tests/e2e/e2e.mk: end-to-end tests, the example data, the demo, the CPU
## benchmark and generated/.
TESTS += tests/e2e/damex.sh tests/e2e/examples.sh tests/e2e/generated.sh tests/e2e/routers.sh tests/e2e/hier.sh \
	tests/e2e/cuda_build.sh tests/e2e/parallel.sh tests/e2e/bench.sh tests/e2e/folders.sh
EXTRA_DIST += tests/e2e/common.sh tests/e2e/damex.sh tests/e2e/examples.sh tests/e2e/generated.sh tests/e2e/grad_rooms.py tests/e2e/grad_stored.py tests/e2e/recompute_rooms.py \
	tests/e2e/routers.sh tests/e2e/routers.moe tests/e2e/hier.sh tests/e2e/hier.moe tests/e2e/cuda_build.sh tests/e2e/parallel.sh \
	tests/e2e/bench.sh tests/e2e/folders.sh tests/e2e/folders.moe bench/gpu_p.moe bench/gpu_s.moe \
	tests/tools/torch_ref.py scripts/data.sh scripts/ranks.sh scripts/quickstart \
	bench/cpu.sh bench/cpu_small.moe bench/cpu_large.moe \
	examples/damex.moe generated

## `make data`: the example datasets, from packages, under data/.
data:
	$(SHELL) $(srcdir)/scripts/data.sh $(abs_top_builddir)/data

## `make demo`: the main job. Compile examples/damex.moe, build it, train it
## on the three-dataset mixture, print accuracy per dataset and routing.
## On the GPU where one answers (nvidia-smi) and nvcc is found, else the CPU.
DEMO_STEPS = 2000
DEMO_DIR = $(abs_top_builddir)/demo
demo: moecc libmoert.la data
	rm -rf $(DEMO_DIR)
	cd $(srcdir) && $(abs_top_builddir)/moecc examples/damex.moe -o $(DEMO_DIR)
	backend=cpu; if nvidia-smi -L >/dev/null 2>&1 && \
	  { command -v nvcc || test -x /usr/local/cuda/bin/nvcc; } >/dev/null 2>&1; then backend=cuda; fi; \
	$(MAKE) -C $(DEMO_DIR) MOERT=$(abs_top_builddir) MOERT_SRC=$(abs_top_srcdir) BACKEND=$$backend
	cd $(DEMO_DIR) && ./train --data $(abs_top_builddir)/data --steps $(DEMO_STEPS) --eval-every 0

## `make bench-cpu`: moecc's trainer against PyTorch on the CPU configs.
bench-cpu: moecc libmoert.la
	top_srcdir=$(abs_top_srcdir) top_builddir=$(abs_top_builddir) MOECC=$(abs_top_builddir)/moecc \
	PYTHON_TORCH='$(PYTHON_TORCH)' $(SHELL) $(srcdir)/bench/cpu.sh

## `make update-generated`: refresh generated/ from examples/.
update-generated: moecc
	cd $(srcdir) && for f in examples/*.moe; do \
	  name=`basename $$f .moe`; rm -rf generated/$$name.new; \
	  if $(abs_top_builddir)/moecc $$f -o generated/$$name.new 2>/dev/null; then \
	    rm -rf generated/$$name && mv generated/$$name.new generated/$$name && echo "generated/$$name"; \
	  else rm -rf generated/$$name.new; fi; \
	done

clean-local: clean-demo
clean-demo:
	rm -rf $(DEMO_DIR)

.PHONY: data demo bench-cpu update-generated clean-demo

## `make check-cuda`: on a machine with an NVIDIA GPU, the CUDA backend
## against the CPU backend (tests/cuda/check_cuda.sh), then, with two GPUs or
## more, data parallelism (tests/cuda/check_dp.sh; skipped with one). Not
## part of `make check`: CI has no GPU.
EXTRA_DIST += tests/cuda/check_cuda.sh tests/cuda/compare.py tests/cuda/test_kernels.cu tests/cuda/kernel_ref.c \
	tests/cuda/kernel_ref.h tests/cuda/check_dp.sh tests/cuda/dp.moe \
	tests/cuda/frag_emu.py bench/torch_gpu.py bench/gpu.sh bench/ncu_sum.py bench/targets.py bench/ltprobe.cu \
	bench/narrow.cu bench/lt_algos.cu
check-cuda: moecc libmoert.la
	@$(AM_TESTS_ENVIRONMENT) $(SHELL) $(srcdir)/tests/cuda/check_cuda.sh; a=$$?; \
	$(AM_TESTS_ENVIRONMENT) $(SHELL) $(srcdir)/tests/cuda/check_dp.sh; b=$$?; \
	test $$a -eq 0 && { test $$b -eq 0 || test $$b -eq 77; }

## `make bench`: on a machine with an NVIDIA GPU, the CUDA trainer against
## PyTorch on configs P and S (bench/gpu.sh); figures in bench/results-gpu.md.
bench: moecc libmoert.la
	@$(AM_TESTS_ENVIRONMENT) BENCH_OUT=$${BENCH_OUT:-$(abs_top_builddir)/bench-gpu.txt} $(SHELL) $(srcdir)/bench/gpu.sh
.PHONY: check-cuda bench

## `make bench-loader`: images/s the loader assembles by number of loader
## threads, for GCViT-MoE's and DAMEX's augmentations, and GCViT-MoE's from
## JPEG files decoded as drawn (bench/loader.c).
EXTRA_PROGRAMS = bench/loader
bench_loader_SOURCES = bench/loader.c
bench_loader_CFLAGS = $(AM_CFLAGS) $(JPEG_CFLAGS)
bench_loader_LDADD = libmoert.la $(JPEG_LIBS) -lm
CLEANFILES += bench/loader$(EXEEXT)
bench-loader: bench/loader$(EXEEXT)
	./bench/loader$(EXEEXT)
.PHONY: bench-loader
