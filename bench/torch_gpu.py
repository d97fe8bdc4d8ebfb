#!/usr/bin/env python3
"""torch_gpu.py: the PyTorch side of `make bench` for the CUDA backend.

    torch_gpu.py GEN_DIR [--batch B] [--steps N] [--warmup W]
                 [--variants eager_fp32,eager_bf16,compile_bf16,grouped_bf16]
                 [--json OUT] [--flops-per-image X] [--device cuda|cpu]
                 [--no-peak] [--check-grouped] [--emulate-grouped-mm]

GEN_DIR holds the model.json that moecc wrote. The model is the one of
tests/tools/torch_ref.py (imported, not copied), built with random weights,
and each variant times full training steps on one synthetic batch of random
images and labels: forward, cross-entropy plus the MoE auxiliary losses,
backward, and AdamW (fused on CUDA):

    eager_fp32    torch_ref's model as it is, in fp32 (a Python loop over
                  the experts of each MoE layer)
    eager_bf16    the same under torch.autocast(bfloat16)
    compile_bf16  torch.compile of the bf16 variant
    grouped_bf16  the experts of each MoE layer run as two torch._grouped_mm
                  calls over the tokens sorted by expert (same routing, same
                  capacity), bf16, under torch.compile

It prints the GPU and its measured bf16 GEMM peak first, then one line a
variant:

    gpu: <name>, torch <version>, bf16 GEMM peak <X> TFLOP/s
    pytorch <variant>: batch <B>, <ms> ms per step, <img/s> images/s, <TFLOP/s> TFLOP/s, peak <MiB> MiB

or `pytorch <variant>: skipped (<reason>)` / `pytorch <variant>: failed
(<reason>)`. Step times are medians over --steps steps after --warmup
warm-up steps, taken with CUDA events; TFLOP/s counts 3 x the forward FLOPs
per image (from --flops-per-image, else model.json, else computed as moecc
does) and peak is torch.cuda.max_memory_allocated over the variant.

--device cpu runs the same code on the CPU (timed with perf_counter, no
memory figures) to test the plumbing with a tiny batch. --check-grouped
compares the grouped model with torch_ref's before timing it (the loss and
every gradient of the whole model in fp32, then each MoE layer alone in
bf16) and reports the variant failed if they differ. --emulate-grouped-mm stands a Python loop in for
torch._grouped_mm, one that leaves NaN in the rows past the last group as
the real kernel may leave garbage there; it is a testing aid for machines
whose PyTorch lacks the operator (and there the grouped variant runs
without torch.compile when torch.compile is missing too).

Exit status: 0 when the variants were run (some may have failed or been
skipped), 1 without a CUDA device, 2 for bad arguments, 77 without torch.
"""
import argparse
import contextlib
import functools
import gc
import json
import math
import os
import statistics
import sys
import time
import types

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("torch_gpu.py: PyTorch is not installed: skipped")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "tools"))
import torch_ref  # noqa: E402  (after the path is set)

VARIANTS = ("eager_fp32", "eager_bf16", "compile_bf16", "grouped_bf16")
GEMM_N = 8192              # the peak GEMM: GEMM_N^3 in bf16
ALIGN = 8                  # rows of each expert group padded to a multiple of this
TOL_FP32, TOL_BF16 = 1e-4, 5e-2   # --check-grouped: relative tolerance


# ---- placing torch_ref's model on a device ------------------------------------------

def place_torch_ref(device):
    """torch_ref's MoE makes tensors (torch.zeros, torch.arange, torch.tensor)
    without naming a device, so they land on the CPU. Give its module a torch
    whose factory functions default to our device. (torch.set_default_device
    would do it too, but through a Python TorchFunctionMode that every op of
    the eager variants would pay for.)"""
    shim = types.ModuleType("torch_on_" + device.type)
    shim.__dict__.update({k: v for k, v in vars(torch).items() if not k.startswith("__")})
    for name in ("zeros", "ones", "empty", "full", "arange", "tensor", "rand", "randn", "randint", "eye"):
        setattr(shim, name, functools.partial(getattr(torch, name), device=device))
    torch_ref.torch = shim


class Net(torch.nn.Module):
    """A torch_ref model as an nn.Module: its tensors are the parameters, and
    forward returns the training loss (cross-entropy + auxiliary losses)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.params = torch.nn.ParameterList(list(model.p.values()))

    def forward(self, x, labels, dataset):
        feats = self.model.forward(x, dataset, {})
        loss, _ = self.model.loss(feats, labels, dataset)
        return loss


def make_params(spec, device, seed=0):
    """The model's tensors, random as torch_ref's bench makes them."""
    torch.manual_seed(seed)
    params = {}
    for op in spec["ops"]:
        for name, shape in zip(op["tensors"], op.get("shapes", [])):
            params[name] = torch.nn.Parameter(torch.randn(shape, device=device) * 0.02)
    if not params:
        raise SystemExit("torch_gpu.py: model.json has no tensor shapes")
    return params


# ---- the grouped experts --------------------------------------------------------------

class _EmulatedGroupedMM(torch.autograd.Function):
    """torch._grouped_mm(a, b, offs) for 2-D a and 3-D b, as a loop over the
    groups: rows offs[g-1]:offs[g] of a times b[g]. Rows past offs[-1] come
    out NaN in the result and in a's gradient, as the real kernel leaves them
    undefined, so a test shows whether any of them leaks."""

    @staticmethod
    def forward(ctx, a, b, offs):
        ends = offs.tolist()
        ctx.bounds = list(zip([0] + ends[:-1], ends))
        ctx.save_for_backward(a, b)
        return _EmulatedGroupedMM.segments(a, b, ctx.bounds)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad_a = _EmulatedGroupedMM.segments(grad, b.transpose(1, 2), ctx.bounds)
        grad_b = torch.stack([a[lo:hi].t() @ grad[lo:hi] for lo, hi in ctx.bounds])
        return grad_a, grad_b, None

    @staticmethod
    def segments(a, b, bounds):
        out = a.new_full((a.shape[0], b.shape[-1]), float("nan"))
        for g, (lo, hi) in enumerate(bounds):
            out[lo:hi] = a[lo:hi] @ b[g]
        return out


def emulated_grouped_mm(a, b, offs):
    return _EmulatedGroupedMM.apply(a, b, offs)


def real_grouped_mm(a, b, offs):
    return torch._grouped_mm(a, b, offs=offs)


class GroupedModel(torch_ref.Model):
    """torch_ref's model with the experts of every MoE layer run in one pass
    each instead of a Python loop: token choice as two grouped GEMMs over the
    kept choices sorted by expert, expert choice (equal groups) as two batched
    GEMMs. Only the MoE layer is overridden; everything else is torch_ref's.

    The router, the capacity slots and the auxiliary losses follow
    torch_ref.Model.moe and .expert_choice step for step (keep them in step;
    --check-grouped compares the two), written without host syncs or
    data-dependent shapes so that torch.compile takes each layer whole:

    - Choice c = n * K + k (token n, its k-th expert) gets the key e, or E
      when it lost its slot; a stable sort by key lays the kept choices out
      by expert, the dropped ones last.
    - Each expert's group is padded to a multiple of ALIGN rows, and to at
      least ALIGN rows, inside a buffer of a fixed N * K + E * ALIGN rows;
      offs (int32) holds the groups' cumulative ends. Padding rows and the
      rows past the last group read an appended zero token, N.
    - The grouped GEMMs leave the rows past offs[-1] undefined, so nothing
      reads them: the outputs are gathered back per choice through the
      positions of the kept choices (a dropped choice reads an appended zero
      row), their gradients land on the appended token N and bias row E,
      which are cut off, and padding rows get no gradient at all.
    """

    def __init__(self, spec, params, dtype, grouped_mm):
        super().__init__(spec, params)
        self.dtype = dtype              # of the expert GEMMs
        self.grouped_mm = grouped_mm    # torch._grouped_mm or its emulation

    def router_logits(self, op, xt, noise):
        p, pre = self.p, op["prefix"]
        if op["router"] == "cosine":
            q = F.normalize(xt @ p[pre + ".gate.proj.weight"].t(), dim=1, eps=1e-6)
            emb = F.normalize(p[pre + ".gate.expert_emb"], dim=1, eps=1e-6)
            logits = q @ emb.t() / op["temperature"]
        elif op["router"] == "attention":
            q = xt @ p[pre + ".gate.query.weight"].t()
            logits = q @ p[pre + ".gate.expert_tokens"].t() / math.sqrt(op["router_dim"])
        else:
            logits = xt @ p[pre + ".gate.weight"].t()
        if op["router"] == "soft":
            logits = logits / op["temperature"]
        if noise is not None:
            logits = logits + noise
        return logits

    def aux_loss(self, op, logits, probs, top1, dataset=None, tokens=0):
        E = probs.shape[1]
        experts = torch.arange(E, device=probs.device)
        bal = (probs.mean(dim=0) * (top1[:, None] == experts).float().mean(dim=0)).sum() * E
        lse = torch.logsumexp(logits, dim=1)
        loss = op["balance_loss"] * bal + op["z_loss"] * (lse * lse).mean()
        if op.get("importance_loss", 0) > 0:
            imp = probs.sum(dim=0)
            loss = loss + op["importance_loss"] * imp.var(unbiased=False) / imp.mean() ** 2
        if dataset is not None and "map" in op and op["dataset_loss"] > 0:
            table = torch.tensor(op["map"], dtype=torch.long, device=logits.device)
            loss = loss + op["dataset_loss"] * F.cross_entropy(logits, table[dataset].repeat_interleave(tokens))
        return loss

    @staticmethod
    def claim_slots(op, topp, topk, E, cap):
        """keep[n, k]: whether choice k of token n got a slot of its expert
        (every first choice before any second; by descending top-1
        probability under batch priority)."""
        N, K = topk.shape
        dev = topk.device
        experts = torch.arange(E, device=dev)
        order = torch.argsort(-topp[:, 0], stable=True) if op["batch_priority"] else torch.arange(N, device=dev)
        keep = torch.zeros(N, K, dtype=torch.bool, device=dev)
        offset = torch.zeros(E, dtype=torch.long, device=dev)
        for k in range(K):
            ek = topk[order, k]
            onehot = (ek[:, None] == experts).long()
            pos = torch.cumsum(onehot, dim=0) - 1 + offset
            keep[order, k] = pos.gather(1, ek[:, None])[:, 0] < cap
            offset = offset + onehot.sum(dim=0)
        return keep

    def moe(self, op, x, dataset, noise):
        B, T, D = x.shape
        E, K = op["experts"], op["top_k"]
        N = B * T
        xt = x.reshape(N, D)
        logits = self.router_logits(op, xt, noise)
        probs = torch.softmax(logits, dim=1)
        if op["router"] == "expert_choice":
            return self.expert_choice(op, x, xt, logits, probs)
        topp, topk = torch.topk(probs, K, dim=1)
        gates = topp / topp.sum(dim=1, keepdim=True) if (op["normalize_gates"] and K > 1) else topp
        cap = torch_ref.moe_capacity(N, E, K, op["capacity"], op["dropless"])
        with torch.no_grad():
            keep = self.claim_slots(op, topp, topk, E, cap)
            src, pos, row_e, offs, M = self.layout(topk, keep, E)
        out = self.experts(op, xt, src, row_e, offs, M)           # [M, D]
        y = torch.cat([out, out.new_zeros(1, D)])[pos].view(N, K, D)  # a dropped choice: 0
        out = (gates.unsqueeze(-1) * y).sum(dim=1)
        self.aux.append(self.aux_loss(op, logits, probs, topk[:, 0], dataset, T))
        return out.reshape(B, T, D)

    @staticmethod
    def layout(topk, keep, E):
        """The grouped GEMMs' rows: src[r], the token row r reads (N: zero);
        pos[c], the row of choice c (M: dropped); row_e[r], the expert of row
        r (E: past the last group); offs, the groups' int32 cumulative ends."""
        N, K = topk.shape
        NK, dev = N * K, topk.device
        M = NK + E * ALIGN
        key = torch.where(keep.reshape(-1), topk.reshape(-1), E)
        counts = (key[:, None] == torch.arange(E + 1, device=dev)).sum(dim=0)   # [E + 1]
        padded = ((counts[:E] + ALIGN - 1) // ALIGN * ALIGN).clamp(min=ALIGN)
        ends = torch.cumsum(padded, dim=0)
        order = torch.argsort(key, stable=True)
        skey = key[order]
        rank = torch.arange(NK, device=dev) - (torch.cumsum(counts, dim=0) - counts)[skey]
        dest = torch.where(skey < E, (ends - padded)[skey.clamp(max=E - 1)] + rank, M)
        src = torch.full((M + 1,), N, dtype=torch.long, device=dev).scatter(0, dest, order // K)[:M]
        pos = torch.zeros_like(order).scatter(0, order, dest)
        row_e = torch.searchsorted(ends, torch.arange(M, device=dev), right=True)
        return src, pos, row_e, ends.to(torch.int32), M

    def experts(self, op, xt, src, row_e, offs, M):
        pre, dt = op["prefix"], self.dtype
        w1, b1 = self.p[pre + ".experts.fc1.weight"], self.p[pre + ".experts.fc1.bias"]   # [E, H, D], [E, H]
        w2, b2 = self.p[pre + ".experts.fc2.weight"], self.p[pre + ".experts.fc2.bias"]   # [E, D, H], [E, D]
        act = torch_ref.ACTS[op["act"]]
        xe = torch.cat([xt, xt.new_zeros(1, xt.shape[1])])[src].to(dt)
        b1e = torch.cat([b1, b1.new_zeros(1, b1.shape[1])])[row_e].to(dt)
        b2e = torch.cat([b2, b2.new_zeros(1, b2.shape[1])])[row_e].to(dt)
        h = act(self.grouped_mm(xe, w1.to(dt).transpose(1, 2), offs) + b1e)
        return self.grouped_mm(h, w2.to(dt).transpose(1, 2), offs) + b2e

    def expert_choice(self, op, x, xt, logits, probs):
        B, T, D = x.shape
        N, E = probs.shape
        pre, dt = op["prefix"], self.dtype
        cap = torch_ref.moe_capacity(N, E, 1, op["capacity"], False)
        w1, b1 = self.p[pre + ".experts.fc1.weight"], self.p[pre + ".experts.fc1.bias"]
        w2, b2 = self.p[pre + ".experts.fc2.weight"], self.p[pre + ".experts.fc2.bias"]
        act = torch_ref.ACTS[op["act"]]
        tok = torch.argsort(-probs.detach().t(), dim=1, stable=True)[:, :cap]     # [E, cap]
        h = act(torch.bmm(xt[tok].to(dt), w1.to(dt).transpose(1, 2)) + b1[:, None].to(dt))
        y = torch.bmm(h, w2.to(dt).transpose(1, 2)) + b2[:, None].to(dt)         # [E, cap, D]
        gate = probs.t().gather(1, tok)                                         # [E, cap]
        out = torch.zeros(N, D, device=x.device, dtype=probs.dtype)
        out = out.index_add(0, tok.reshape(-1), (gate[..., None] * y).reshape(-1, D))
        self.aux.append(self.aux_loss(op, logits, probs, probs.argmax(dim=1)))
        return out.reshape(B, T, D)


# ---- FLOPs ---------------------------------------------------------------------------------

def forward_flops(spec):
    """Forward FLOPs per image, counted as moecc's sema.c counts them (MoE:
    the routed experts only). A dense MLP that stands for a MoE in a repeat
    is counted without its activation's T * hidden, which model.json cannot
    tell apart; that is 1 / (4 * dim) of the MLP."""
    total = 0.0
    _, height, width = spec["input"]
    nds = len(spec["datasets"])
    for op in spec["ops"]:
        kind, T, D = op["op"], op["tokens"], op["dim"]
        if kind == "patch_embed":
            P = op["patch"]
            total += 2.0 * (height // P) * (width // P) * op["out_dim"] * D * P * P
        elif kind == "attention":
            total += 2.0 * T * D * 3 * D + 2.0 * 2.0 * T * T * D + 2.0 * T * D * D
        elif kind == "mlp":
            T = T or 1
            total += 2.0 * 2.0 * T * D * op["hidden"] + T * op["hidden"]
        elif kind == "moe":
            E, H, R = op["experts"], op["hidden"], op["router_dim"]
            if op["router"] in ("cosine", "attention"):
                total += 2.0 * T * D * R + 2.0 * T * R * E
            else:
                total += 2.0 * T * D * E
            k_eff = op["capacity"] if op["router"] == "expert_choice" else op["top_k"]
            total += k_eff * 2.0 * 2.0 * T * D * H
        elif kind == "classifier":
            if op["heads"] == "per_dataset":
                total += sum(2.0 * D * max(ds["classes"], 1) / nds for ds in spec["datasets"])
            else:
                total += 2.0 * D * op["classes"]
        elif kind not in ("input", "cls_token", "pos_embed", "layernorm", "residual", "residual_end",
                          "pool", "dropout", "drop_path"):
            raise ValueError("the FLOPs of op '%s' are not counted here: pass --flops-per-image" % kind)
    return total


def flops_per_image(spec):
    """From model.json when moecc writes it there, else counted."""
    for key, scale in (("flops_per_image", 1.0), ("flops", 1.0), ("gflops", 1e9)):
        if isinstance(spec.get(key), (int, float)):
            return spec[key] * scale
    return forward_flops(spec)


# ---- timing --------------------------------------------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device, warmup, steps):
    """Median milliseconds of fn over steps calls after warmup calls: CUDA
    events around each call on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(steps)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def gemm_peak(device, reps=10):
    """bf16 TFLOP/s of a GEMM_N^3 matrix product, the median of reps."""
    a = torch.randn(GEMM_N, GEMM_N, device=device, dtype=torch.bfloat16)
    b = torch.randn(GEMM_N, GEMM_N, device=device, dtype=torch.bfloat16)
    ms = median_ms(lambda: a @ b, device, 3, reps)
    return 2.0 * GEMM_N ** 3 / (ms * 1e-3) / 1e12


# ---- the variants ------------------------------------------------------------------------

class Skip(Exception):
    """A variant this PyTorch or device cannot run."""


def autocast(device, enabled):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def make_optimizer(params, device):
    if device.type == "cuda":
        try:
            return torch.optim.AdamW(params, lr=1e-3, fused=True)
        except (TypeError, RuntimeError, ValueError):   # a PyTorch without fused AdamW
            pass
    return torch.optim.AdamW(params, lr=1e-3)


def compiler():
    if not hasattr(torch, "compile"):
        raise Skip("torch.compile needs PyTorch 2")
    # the looped MoE breaks the graph at each expert, and every layer is a
    # frame of its own to dynamo: let it keep more than 8 versions of one
    cfg = torch._dynamo.config
    for name, least in (("cache_size_limit", 64), ("recompile_limit", 64),
                        ("accumulated_cache_size_limit", 512), ("accumulated_recompile_limit", 512)):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), least))
    return torch.compile


def grouped_mm_for(opts):
    if opts.emulate_grouped_mm:
        return emulated_grouped_mm
    if not hasattr(torch, "_grouped_mm"):
        raise Skip("torch._grouped_mm is not in PyTorch %s" % torch.__version__)
    return real_grouped_mm


def build(variant, spec, device, opts):
    """(net, bf16?) for a variant: the nn.Module whose forward is the loss."""
    if variant == "grouped_bf16":
        grouped_mm = grouped_mm_for(opts)
        compile_ = None
        if hasattr(torch, "compile") or not opts.emulate_grouped_mm:
            compile_ = compiler()
        dtype = torch.bfloat16 if device.type == "cuda" or not opts.emulate_grouped_mm else torch.float32
        net = Net(GroupedModel(spec, make_params(spec, device), dtype, grouped_mm))
        return (compile_(net) if compile_ else net), dtype == torch.bfloat16
    compile_ = compiler() if variant == "compile_bf16" else None
    net = Net(torch_ref.Model(spec, make_params(spec, device)))
    return (compile_(net) if compile_ else net), variant != "eager_fp32"


def time_variant(variant, spec, device, opts, flops):
    """Build a variant and time its training steps: a dict of its figures."""
    if variant == "grouped_bf16" and opts.check_grouped:
        ok, report = check_grouped(spec, device, opts)
        print(report, flush=True)
        if not ok:
            raise RuntimeError("the grouped model does not match torch_ref's")
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    net, bf16 = build(variant, spec, device, opts)
    opt = make_optimizer(list(net.parameters()), device)
    C, H, W = spec["input"]
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(opts.batch, C, H, W, device=device, generator=g)
    labels = torch.randint(0, min(d["classes"] for d in spec["datasets"]), (opts.batch,),
                           device=device, generator=g)
    dataset = torch.arange(opts.batch, device=device) % len(spec["datasets"])

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            loss = net(x, labels, dataset)
        loss.backward()
        opt.step()

    ms = median_ms(step, device, opts.warmup, opts.steps)
    return {"ms_per_step": ms, "images_per_s": opts.batch / (ms * 1e-3),
            "tflops": 3.0 * flops * opts.batch / (ms * 1e-3) / 1e12,
            "peak_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None}


def run_variant(variant, spec, device, opts, flops):
    """One variant's result as a dict, its status ok, skipped or failed; the
    variant's model, optimizer and compiled code are freed after it."""
    res = {"variant": variant, "status": "ok", "reason": None, "batch": opts.batch}
    try:
        res.update(time_variant(variant, spec, device, opts, flops))
    except Skip as e:
        res.update(status="skipped", reason=str(e))
    except Exception as e:  # a variant that breaks is reported, not fatal
        first = (str(e).strip().splitlines() or [""])[0]
        res.update(status="failed", reason=("%s: %s" % (type(e).__name__, first))[:300])
    gc.collect()
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def rel_diff(got, want):
    """max |got - want| / max |want|; 0 when both are all zeros, inf for NaN."""
    if want.numel() == 0:
        return 0.0
    scale = float(want.abs().max())
    diff = float((got.float() - want.float()).abs().max())
    if scale == 0.0 and diff == 0.0:
        return 0.0
    err = diff / max(scale, 1e-12)
    return math.inf if math.isnan(err) else err


def compare(device, bf16, models, run, leaves):
    """Run each model through run(model) -> (loss, {name: tensor}) and
    backward, under bf16 autocast or not; the relative differences of the
    second model's loss, tensors and gradients of leaves (a dict of leaf
    tensors) from the first's."""
    seen = []
    for model in models:
        for t in leaves.values():
            t.grad = None
        with autocast(device, bf16):
            loss, named = run(model)
        loss.backward()
        got = {k: v.detach().clone() for k, v in named.items()}
        got["loss"] = loss.detach().reshape(1)
        for k, t in leaves.items():
            got["grad " + k] = t.grad.clone() if t.grad is not None else torch.zeros_like(t)
        seen.append(got)
    return {k: rel_diff(seen[1][k], want) for k, want in seen[0].items()}


def check_grouped(spec, device, opts):
    """The grouped model against torch_ref's: (ok, report lines).

    First the whole model, in fp32, on a batch of at most 64 images: the
    routing, capacity, layout and auxiliary losses must agree to rounding.
    Then each MoE layer alone under bf16 autocast, with the same random
    input for both (the grouped GEMM in bf16, as timed). In bf16 the whole
    model cannot be compared: the layers' rounding differs a little, which
    moves later layers' router logits enough to flip a few choices, and a
    flipped choice of the class token, which carries most of the gradient,
    moves the expert weights' gradients by tens of percent."""
    grouped_mm = grouped_mm_for(opts)
    n = min(opts.batch, 64)
    nds = len(spec["datasets"])
    params = make_params(spec, device, seed=2)
    g = torch.Generator(device=device).manual_seed(3)
    C, H, W = spec["input"]
    x = torch.randn(n, C, H, W, device=device, generator=g)
    labels = torch.randint(0, min(d["classes"] for d in spec["datasets"]), (n,), device=device, generator=g)
    dataset = torch.arange(n, device=device) % nds
    models = (torch_ref.Model(spec, params), GroupedModel(spec, params, torch.float32, grouped_mm))
    errs = compare(device, False, models, lambda m: (Net(m)(x, labels, dataset), {}), params)
    checks = [("whole model in fp32, batch %d" % n, TOL_FP32, errs)]

    bf16 = device.type == "cuda" or not opts.emulate_grouped_mm
    models = (torch_ref.Model(spec, params), GroupedModel(spec, params, torch.bfloat16 if bf16 else torch.float32,
                                                          grouped_mm))
    errs = {}
    layers = [op for op in spec["ops"] if op["op"] == "moe"]
    for op in layers:
        xl = torch.randn(n, op["tokens"], op["dim"], device=device, generator=g, requires_grad=True)
        wl = torch.randn(n, op["tokens"], op["dim"], device=device, generator=g)

        def run(m):
            m.aux = []
            out = m.moe(op, xl, dataset, None)
            return (out.float() * wl).sum() / n + sum(m.aux), {"output": out, "auxiliary loss": sum(m.aux)}

        leaves = {k: params[k] for k in op["tensors"]}
        leaves["input"] = xl
        layer = compare(device, bf16, models, run, leaves)
        del layer["loss"]   # a sum of terms of either sign: its relative difference means little
        errs.update({"%s %s" % (op["prefix"], k): v for k, v in layer.items()})
    if layers:
        checks.append(("each of the %d MoE layers alone in %s" % (len(layers), "bf16" if bf16 else "fp32"),
                       TOL_BF16 if bf16 else TOL_FP32, errs))

    ok, report = True, []
    for what, tol, errs in checks:
        worst = sorted(errs, key=errs.get, reverse=True)
        bad = [k for k in worst if errs[k] > tol]
        ok = ok and not bad
        report.append("check grouped_bf16: %s: worst relative difference %.2e (%s): %s"
                      % (what, errs[worst[0]], worst[0], "PASS" if not bad else "FAIL (tolerance %.0e)" % tol))
        if bad:
            report.append("  %d over the tolerance: %s%s" % (len(bad), ", ".join(
                "%s %.2e" % (k, errs[k]) for k in bad[:6]), ", ..." if len(bad) > 6 else ""))
    return ok, "\n".join(report)


# ---- main ------------------------------------------------------------------------------------

def print_result(r):
    name = "pytorch %s: " % r["variant"]
    if r["status"] != "ok":
        print(name + "%s (%s)" % (r["status"], r["reason"]), flush=True)
        return
    peak = "%.0f MiB" % r["peak_mib"] if r["peak_mib"] is not None else "n/a"
    print(name + "batch %d, %.2f ms per step, %.1f images/s, %.2f TFLOP/s, peak %s"
          % (r["batch"], r["ms_per_step"], r["images_per_s"], r["tflops"], peak), flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="torch_gpu.py",
                                 description="Time PyTorch training steps of a moecc model on a GPU.")
    ap.add_argument("gen_dir", metavar="GEN_DIR", help="a directory with moecc's model.json")
    ap.add_argument("--batch", type=int, default=0, help="images per step (default: model.json's batch)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (default 20)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    ap.add_argument("--json", metavar="OUT", help="also write the results to OUT as a JSON list")
    ap.add_argument("--flops-per-image", type=float, default=0.0, help="forward FLOPs per image (default: counted)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--no-peak", action="store_true", help="skip the bf16 GEMM peak")
    ap.add_argument("--check-grouped", action="store_true",
                    help="compare the grouped model with torch_ref's before timing it")
    ap.add_argument("--emulate-grouped-mm", action="store_true",
                    help="testing aid: a Python loop for torch._grouped_mm")
    opts = ap.parse_args(argv)
    opts.variants = [v.strip() for v in opts.variants.split(",") if v.strip()]
    for v in opts.variants:
        if v not in VARIANTS:
            ap.error("unknown variant '%s' (known: %s)" % (v, ", ".join(VARIANTS)))
    if opts.batch < 0 or opts.steps < 1 or opts.warmup < 0 or opts.flops_per_image < 0:
        ap.error("--batch, --warmup and --flops-per-image must not be negative, --steps must be at least 1")
    try:
        opts.device = torch.device(opts.device)
    except RuntimeError as e:
        ap.error("--device: %s" % e)
    if opts.device.type not in ("cuda", "cpu"):
        ap.error("--device: cuda or cpu, not %s" % opts.device)
    try:
        with open(os.path.join(opts.gen_dir, "model.json")) as f:
            opts.spec = json.load(f)
    except (OSError, ValueError) as e:
        ap.error("%s: %s" % (os.path.join(opts.gen_dir, "model.json"), e))
    return opts


def main(argv):
    opts = parse_args(argv[1:])
    spec, device = opts.spec, opts.device
    if device.type == "cuda" and not torch.cuda.is_available():
        print("torch_gpu.py: no CUDA device: PyTorch %s (CUDA %s) sees none; --device cpu runs on the CPU"
              % (torch.__version__, torch.version.cuda or "not built in"), file=sys.stderr)
        return 1
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    opts.batch = opts.batch or spec["batch"]
    try:
        flops = opts.flops_per_image or flops_per_image(spec)
    except ValueError as e:
        print("torch_gpu.py: %s" % e, file=sys.stderr)
        return 2
    place_torch_ref(device)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (running on the CPU)"
    peak = None
    if device.type == "cuda" and not opts.no_peak:
        peak = gemm_peak(device)
        torch.cuda.empty_cache()
    print("gpu: %s, torch %s, bf16 GEMM peak %s"
          % (gpu, torch.__version__, "%.0f TFLOP/s" % peak if peak is not None else "n/a"), flush=True)

    results = []
    for variant in opts.variants:
        r = run_variant(variant, spec, device, opts, flops)
        r.update(device=gpu, torch=torch.__version__, gemm_peak_tflops=peak, flops_per_image=flops,
                 steps=opts.steps, warmup=opts.warmup)
        print_result(r)
        results.append(r)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
