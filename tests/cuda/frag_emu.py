# frag_emu.py: attention_fwd_frag_kernel and attention_bwd_frag_kernel (kernels.cuh)
# emulated on the CPU lane by lane (the PTX ISA m16n8k16 fragment layouts and
# ldmatrix .trans), against float64 references: a check of their fragment
# bookkeeping without a GPU.
# /usr/bin/python3 tests/cuda/frag_emu.py (numpy); prints the relative errors.
import numpy as np
def bf(x):  # round to bf16 (nearest even) as float32
    x = np.atleast_1d(np.asarray(x, np.float32)).copy(); u = x.view(np.uint32)
    u += np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)); u &= np.uint32(0xFFFF0000); return u.view(np.float32)
def mma(d, a, b0, b1):
    # d: [32][4], a: [32][4] pairs, b0/b1: [32] pairs (each pair = (lo, hi))
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        A[g, 2*t:2*t+2] = a[lane][0]; A[g+8, 2*t:2*t+2] = a[lane][1]
        A[g, 2*t+8:2*t+10] = a[lane][2]; A[g+8, 2*t+8:2*t+10] = a[lane][3]
        B[2*t:2*t+2, g] = b0[lane]; B[2*t+8:2*t+10, g] = b1[lane]
    C = A @ B
    for lane in range(32):
        g, t = lane // 4, lane % 4
        d[lane][0] += C[g, 2*t]; d[lane][1] += C[g, 2*t+1]; d[lane][2] += C[g+8, 2*t]; d[lane][3] += C[g+8, 2*t+1]
def pair(x, r, c):  # lds_bf16x2 of row-major 2-D array at (r, c)
    return (x[r, c], x[r, c+1])
def frag_a_rows(x, r0, k0):
    return [[pair(x, r0+l//4, k0+2*(l%4)), pair(x, r0+l//4+8, k0+2*(l%4)), pair(x, r0+l//4, k0+2*(l%4)+8), pair(x, r0+l//4+8, k0+2*(l%4)+8)] for l in range(32)]
def frag_times_rows(d, a, y, k0, N):
    for n in range(N):
        b0 = [pair(y, 8*n+l//4, k0+2*(l%4)) for l in range(32)]
        b1 = [pair(y, 8*n+l//4, k0+2*(l%4)+8) for l in range(32)]
        mma(d[n], a, b0, b1)
def ldsm_x4_trans(x, at):
    # ldmatrix .x4 .trans: at[l] = (row, col) of the 8-element row lane l addresses (matrix l // 8,
    # its row l % 8); lane 4g + t gets, of each matrix i, its column g, rows 2t and 2t + 1
    regs = [[None]*4 for _ in range(32)]
    for l in range(32):
        g, t = l // 4, l % 4
        for i in range(4):
            (r0, c0), (r1, c1) = at[8*i + 2*t], at[8*i + 2*t + 1]
            regs[l][i] = (x[r0, c0 + g], x[r1, c1 + g])
    return regs
def frag_times_cols(d, a, x, k0, N):  # kernels.cuh frag_times_cols: b = x's rows k0.., columns 8n..
    for n in range(0, N, 2):
        b = ldsm_x4_trans(x, [(k0 + (l//8 & 1)*8 + l % 8, 8*n + (l//8 >> 1)*8) for l in range(32)])
        mma(d[n], a, [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
        mma(d[n+1], a, [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])
def frag_a_cols(x, m0, k0):  # kernels.cuh frag_a_cols: the a tile of x^T at (m0, k0)
    return ldsm_x4_trans(x, [(k0 + (l//8 >> 1)*8 + l % 8, m0 + (l//8 & 1)*8) for l in range(32)])
def frag_a_acc(s, kk):
    return [[tuple(bf([s[2*kk][l][0], s[2*kk][l][1]])), tuple(bf([s[2*kk][l][2], s[2*kk][l][3]])),
             tuple(bf([s[2*kk+1][l][0], s[2*kk+1][l][1]])), tuple(bf([s[2*kk+1][l][2], s[2*kk+1][l][3]]))] for l in range(32)]
col = lambda t, e: 2*t + (e & 1)
row = lambda g, e: g + (8 if e & 2 else 0)
def quad(vals, op):  # vals[lane] -> xor-1, xor-2 butterfly
    v = list(vals)
    for m in (1, 2):
        v = [op(v[l], v[l ^ m]) for l in range(32)]
    return v
def stage(x, T, TP):  # [T, HD] fp32 -> [TP, HD] bf16, zero rows past T
    o = np.zeros((TP, x.shape[1]), np.float32); o[:T] = bf(x.ravel()).reshape(x.shape); return o
def fwd(q, k, v, T, HD):
    TP = (T + 15)//16*16; NT = TP//8; NO = HD//8
    Q, K, V = stage(q, T, TP), stage(k, T, TP), stage(v, T, TP)
    out = np.full((T, HD), np.nan); att = np.full((T, T), np.nan); scale = 1/np.sqrt(HD)
    for w in range(TP//16):
        r0 = 16*w
        s = [[[0.0]*4 for _ in range(32)] for _ in range(NT)]
        for k0 in range(0, HD, 16):
            frag_times_rows(s, frag_a_rows(Q, r0, k0), K, k0, NT)
        for l in range(32):
            t = l % 4
            for j in range(NT):
                for e in range(4):
                    s[j][l][e] = s[j][l][e]*scale if 8*j+col(t, e) < T else -np.inf
        mx = [quad([max(s[j][l][e] for j in range(NT) for e in (h*2, h*2+1)) for l in range(32)], max) for h in range(2)]
        for l in range(32):
            for j in range(NT):
                for e in range(4):
                    s[j][l][e] = np.exp(s[j][l][e] - mx[e//2][l])
        sm = [quad([sum(s[j][l][e] for j in range(NT) for e in (h*2, h*2+1)) for l in range(32)], lambda a, b: a+b) for h in range(2)]
        for l in range(32):
            g, t = l//4, l % 4
            for j in range(NT):
                for e in range(4):
                    s[j][l][e] /= sm[e//2][l]
                    r, u = r0+row(g, e), 8*j+col(t, e)
                    if r < T and u < T: att[r, u] = s[j][l][e]
        o = [[[0.0]*4 for _ in range(32)] for _ in range(NO)]
        for kk in range(TP//16):
            frag_times_cols(o, frag_a_acc(s, kk), V, 16*kk, NO)
        store(out, o, r0, T, NO)
    return out, att
def bwd(q, k, v, go, att, T, HD):
    TP = (T + 15)//16*16; NT = TP//8; NO = HD//8
    Q, K, V, G = stage(q, T, TP), stage(k, T, TP), stage(v, T, TP), stage(go, T, TP)
    dS = np.zeros((TP, TP), np.float32); P = np.zeros((TP, TP), np.float32)
    dq = np.full((T, HD), np.nan); dk = np.full((T, HD), np.nan); dv = np.full((T, HD), np.nan); scale = 1/np.sqrt(HD)
    for w in range(TP//16):
        r0 = 16*w
        p = [[[0.0]*4 for _ in range(32)] for _ in range(NT)]
        for l in range(32):
            g, t = l//4, l % 4
            for j in range(NT):
                for e in range(4):
                    r, u = r0+row(g, e), 8*j+col(t, e)
                    p[j][l][e] = att[r, u] if r < T and u < T else 0.0
        ds = [[[0.0]*4 for _ in range(32)] for _ in range(NT)]
        for k0 in range(0, HD, 16):
            frag_times_rows(ds, frag_a_rows(G, r0, k0), V, k0, NT)
        dot = [quad([sum(p[j][l][e]*ds[j][l][e] for j in range(NT) for e in (h*2, h*2+1)) for l in range(32)], lambda a, b: a+b) for h in range(2)]
        for l in range(32):
            g, t = l//4, l % 4
            for j in range(NT):
                for e in range(4):
                    ds[j][l][e] = p[j][l][e]*(ds[j][l][e]-dot[e//2][l])*scale
                    r, u = r0+row(g, e), 8*j+col(t, e)
                    dS[r, u] = bf(ds[j][l][e])[0]; P[r, u] = bf(p[j][l][e])[0]
        acc = [[[0.0]*4 for _ in range(32)] for _ in range(NO)]
        for kk in range(TP//16):
            frag_times_cols(acc, frag_a_acc(ds, kk), K, 16*kk, NO)
        store(dq, acc, r0, T, NO)
    for w in range(TP//16):
        r0 = 16*w
        a1 = [[[0.0]*4 for _ in range(32)] for _ in range(NO)]; a2 = [[[0.0]*4 for _ in range(32)] for _ in range(NO)]
        for kk in range(TP//16):
            frag_times_cols(a1, frag_a_cols(dS, r0, 16*kk), Q, 16*kk, NO)
            frag_times_cols(a2, frag_a_cols(P, r0, 16*kk), G, 16*kk, NO)
        store(dk, a1, r0, T, NO); store(dv, a2, r0, T, NO)
    return dq, dk, dv
def store(dst, o, r0, T, NO):
    for l in range(32):
        g, t = l//4, l % 4
        for hh in range(2):
            r = r0+g+8*hh
            if r < T:
                for n in range(NO):
                    dst[r, 8*n+2*t] = o[n][l][2*hh]; dst[r, 8*n+2*t+1] = o[n][l][2*hh+1]
rng = np.random.default_rng(1)
for T, HD in ((65, 32), (16, 32), (49, 16), (20, 64)):
    q, k, v = (rng.uniform(-2, 2, (T, HD)).astype(np.float32) for _ in range(3))
    go = rng.uniform(-1, 1, (T, HD)).astype(np.float32)
    s = q.astype(np.float64) @ k.T / np.sqrt(HD); a = np.exp(s - s.max(1, keepdims=True)); a /= a.sum(1, keepdims=True)
    o_ref = a @ v
    out, att = fwd(q, k, v, T, HD)
    da = go @ v.T; ds = a * (da - (a*da).sum(1, keepdims=True)) / np.sqrt(HD)
    dq_r, dk_r, dv_r = ds @ k, ds.T @ q, a.T @ go
    dq, dk, dv = bwd(q, k, v, go, a.astype(np.float32), T, HD)
    rel = lambda x, y: np.max(np.abs(x - y)) / np.max(np.abs(y))
    print(T, HD, 'out %.2e att %.2e dq %.2e dk %.2e dv %.2e' % (rel(out, o_ref), rel(att, a), rel(dq, dq_r), rel(dk, dk_r), rel(dv, dv_r)),
          'nan' if any(np.isnan(x).any() for x in (out, att, dq, dk, dv)) else '')
