# gemm_emu.py: the tile bookkeeping of moe_up_kernel and moe_dh_kernel (kernels.cuh)
# emulated on the CPU lane by lane: the swizzled shared-memory tiles as cp.async fills
# them (zeros past the live rows and the hidden width), ldmatrix (plain and transposed)
# as the PTX ISA hands out its fragments, mma.sync m16n8k16, and the epilogue's
# row and column of each accumulator; one block's products against numpy's, with the
# buffers poisoned with NaN first, so a fragment read from an unwritten place fails.
# A check of the index arithmetic without a GPU (the kernel tests run the kernels).
# /usr/bin/python3 tests/cuda/gemm_emu.py (numpy); exits 1 on a mismatch.
import sys
import numpy as np
BM, BN, BK, ST = 128, 128, 32, 3
def up_swz(r, c): return r * BK + ((c ^ ((r >> 1) & 3)) << 3)
def dh_swz(r, c): return r * BN + ((c ^ (r & 7)) << 3)
def ldm(sm, addrs, trans):
    # addrs[lane] -> element offset; returns r[lane][i] = pair
    out = [[None]*4 for _ in range(32)]
    for i in range(4):
        M = np.array([sm[addrs[8*i+j]:addrs[8*i+j]+8] for j in range(8)])  # rows j
        for l in range(32):
            g, t = l // 4, l % 4
            out[l][i] = (M[g, 2*t], M[g, 2*t+1]) if not trans else (M[2*t, g], M[2*t+1, g])
    return out
def mma(d, a, b0, b1):
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for l in range(32):
        g, t = l // 4, l % 4
        A[g, 2*t:2*t+2] = a[l][0]; A[g+8, 2*t:2*t+2] = a[l][1]
        A[g, 2*t+8:2*t+10] = a[l][2]; A[g+8, 2*t+8:2*t+10] = a[l][3]
        B[2*t:2*t+2, g] = b0[l]; B[2*t+8:2*t+10, g] = b1[l]
    C = A @ B
    for l in range(32):
        g, t = l // 4, l % 4
        d[l][0] += C[g, 2*t]; d[l][1] += C[g, 2*t+1]; d[l][2] += C[g+8, 2*t]; d[l][3] += C[g+8, 2*t+1]

def block(kind, X, W, m0, n0, rows, end, D, H):
    # X: [rows, D]; W: up: [H, D]; dh: [D, H]. returns acc as dict (m, c) -> value
    KT = D // BK
    res = {}
    sa = [np.full(BM*BK, np.nan) for _ in range(ST)]
    sb = [np.full(BM*BK, np.nan) for _ in range(ST)]
    def load(s, kt):
        k0 = kt * BK
        for tid in range(256):
            for j in range(2):
                i = tid + 256*j; r, c = i // 4, i % 4
                ok = m0 + r < end
                sa[s][up_swz(r, c):up_swz(r, c)+8] = X[m0+r, k0+8*c:k0+8*c+8] if ok else 0
                if kind == 'up':
                    ok = n0 + r < H
                    sb[s][up_swz(r, c):up_swz(r, c)+8] = W[n0+r, k0+8*c:k0+8*c+8] if ok else 0
                else:
                    rb, cb = i // (BN//8), i % (BN//8)
                    ok = n0 + 8*cb < H
                    sb[s][dh_swz(rb, cb):dh_swz(rb, cb)+8] = W[k0+rb, n0+8*cb:n0+8*cb+8] if ok else 0
    accs = {w: [[[ [0.0]*4 for _ in range(32)] for _ in range(4)] for _ in range(4)] for w in range(8)}
    for kt in range(KT):
        load(kt % ST, kt)
        A, B = sa[kt % ST], sb[kt % ST]
        for w in range(8):
            wm, wn = w // 4 * 64, w % 4 * 32
            for kk in range(BK // 16):
                af = [ldm(A, [up_swz(wm + 16*mi + l % 16, 2*kk + l // 16) for l in range(32)], False) for mi in range(4)]
                bf = [None]*4
                for nj in range(2):
                    if kind == 'up':
                        q = ldm(B, [up_swz(wn + 16*nj + l // 16 * 8 + l % 8, 2*kk + l // 8 % 2) for l in range(32)], False)
                    else:
                        q = ldm(B, [dh_swz(16*kk + l % 8 + l // 8 % 2 * 8, (wn + 16*nj) // 8 + l // 16) for l in range(32)], True)
                    bf[2*nj] = ([q[l][0] for l in range(32)], [q[l][1] for l in range(32)])
                    bf[2*nj+1] = ([q[l][2] for l in range(32)], [q[l][3] for l in range(32)])
                for mi in range(4):
                    for ni in range(4):
                        mma(accs[w][mi][ni], af[mi], bf[ni][0], bf[ni][1])
    for w in range(8):
        wm, wn = w // 4 * 64, w % 4 * 32
        for l in range(32):
            g, t = l // 4, l % 4
            for mi in range(4):
                for half in range(2):
                    m = m0 + wm + 16*mi + g + 8*half
                    for ni in range(4):
                        c = n0 + wn + 8*ni + 2*t
                        for j in range(2):
                            res[(m, c + j)] = accs[w][mi][ni][l][2*half + j]
    return res

rng = np.random.default_rng(0)
bad = False
for kind, D, H in [('up', 64, 200), ('dh', 64, 200)]:
    rows = 150
    X = rng.standard_normal((rows + BM, D))
    W = rng.standard_normal((H, D)) if kind == 'up' else rng.standard_normal((D, H))
    ref = X @ (W.T if kind == 'up' else W)
    worst = 0
    for n0 in (0, 128):
        res = block(kind, X, W, 128 if n0 else 0, n0, rows, rows - 10 if n0 else rows, D, H)
        m0 = 128 if n0 else 0
        end = rows - 10 if n0 else rows
        for (m, c), v in res.items():
            if c < H and m < rows:
                want = ref[m, c] if m < end else 0.0
                worst = max(worst, abs(v - want)) if not np.isnan(v) else float("inf")
    print(kind, D, H, 'max abs err', worst)
    bad = bad or not worst < 1e-9
sys.exit(1 if bad else 0)
