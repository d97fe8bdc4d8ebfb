#!/usr/bin/env python3
"""torch_ref.py: a PyTorch model of a moecc-generated trainer, built from its
model.json, for cross-checks and benchmarks.

    torch_ref.py check GEN_DIR STEP.safetensors
        Load the weights, the batch, the gate noise and the random draws'
        seed and step that `./train --dump-step` wrote (dropout masks are
        drawn again from them, with libmoert's Philox), run one forward and
        backward pass in fp32, and
        compare the loss and every gradient with the trainer's. Exit 0 when
        all agree within the tolerance, 1 otherwise, 77 without torch.

    torch_ref.py bench GEN_DIR [--batch B] [--steps N] [--threads T]
        Time full training steps (forward, backward, AdamW) of the same
        model in PyTorch on random images; print images/s.

The MoE layer follows Tutel's semantics, as the generated code does:
softmax top-k, gates renormalised over the top k, capacity k * floor(cf *
ceil(N / E)), choices claim capacity in order (every first choice before
any second), optionally by descending top-1 probability (batch priority);
GShard's balance loss E * sum(mean prob * top-1 fraction), the z-loss
mean(logsumexp^2), and DAMEX's routing loss, the cross-entropy of the
router logits against each dataset's expert.
"""
import json
import math
import struct
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    print("torch_ref.py: PyTorch is not installed: skipped")
    sys.exit(77)

DTYPES = {"F32": (torch.float32, 4), "I32": (torch.int32, 4), "I64": (torch.int64, 8),
          "F64": (torch.float64, 8), "U8": (torch.uint8, 1)}


def load_safetensors(path):
    """A dict of tensors from a safetensors file (no safetensors package needed)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, size = DTYPES[info["dtype"]]
        lo, hi = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + lo:base + hi]), dtype=dtype)
        out[name] = t.reshape(info["shape"]).clone()
    return out


def moe_capacity(n, e, k, cf, dropless):
    if dropless:
        return n
    per = (n + e - 1) // e
    cap = k * int(math.floor(cf * per))
    return min(max(cap, 1), n)


def philox_uniform(seed, stream, counters):
    """moert_rng_uniform (runtime/core_rng.c) at each counter: the first
    word of Philox4x32-10 on (counter, stream) under the key seed, its top
    24 bits over 2^24, in float32"""
    import numpy as np
    u32 = np.uint64(0xFFFFFFFF)
    c = np.asarray(counters, dtype=np.uint64)
    c0, c1 = c & u32, c >> np.uint64(32)
    c2 = np.full_like(c0, np.uint64(stream & 0xFFFFFFFF))
    c3 = np.full_like(c0, np.uint64(stream >> 32))
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    for _ in range(10):
        p0 = c0 * np.uint64(0xD2511F53)
        p1 = c2 * np.uint64(0xCD9E8D57)
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & u32,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & u32)
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return (c0 >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24)


def dropout_mask(draws, p, n, index):
    """ops.h's dropout_mask for op `index`: n values, 0 with probability p,
    else 1 / (1 - p) (in float32), from draws = (seed, step)"""
    import numpy as np
    seed, step = draws
    u = philox_uniform(seed, 1000 + index, (np.uint64(step) << np.uint64(32)) + np.arange(n, dtype=np.uint64))
    keep = np.float32(1.0) / (np.float32(1.0) - np.float32(p))
    return torch.from_numpy(np.where(u < np.float32(p), np.float32(0.0), keep).astype(np.float32))


def load_loss(clean, noisy, k, std):
    """Shazeer et al.'s load loss: CV^2 over the experts of the summed
    chance of each being in a token's top k when its own noise is drawn
    again (the threshold: the k-th largest noisy logit of the others)."""
    n, e = noisy.shape
    top = torch.topk(noisy.detach(), min(k + 1, e), dim=1).indices
    chosen = torch.zeros(n, e, dtype=torch.bool).scatter(1, top[:, :k], True)
    at_out = top[:, k - 1:k].expand(n, e)   # the threshold of an expert not chosen: the k-th
    at_in = top[:, k:k + 1].expand(n, e) if k < e else at_out   # of a chosen one: the (k+1)-th
    thr = noisy.gather(1, torch.where(chosen, at_in, at_out))
    p = torch.special.ndtr((clean - thr) / std)
    if k >= e:
        p = torch.where(chosen, torch.ones_like(p), p)
    load = p.sum(dim=0)
    return load.var(unbiased=False) / load.mean() ** 2


class Model:
    """The ops of model.json over a dict of parameter tensors."""

    def __init__(self, spec, params):
        self.spec = spec
        self.p = params
        self.aux = []

    def moe(self, op, x, dataset, noise):
        B, T, D = x.shape
        E, K, H = op["experts"], op["top_k"], op["hidden"]
        pre = op["prefix"]
        xt = x.reshape(B * T, D)
        N = B * T
        if op["router"] == "cosine":
            q = F.normalize(xt @ self.p[pre + ".gate.proj.weight"].t(), dim=1, eps=1e-6)
            emb = F.normalize(self.p[pre + ".gate.expert_emb"], dim=1, eps=1e-6)
            logits = q @ emb.t() / op["temperature"]
        elif op["router"] == "attention":
            q = xt @ self.p[pre + ".gate.query.weight"].t()
            logits = q @ self.p[pre + ".gate.expert_tokens"].t() / math.sqrt(op["router_dim"])
        else:
            logits = xt @ self.p[pre + ".gate.weight"].t()
        if op["router"] == "soft":
            logits = logits / op["temperature"]
        clean = logits
        if noise is not None:
            logits = logits + noise
        probs = torch.softmax(logits, dim=1)
        if op["router"] == "expert_choice":
            return self.expert_choice(op, x, xt, logits, probs)
        topp, topk = torch.topk(probs, K, dim=1)
        gates = topp / topp.sum(dim=1, keepdim=True) if (op["normalize_gates"] and K > 1) else topp
        cap = moe_capacity(N, E, K, op["capacity"], op["dropless"])
        # slots (GShard): every first choice before any second; within a
        # choice, tokens in order or by descending top-1 probability
        with torch.no_grad():
            if op["batch_priority"]:
                order = torch.argsort(-topp[:, 0], stable=True)
            else:
                order = torch.arange(N)
            keep = torch.zeros(N, K, dtype=torch.bool)
            offset = torch.zeros(E, dtype=torch.long)
            for k in range(K):
                onehot = F.one_hot(topk[order, k], E)
                pos = torch.cumsum(onehot, dim=0) - 1 + offset
                slot = pos.gather(1, topk[order, k][:, None])[:, 0]
                keep[order, k] = slot < cap
                offset = offset + onehot.sum(dim=0)
        w1, b1 = self.p[pre + ".experts.fc1.weight"], self.p[pre + ".experts.fc1.bias"]
        w2, b2 = self.p[pre + ".experts.fc2.weight"], self.p[pre + ".experts.fc2.bias"]
        act = ACTS[op["act"]]
        out = torch.zeros(N, D)
        for e in range(E):
            sel = (topk == e) & keep            # [N, K]: the kept choices of expert e
            tok, kk = sel.nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            h = act(xt[tok] @ w1[e].t() + b1[e])
            y = h @ w2[e].t() + b2[e]
            out = out.index_add(0, tok, gates[tok, kk][:, None] * y)
        out = out.reshape(B, T, D)
        topk_l = topk[:, 0]
        # auxiliary losses
        me = probs.mean(dim=0)
        ce = F.one_hot(topk_l, E).float().mean(dim=0)
        bal = (me * ce).sum() * E
        lse = torch.logsumexp(logits, dim=1)
        z = (lse * lse).mean()
        loss = op["balance_loss"] * bal + op["z_loss"] * z
        if op.get("importance_loss", 0) > 0:
            imp = probs.sum(dim=0)   # CV^2 of the experts' summed probabilities
            loss = loss + op["importance_loss"] * imp.var(unbiased=False) / imp.mean() ** 2
        if op.get("load_loss", 0) > 0:
            loss = loss + op["load_loss"] * load_loss(clean, logits, K, op["gate_noise"] / E)
        if "map" in op and op["dataset_loss"] > 0:
            target = torch.tensor(op["map"], dtype=torch.long)[dataset].repeat_interleave(T)
            loss = loss + op["dataset_loss"] * F.cross_entropy(logits, target)
        self.aux.append(loss)
        return out

    def expert_choice(self, op, x, xt, logits, probs):
        """Each expert takes the floor(cf * ceil(N / E)) tokens of highest
        probability for it (ties to the lower token); gate = probability."""
        B, T, D = x.shape
        N, E = probs.shape
        pre = op["prefix"]
        cap = moe_capacity(N, E, 1, op["capacity"], False)
        w1, b1 = self.p[pre + ".experts.fc1.weight"], self.p[pre + ".experts.fc1.bias"]
        w2, b2 = self.p[pre + ".experts.fc2.weight"], self.p[pre + ".experts.fc2.bias"]
        act = ACTS[op["act"]]
        out = torch.zeros(N, D)
        for e in range(E):
            tok = torch.argsort(-probs[:, e].detach(), stable=True)[:cap]
            y = act(xt[tok] @ w1[e].t() + b1[e]) @ w2[e].t() + b2[e]
            out = out.index_add(0, tok, probs[tok, e][:, None] * y)
        top1 = probs.argmax(dim=1)
        bal = (probs.mean(dim=0) * F.one_hot(top1, E).float().mean(dim=0)).sum() * E
        lse = torch.logsumexp(logits, dim=1)
        loss = op["balance_loss"] * bal + op["z_loss"] * (lse * lse).mean()
        if op.get("importance_loss", 0) > 0:
            imp = probs.sum(dim=0)
            loss = loss + op["importance_loss"] * imp.var(unbiased=False) / imp.mean() ** 2
        self.aux.append(loss)
        return out.reshape(B, T, D)

    def window_attention(self, op, h):
        """Swin-style attention within w x w windows of the gh x gw token
        grid; with global_query, every window's queries are the same w * w
        projected tokens of the grid average-pooled to w x w."""
        p, pre = self.p, op["prefix"]
        B, T, D = h.shape
        NH, w = op["heads"], op["window"]
        HD = D // NH
        gh, gw = op["grid"]
        nW = (gh // w) * (gw // w)

        def part(t):        # [B, T, C] -> [B * nW, w * w, C], windows row-major
            C = t.shape[-1]
            t = t.reshape(B, gh // w, w, gw // w, w, C).permute(0, 1, 3, 2, 4, 5)
            return t.reshape(B * nW, w * w, C)

        def heads(t, n):    # [B * nW, L, n * D] -> n tensors of [B * nW, NH, L, HD]
            t = t.reshape(t.shape[0], t.shape[1], n, NH, HD).permute(2, 0, 3, 1, 4)
            return [t[i] for i in range(n)]

        if op["global_query"]:
            k, v = heads(part(F.linear(h, p[pre + ".kv.weight"], p.get(pre + ".kv.bias"))), 2)
            grid = h.reshape(B, gh, gw, D).permute(0, 3, 1, 2)
            g = F.avg_pool2d(grid, (gh // w, gw // w)).flatten(2).transpose(1, 2)  # [B, w*w, D]
            q = F.linear(g, p[pre + ".global_query.weight"], p[pre + ".global_query.bias"])
            (q,) = heads(q.repeat_interleave(nW, dim=0), 1)   # sample b's windows share q[b]
        else:
            q, k, v = heads(part(F.linear(h, p[pre + ".qkv.weight"], p.get(pre + ".qkv.bias"))), 3)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(HD), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, gh // w, gw // w, w, w, D)
        y = y.permute(0, 1, 3, 2, 4, 5).reshape(B, T, D)   # undo the partition
        return F.linear(y, p[pre + ".proj.weight"], p[pre + ".proj.bias"])

    def downsample(self, op, h):
        """Swin patch merging: each 2 x 2 block of tokens concatenated (in the
        order (0,0), (1,0), (0,1), (1,1)), layer-normed, projected."""
        p, pre = self.p, op["prefix"]
        B, T, D = h.shape
        gh, gw = op["grid"]
        x = h.reshape(B, gh, gw, D)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = x.reshape(B, (gh // 2) * (gw // 2), 4 * D)
        x = F.layer_norm(x, (4 * D,), p[pre + ".norm.weight"], p[pre + ".norm.bias"], 1e-5)
        return F.linear(x, p[pre + ".reduction.weight"])

    def forward(self, x, dataset, noises, draws=None):
        """draws: the trainer's (seed, step), for its dropout masks"""
        self.aux = []
        spec, p = self.spec, self.p
        stack = []
        h = x

        def mask(rate, n, index):
            if draws is None:
                raise SystemExit("torch_ref.py: the dump has no seed and step to draw dropout masks from")
            return dropout_mask(draws, rate, n, index)

        for index, op in enumerate(spec["ops"]):
            kind, pre = op["op"], op["prefix"]
            if kind == "input":
                continue
            if kind == "conv_stem":      # image -> image: conv + GELU, stride on the first
                for i in range(1, op["layers"] + 1):
                    h = F.gelu(F.conv2d(h, p[pre + ".conv%d.weight" % i], p[pre + ".conv%d.bias" % i],
                                        stride=op["stride"] if i == 1 else 1,
                                        padding=op["kernel"] // 2))
            elif kind == "patch_embed":
                P = op["patch"]
                h = F.conv2d(h, p[pre + ".proj.weight"], p[pre + ".proj.bias"], stride=P)
                h = h.flatten(2).transpose(1, 2)
            elif kind == "cls_token":
                h = torch.cat([p["cls_token"].expand(h.shape[0], 1, -1), h], dim=1)
            elif kind == "pos_embed":
                if not op["learned"]:
                    raise SystemExit("torch_ref.py: sine-cosine positions are not modelled")
                h = h + p["pos_embed"]
            elif kind == "layernorm":
                h = F.layer_norm(h, (h.shape[-1],), p[pre + ".weight"], p[pre + ".bias"], op["eps"])
            elif kind == "attention":
                B, T, D = h.shape
                NH = op["heads"]
                HD = D // NH
                qkv = F.linear(h, p[pre + ".qkv.weight"], p.get(pre + ".qkv.bias"))
                qkv = qkv.reshape(B, T, 3, NH, HD).permute(2, 0, 3, 1, 4)
                q, k, v = qkv[0], qkv[1], qkv[2]
                att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(HD), dim=-1)
                y = (att @ v).transpose(1, 2).reshape(B, T, D)
                h = F.linear(y, p[pre + ".proj.weight"], p[pre + ".proj.bias"])
            elif kind == "window_attention":
                h = self.window_attention(op, h)
            elif kind == "downsample":
                h = self.downsample(op, h)
            elif kind == "mlp":
                a = ACTS[op["act"]](F.linear(h, p[pre + ".fc1.weight"], p[pre + ".fc1.bias"]))
                if op.get("dropout", 0) > 0:
                    a = a * mask(op["dropout"], a.numel(), index).reshape(a.shape)
                h = F.linear(a, p[pre + ".fc2.weight"], p[pre + ".fc2.bias"])
            elif kind == "moe":
                h = self.moe(op, h, dataset, noises.get(pre))
            elif kind in ("dropout", "drop_path"):
                if op["p"] > 0 and h.dim() != 3:
                    raise SystemExit("torch_ref.py: dropout on images is not modelled")
                if op["p"] > 0 and kind == "dropout":
                    h = h * mask(op["p"], h.numel(), index).reshape(h.shape)
                elif op["p"] > 0:            # stochastic depth: one draw a sample
                    h = h * mask(op["p"], h.shape[0], index)[:, None, None]
            elif kind == "residual":
                stack.append(h)
            elif kind == "residual_end":
                h = stack.pop() + h
            elif kind == "pool":
                h = h[:, 0] if op["kind"] == "cls" else h.mean(dim=1)
            elif kind == "classifier":
                self.features = h
                return h
            else:
                raise SystemExit("torch_ref.py: op %s is not modelled" % kind)
        return h

    def loss(self, feats, labels, dataset, mix=None):
        """The cross-entropy (plus the routing losses). mix = (labels_mix,
        lam): CutMix's targets, built as timm's mixup_target builds them
        (lam of the labels' smoothed one-hot, 1 - lam of the partners'),
        against SoftTargetCrossEntropy's sum(-target * log_softmax)."""
        spec, p = self.spec, self.p
        cls = spec["ops"][-1]
        eps = spec["label_smoothing"]
        B = feats.shape[0]

        def xent(logits, y, sel):
            if mix is None:
                return F.cross_entropy(logits, y.long(), label_smoothing=eps, reduction="sum")
            C = logits.shape[1]
            off, on = eps / C, 1.0 - eps + eps / C
            y1 = torch.full_like(logits, off).scatter_(1, y.long()[:, None], on)
            y2 = torch.full_like(logits, off).scatter_(1, mix[0][sel].long()[:, None], on)
            target = y1 * mix[1] + y2 * (1.0 - mix[1])
            return torch.sum(-target * F.log_softmax(logits, dim=-1))

        if cls["heads"] == "per_dataset":
            total = 0.0
            for d, ds in enumerate(spec["datasets"]):
                sel = (dataset == d).nonzero(as_tuple=True)[0]
                if sel.numel() == 0:
                    continue
                w, bias = p["heads.%s.weight" % ds["name"]], p["heads.%s.bias" % ds["name"]]
                logits = feats[sel] @ w.t() + bias
                total = total + xent(logits, labels[sel], sel)
            ce = total / B
        else:
            logits = feats @ p["head.weight"].t() + p["head.bias"]
            ce = xent(logits, labels, torch.arange(B)) / B
        return ce + sum(self.aux), ce


ACTS = {"gelu": lambda t: F.gelu(t), "relu": F.relu, "silu": F.silu}


def check(gen_dir, dump_path):
    spec = json.load(open(gen_dir + "/model.json"))
    d = load_safetensors(dump_path)
    names = [t for op in spec["ops"] for t in op["tensors"]]
    params = {n: d[n].clone().requires_grad_(True) for n in names}
    noises = {k[len("noise."):]: v.reshape(-1, v.shape[-1]) for k, v in d.items() if k.startswith("noise.")}
    m = Model(spec, params)
    x, labels, dataset = d["batch.x"], d["batch.labels"].long(), d["batch.dataset"].long()
    draws = (int(d["seed"][0]) & (2 ** 64 - 1), int(d["step"][0])) if "seed" in d else None
    feats = m.forward(x, dataset, noises, draws)
    mix = None
    if "batch.lam" in d and float(d["batch.lam"][0]) != 1.0:
        mix = (d["batch.labels_mix"].long(), float(d["batch.lam"][0]))
        print("cutmix: lam %.6f, %d of %d targets mixed with another label"
              % (mix[1], int((mix[0] != labels).sum()), labels.numel()))
    loss, ce = m.loss(feats, labels, dataset, mix)
    loss.backward()
    ok = True
    want, got = float(loss), float(d["loss"][0])
    rel = abs(want - got) / max(abs(want), 1e-12)
    print("loss: pytorch %.7f  moecc %.7f  relative difference %.2e" % (want, got, rel))
    ok &= rel <= 1e-4
    worst = (0.0, "")
    for n in names:
        g_ref = params[n].grad
        if g_ref is None:
            g_ref = torch.zeros_like(params[n])
        g = d["grad." + n]
        scale = float(g_ref.abs().max())
        err = float((g - g_ref).abs().max()) / max(scale, 1e-12)
        if scale == 0.0 and float(g.abs().max()) == 0.0:
            err = 0.0
        if err > worst[0]:
            worst = (err, n)
        if err > 1e-4:
            print("  MISMATCH %-40s max |diff| / max |grad| = %.2e (max |grad| %.3e)" % (n, err, scale))
            ok = False
    print("gradients: %d tensors, worst relative difference %.2e (%s)" % (len(names), worst[0], worst[1]))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def bench(gen_dir, batch, steps, threads):
    spec = json.load(open(gen_dir + "/model.json"))
    torch.manual_seed(0)
    if threads:
        torch.set_num_threads(threads)
    params = {}
    for op in spec["ops"]:
        for n, shape in zip(op["tensors"], op.get("shapes", [])):
            params[n] = (torch.randn(shape) * 0.02).requires_grad_(True)
    if not params:
        raise SystemExit("torch_ref.py: model.json has no tensor shapes")
    m = Model(spec, params)
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3)
    C, Hh, W = spec["input"]
    x = torch.randn(batch, C, Hh, W)
    labels = torch.randint(0, min(d["classes"] for d in spec["datasets"]), (batch,))
    dataset = torch.arange(batch) % len(spec["datasets"])
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        feats = m.forward(x, dataset, {}, (0, i))  # dropout masks of some step: timing alone
        loss, _ = m.loss(feats, labels, dataset)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    t = sorted(times[2:])[len(times[2:]) // 2]
    print("pytorch %s: batch %d, %.1f ms per step, %.1f images/s (median of %d steps, %d threads)"
          % (torch.__version__, batch, t * 1e3, batch / t, steps, torch.get_num_threads()))


def main(argv):
    if len(argv) >= 4 and argv[1] == "check":
        return check(argv[2], argv[3])
    if len(argv) >= 3 and argv[1] == "bench":
        args = argv[3:]
        opt = {"--batch": 0, "--steps": 5, "--threads": 0}
        for i in range(0, len(args) - 1, 2):
            opt[args[i]] = int(args[i + 1])
        spec = json.load(open(argv[2] + "/model.json"))
        bench(argv[2], opt["--batch"] or spec["batch"], opt["--steps"], opt["--threads"])
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
