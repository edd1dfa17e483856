# Warp-level emulation of flash_attention.cu's index math (PTX fragment semantics from the ISA
# spec), to check the kernel's addressing without a GPU. Values kept in f64 (no bf16 rounding).
import numpy as np, sys

LANES = np.arange(32)
G = LANES >> 2
T4 = LANES & 3
PAD = 8
BM = BN = 64
WARPS = 4
LOG2E = 1.4426950408889634

class Smem:
    def __init__(self, n_elems):
        self.a = np.full(n_elems, np.nan)
    def ldsm(self, addr, trans=False):
        # addr: byte addresses per lane (32,)
        assert np.all(addr % 16 == 0), "ldmatrix rows must be 16-byte aligned"
        regs = []
        for m in range(4):
            rows = addr[8 * m:8 * m + 8] // 2  # element offsets of the 8 rows
            mat = np.stack([self.a[r:r + 8] for r in rows])  # [row][col]
            if not trans:
                lo = mat[G, 2 * T4]; hi = mat[G, 2 * T4 + 1]
            else:
                lo = mat[2 * T4, G]; hi = mat[2 * T4 + 1, G]
            regs.append(np.stack([lo, hi], axis=1))
        return regs
    def st32(self, elem_off, pair):
        # elem_off per lane (32,), pair (32,2)
        for l in range(32):
            self.a[elem_off[l]] = pair[l, 0]
            self.a[elem_off[l] + 1] = pair[l, 1]

def mma(c, a, b0, b1):
    # c: (32,4) ; a: list of 4 (32,2); b0,b1 (32,2)
    A = np.zeros((16, 16)); B = np.zeros((16, 8)); C = np.zeros((16, 8))
    for l in range(32):
        g, t = l >> 2, l & 3
        for i in range(8):
            reg, half = i // 2, i % 2
            row = g if (i < 2 or 4 <= i < 6) else g + 8
            col = t * 2 + (i & 1) + (8 if i >= 4 else 0)
            A[row, col] = a[reg][l, half]
        for i in range(4):
            b = b0 if i < 2 else b1
            k = t * 2 + (i & 1) + (8 if i >= 2 else 0)
            B[k, g] = b[l, i & 1]
        for i in range(4):
            row = g if i < 2 else g + 8
            C[row, t * 2 + (i & 1)] = c[l, i]
    assert not np.isnan(A).any() and not np.isnan(B).any(), "mma reads NaN"
    D = A @ B + C
    out = np.zeros((32, 4))
    for l in range(32):
        g, t = l >> 2, l & 3
        for i in range(4):
            row = g if i < 2 else g + 8
            out[l, i] = D[row, t * 2 + (i & 1)]
    return out

def pack(lo, hi):
    return np.stack([lo, hi], axis=1)

def load_tile(sm, dst_elem, src, row0, rows, valid, D):
    LD = D + PAD
    for r in range(rows):
        if r < valid:
            sm.a[dst_elem + r * LD: dst_elem + r * LD + D] = src[row0 + r]
        else:
            sm.a[dst_elem + r * LD: dst_elem + r * LD + D] = 0.0

def fwd(q, k, v, causal, scale):
    # q,k,v: [T, D] one head
    T_, D = q.shape
    LD = D + PAD
    TILE = BN * LD
    out = np.full((T_, D), np.nan); lse = np.full(T_, np.nan)
    sl2 = scale * LOG2E
    nblocks = (T_ + BM - 1) // BM
    for bx in range(nblocks):
        sm = Smem(BM * LD + 4 * TILE)
        sq = 0; sk = BM * LD; sv = sk + 2 * TILE
        q0 = (nblocks - 1 - bx) * BM
        kv_end = min(T_, q0 + BM) if causal else T_
        n_tiles = (kv_end + BN - 1) // BN
        load_tile(sm, sq, q, q0, BM, T_ - q0, D)
        load_tile(sm, sk, k, 0, BN, T_, D)
        load_tile(sm, sv, v, 0, BN, T_, D)
        st = [dict(o=np.zeros((D // 8, 32, 4)), m=np.full((2, 32), -np.inf), l=np.zeros((2, 32)), qf=None) for _ in range(WARPS)]
        for j in range(n_tiles):
            stage = j & 1
            if j + 1 < n_tiles:
                nk = (j + 1) * BN
                load_tile(sm, sk + (stage ^ 1) * TILE, k, nk, BN, T_ - nk, D)
                load_tile(sm, sv + (stage ^ 1) * TILE, v, nk, BN, T_ - nk, D)
            skk = (sk + stage * TILE) * 2; svv = (sv + stage * TILE) * 2
            for w in range(WARPS):
                S_ = st[w]
                if j == 0:
                    S_['qf'] = [sm.ldsm(sq * 2 + ((w * 16 + (LANES & 15)) * LD + kk * 16 + (LANES >> 4) * 8) * 2) for kk in range(D // 16)]
                qf = S_['qf']
                s = np.zeros((BN // 8, 32, 4))
                for kk in range(D // 16):
                    for np_ in range(BN // 16):
                        b = sm.ldsm(skk + ((np_ * 16 + (LANES & 7) + ((LANES >> 4) << 3)) * LD + kk * 16 + ((LANES >> 3) & 1) * 8) * 2)
                        s[2 * np_] = mma(s[2 * np_], qf[kk], b[0], b[1])
                        s[2 * np_ + 1] = mma(s[2 * np_ + 1], qf[kk], b[2], b[3])
                kv0 = j * BN
                row0 = q0 + w * 16 + G
                need = (kv0 + BN > T_) or (causal and kv0 + BN - 1 > q0 + w * 16)
                if need:
                    for nt in range(BN // 8):
                        for e in range(4):
                            key = kv0 + nt * 8 + 2 * T4 + (e & 1)
                            row = row0 + (e >> 1) * 8
                            mask = (key >= T_) | (causal & (key > row))
                            s[nt][mask, e] = -np.inf
                for r in range(2):
                    mx = np.max(np.maximum(s[:, :, 2 * r], s[:, :, 2 * r + 1]), axis=0)
                    mx = np.maximum(mx, mx[LANES ^ 1]); mx = np.maximum(mx, mx[LANES ^ 2])
                    m_new = np.maximum(S_['m'][r], mx * sl2)
                    m_use = np.where(m_new == -np.inf, 0.0, m_new)
                    corr = np.exp2(S_['m'][r] - m_use)
                    S_['m'][r] = m_new
                    s[:, :, 2 * r] = np.exp2(s[:, :, 2 * r] * sl2 - m_use)
                    s[:, :, 2 * r + 1] = np.exp2(s[:, :, 2 * r + 1] * sl2 - m_use)
                    S_['l'][r] = S_['l'][r] * corr + (s[:, :, 2 * r] + s[:, :, 2 * r + 1]).sum(axis=0)
                    S_['o'][:, :, 2 * r] *= corr; S_['o'][:, :, 2 * r + 1] *= corr
                for kk in range(BN // 16):
                    pa = [pack(s[2 * kk][:, 0], s[2 * kk][:, 1]), pack(s[2 * kk][:, 2], s[2 * kk][:, 3]),
                          pack(s[2 * kk + 1][:, 0], s[2 * kk + 1][:, 1]), pack(s[2 * kk + 1][:, 2], s[2 * kk + 1][:, 3])]
                    for dp in range(D // 16):
                        b = sm.ldsm(svv + ((kk * 16 + (LANES & 7) + ((LANES >> 3) & 1) * 8) * LD + dp * 16 + (LANES >> 4) * 8) * 2, trans=True)
                        S_['o'][2 * dp] = mma(S_['o'][2 * dp], pa, b[0], b[1])
                        S_['o'][2 * dp + 1] = mma(S_['o'][2 * dp + 1], pa, b[2], b[3])
        for w in range(WARPS):
            S_ = st[w]
            row0 = q0 + w * 16 + G
            inv = []
            for r in range(2):
                sm_ = S_['l'][r].copy(); sm_ = sm_ + sm_[LANES ^ 1]; sm_ = sm_ + sm_[LANES ^ 2]
                inv.append(1 / sm_)
                row = row0 + r * 8
                for l in range(32):
                    if T4[l] == 0 and row[l] < T_:
                        lse[row[l]] = (S_['m'][r][l] + np.log2(sm_[l])) * np.log(2)
            so = sq + w * 16 * LD
            for dt in range(D // 8):
                col = dt * 8 + 2 * T4
                sm.st32(so + G * LD + col, pack(S_['o'][dt][:, 0] * inv[0], S_['o'][dt][:, 1] * inv[0]))
                sm.st32(so + (G + 8) * LD + col, pack(S_['o'][dt][:, 2] * inv[1], S_['o'][dt][:, 3] * inv[1]))
            # store rows
            chunks = D // 8
            for it in range(16 * chunks // 32):
                c = LANES + it * 32
                r = c // chunks; col = (c % chunks) * 8
                for l in range(32):
                    if q0 + w * 16 + r[l] < T_:
                        out[q0 + w * 16 + r[l], col[l]:col[l] + 8] = sm.a[so + r[l] * LD + col[l]: so + r[l] * LD + col[l] + 8]
    return out, lse

def bwd(q, k, v, o, lse, dout, causal, scale):
    T_, D = q.shape
    LD = D + PAD; TILE = BM * LD; LDS = BM + PAD
    sl2 = scale * LOG2E
    dot = (o * dout).sum(axis=1)
    dq_acc = np.zeros((T_, D))
    dk = np.full((T_, D), np.nan); dv = np.full((T_, D), np.nan)
    for bx in range((T_ + BN - 1) // BN):
        sm = Smem(6 * TILE + BN * LDS)
        sk = 0; sv = TILE; sq = 2 * TILE; sdo = 4 * TILE; sds = 6 * TILE
        sl = np.zeros((2, BM)); sd = np.zeros((2, BM))
        kv0 = bx * BN
        qt_begin = kv0 // BM if causal else 0
        qt_end = (T_ + BM - 1) // BM
        load_tile(sm, sk, k, kv0, BN, T_ - kv0, D)
        load_tile(sm, sv, v, kv0, BN, T_ - kv0, D)
        def stage_rows(stage, q0):
            load_tile(sm, sq + stage * TILE, q, q0, BM, T_ - q0, D)
            load_tile(sm, sdo + stage * TILE, dout, q0, BM, T_ - q0, D)
            for t in range(BM):
                qi = q0 + t
                sl[stage, t] = lse[qi] * LOG2E if qi < T_ else np.inf
                sd[stage, t] = dot[qi] if qi < T_ else 0.0
        stage_rows(0, qt_begin * BM)
        dka = [np.zeros((D // 8, 32, 4)) for _ in range(WARPS)]
        dva = [np.zeros((D // 8, 32, 4)) for _ in range(WARPS)]
        for qt in range(qt_begin, qt_end):
            stage = (qt - qt_begin) & 1
            q0 = qt * BM
            if qt + 1 < qt_end:
                stage_rows(stage ^ 1, q0 + BM)
            sqq = (sq + stage * TILE) * 2; sdoo = (sdo + stage * TILE) * 2
            for w in range(WARPS):
                kw = (sk + w * 16 * LD) * 2; vw = (sv + w * 16 * LD) * 2
                key0 = kv0 + w * 16 + G
                s = np.zeros((BM // 8, 32, 4))
                for kk in range(D // 16):
                    af = sm.ldsm(kw + ((LANES & 15) * LD + kk * 16 + (LANES >> 4) * 8) * 2)
                    for np_ in range(BM // 16):
                        b = sm.ldsm(sqq + ((np_ * 16 + (LANES & 7) + ((LANES >> 4) << 3)) * LD + kk * 16 + ((LANES >> 3) & 1) * 8) * 2)
                        s[2 * np_] = mma(s[2 * np_], af, b[0], b[1])
                        s[2 * np_ + 1] = mma(s[2 * np_ + 1], af, b[2], b[3])
                need = causal and (kv0 + w * 16 + 15 > q0)
                for nt in range(BM // 8):
                    ql = nt * 8 + 2 * T4
                    for e in range(4):
                        lq = sl[stage, ql + (e & 1)]
                        p = np.exp2(s[nt][:, e] * sl2 - lq)
                        if need:
                            p = np.where(key0 + (e >> 1) * 8 > q0 + ql + (e & 1), 0.0, p)
                        s[nt][:, e] = p
                for kk in range(BM // 16):
                    pa = [pack(s[2 * kk][:, 0], s[2 * kk][:, 1]), pack(s[2 * kk][:, 2], s[2 * kk][:, 3]),
                          pack(s[2 * kk + 1][:, 0], s[2 * kk + 1][:, 1]), pack(s[2 * kk + 1][:, 2], s[2 * kk + 1][:, 3])]
                    for dp in range(D // 16):
                        b = sm.ldsm(sdoo + ((kk * 16 + (LANES & 7) + ((LANES >> 3) & 1) * 8) * LD + dp * 16 + (LANES >> 4) * 8) * 2, trans=True)
                        dva[w][2 * dp] = mma(dva[w][2 * dp], pa, b[0], b[1])
                        dva[w][2 * dp + 1] = mma(dva[w][2 * dp + 1], pa, b[2], b[3])
                SPLIT = 4 if D == 128 else 2
                HT = BM // 8 // SPLIT
                for h in range(SPLIT):
                    dpv = np.zeros((HT, 32, 4))
                    for kk in range(D // 16):
                        af = sm.ldsm(vw + ((LANES & 15) * LD + kk * 16 + (LANES >> 4) * 8) * 2)
                        for np_ in range(HT // 2):
                            b = sm.ldsm(sdoo + (((h * HT // 2 + np_) * 16 + (LANES & 7) + ((LANES >> 4) << 3)) * LD + kk * 16 + ((LANES >> 3) & 1) * 8) * 2)
                            dpv[2 * np_] = mma(dpv[2 * np_], af, b[0], b[1])
                            dpv[2 * np_ + 1] = mma(dpv[2 * np_ + 1], af, b[2], b[3])
                    for i in range(HT):
                        nt = h * HT + i
                        i0 = nt * 8 + 2 * T4
                        dx = sd[stage, i0]; dy = sd[stage, i0 + 1]
                        s[nt][:, 0] *= dpv[i][:, 0] - dx
                        s[nt][:, 1] *= dpv[i][:, 1] - dy
                        s[nt][:, 2] *= dpv[i][:, 2] - dx
                        s[nt][:, 3] *= dpv[i][:, 3] - dy
                for kk in range(BM // 16):
                    pa = [pack(s[2 * kk][:, 0], s[2 * kk][:, 1]), pack(s[2 * kk][:, 2], s[2 * kk][:, 3]),
                          pack(s[2 * kk + 1][:, 0], s[2 * kk + 1][:, 1]), pack(s[2 * kk + 1][:, 2], s[2 * kk + 1][:, 3])]
                    wo = sds + (w * 16 + G) * LDS + kk * 16 + 2 * T4
                    sm.st32(wo, pa[0]); sm.st32(wo + 8 * LDS, pa[1]); sm.st32(wo + 8, pa[2]); sm.st32(wo + 8 * LDS + 8, pa[3])
                    for dp in range(D // 16):
                        b = sm.ldsm(sqq + ((kk * 16 + (LANES & 7) + ((LANES >> 3) & 1) * 8) * LD + dp * 16 + (LANES >> 4) * 8) * 2, trans=True)
                        dka[w][2 * dp] = mma(dka[w][2 * dp], pa, b[0], b[1])
                        dka[w][2 * dp + 1] = mma(dka[w][2 * dp + 1], pa, b[2], b[3])
            # sync; dQ phase
            for w in range(WARPS):
                dsa = [sm.ldsm(sds * 2 + ((kk * 16 + (LANES & 7) + (LANES >> 4) * 8) * LDS + w * 16 + ((LANES >> 3) & 1) * 8) * 2, trans=True) for kk in range(BN // 16)]
                qr = q0 + w * 16 + G
                for dc in range(D // 32):
                    c = np.zeros((4, 32, 4))
                    for kk in range(BN // 16):
                        for dp in range(2):
                            b = sm.ldsm(sk * 2 + ((kk * 16 + (LANES & 7) + ((LANES >> 3) & 1) * 8) * LD + dc * 32 + dp * 16 + (LANES >> 4) * 8) * 2, trans=True)
                            c[2 * dp] = mma(c[2 * dp], dsa[kk], b[0], b[1])
                            c[2 * dp + 1] = mma(c[2 * dp + 1], dsa[kk], b[2], b[3])
                    for nt in range(4):
                        col = dc * 32 + nt * 8 + 2 * T4
                        for l in range(32):
                            if qr[l] < T_:
                                dq_acc[qr[l], col[l]] += c[nt][l, 0]; dq_acc[qr[l], col[l] + 1] += c[nt][l, 1]
                            if qr[l] + 8 < T_:
                                dq_acc[qr[l] + 8, col[l]] += c[nt][l, 2]; dq_acc[qr[l] + 8, col[l] + 1] += c[nt][l, 3]
        for w in range(WARPS):
            skw = sk + w * 16 * LD; svw = sv + w * 16 * LD
            for dt in range(D // 8):
                col = dt * 8 + 2 * T4
                sm.st32(skw + G * LD + col, pack(dka[w][dt][:, 0] * scale, dka[w][dt][:, 1] * scale))
                sm.st32(skw + (G + 8) * LD + col, pack(dka[w][dt][:, 2] * scale, dka[w][dt][:, 3] * scale))
                sm.st32(svw + G * LD + col, pack(dva[w][dt][:, 0], dva[w][dt][:, 1]))
                sm.st32(svw + (G + 8) * LD + col, pack(dva[w][dt][:, 2], dva[w][dt][:, 3]))
            for r in range(16):
                row = kv0 + w * 16 + r
                if row < T_:
                    dk[row] = sm.a[skw + r * LD: skw + r * LD + D]
                    dv[row] = sm.a[svw + r * LD: svw + r * LD + D]
    return dq_acc * scale, dk, dv

def reference(q, k, v, dout, causal, scale):
    T_, D = q.shape
    s = q @ k.T * scale
    if causal:
        s = np.where(np.tril(np.ones((T_, T_), bool)), s, -np.inf)
    m = s.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(s - m).sum(axis=1, keepdims=True)))[:, 0]
    p = np.exp(s - lse[:, None])
    o = p @ v
    dp = dout @ v.T
    di = (dout * o).sum(axis=1, keepdims=True)
    ds = p * (dp - di) * scale
    return o, lse, ds @ k, ds.T @ q, p.T @ dout

rng = np.random.default_rng(0)
for (T_, D, causal) in [(int(a), int(b), c == 'c') for a, b, c in (x.split(':') for x in sys.argv[1:])]:
    q = rng.uniform(-1.5, 1.5, (T_, D)); k = rng.uniform(-1.5, 1.5, (T_, D))
    v = rng.uniform(-1, 1, (T_, D)); do = rng.uniform(-1, 1, (T_, D))
    scale = 1 / np.sqrt(D)
    o, lse = fwd(q, k, v, causal, scale)
    ro, rlse, rdq, rdk, rdv = reference(q, k, v, do, causal, scale)
    dq, dk, dv = bwd(q, k, v, o, lse, do, causal, scale)
    errs = {n: np.max(np.abs(a - b)) for n, a, b in [('o', o, ro), ('lse', lse, rlse), ('dq', dq, rdq), ('dk', dk, rdk), ('dv', dv, rdv)]}
    print(T_, D, causal, {n: f"{e:.2e}" for n, e in errs.items()}, flush=True)
