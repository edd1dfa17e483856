# CPU emulation of kernels/cuda/flash_attention_hopper.cu (the Hopper flash attention forward), to
# check its data movement and fragment indexing without a GPU. It models, from the PTX ISA:
#   - TMA tile loads (cp.async.bulk.tensor.3d, box {64 cols, 128 rows, 1 head}, 128-byte swizzle:
#     byte address bits [4:6] ^= bits [7:9]), zero fill outside the tensor, completing transaction
#     bytes on an mbarrier at some later, random moment;
#   - mbarriers (arrival counts, expect_tx byte counts, phases, try_wait.parity) with the producer
#     and the two consumer warpgroups run as coroutines by a random scheduler, so a wait on the
#     wrong parity deadlocks or reads stale data, and a stage released too early gets overwritten;
#   - wgmma.mma_async m64nNk16 reading shared memory through 64-bit descriptors (start address,
#     leading/stride byte offsets, 128B swizzle; K-major and MN-major canonical layouts), A from
#     registers in the documented fragment layout, the f32 accumulator fragment layout
#     (row 16·warp + lane/4 (+8), column 8·(i/4) + 2·(lane%4) + i%2); operands are read both at
#     issue and at the wait, and must agree (nothing overwrote them in flight);
#   - the kernel's online softmax (base 2, quad shuffles), masking, P packing, O rescaling, the
#     epilogue through the swizzled Q rows and the bounds-checked 16-byte stores.
# Every index formula below is the kernel's; the reference is a plain softmax attention in f64.
#
#   .venv-hf/bin/python scripts/emulate_flash_attention_hopper.py            # the default shapes
#   .venv-hf/bin/python scripts/emulate_flash_attention_hopper.py 300:128:c 17:64:n --round bf16
#
# With --round bf16|f16, P and O are rounded to the storage type as the kernel rounds them (the
# error is then the storage type's); without it, values stay f64 and the check is exact to 1e-9.
import argparse
import sys

import numpy as np

BM = BN = 128  # FH_BM, FH_BN
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
THREADS_WG = 128


def round_to(x, kind):
    if kind is None:
        return x
    f = np.asarray(x, dtype=np.float32)
    if kind == "f16":
        return f.astype(np.float16).astype(np.float64)
    bits = f.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest even
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def swz128(addr):
    """The 128-byte swizzle on shared-memory byte addresses."""
    return addr ^ (((addr >> 7) & 7) << 4)


class Smem:
    def __init__(self, nbytes):
        self.v = np.full(nbytes // 2, np.nan)  # one 16-bit element per 2 bytes

    def read(self, byte_addr):
        assert np.all(byte_addr % 2 == 0)
        return self.v[byte_addr // 2]

    def write(self, byte_addr, values):
        self.v[byte_addr // 2] = values


class Barrier:
    def __init__(self, name, count):
        self.name, self.count = name, count
        self.pending, self.tx, self.completed = count, 0, 0

    def _maybe_complete(self):
        if self.pending == 0 and self.tx == 0:
            self.completed += 1
            self.pending = self.count

    def arrive(self, n=1):
        assert self.pending >= n, f"{self.name}: too many arrivals"
        self.pending -= n
        self._maybe_complete()

    def expect_tx(self, nbytes):  # mbarrier.arrive.expect_tx: tx first, then the arrival
        self.tx += nbytes
        self.arrive()

    def complete_tx(self, nbytes):
        self.tx -= nbytes
        assert self.tx >= 0, f"{self.name}: more bytes than expected"
        self._maybe_complete()

    def ready(self, parity):  # try_wait.parity: the phase of this parity has completed
        return (self.completed & 1) != parity


def desc(addr, lbo, sbo):
    """The kernel's fh_desc: start, LBO, SBO (all >> 4), swizzle mode 1 (128B)."""
    return ((addr & 0x3FFFF) >> 4) | ((lbo >> 4) << 16) | ((sbo >> 4) << 32) | (1 << 62)


def desc_fields(d):
    assert (d >> 62) == 1, "128B swizzle"
    assert ((d >> 49) & 7) == 0, "base offset 0"
    return (d & 0x3FFF) << 4, ((d >> 16) & 0x3FFF) << 4, ((d >> 32) & 0x3FFF) << 4


def operand_kmajor(sm, d, rows):
    """rows×16 operand, K-major canonical ((8,m),(T,2k)):((8T,SBO),(1,T)), 128B swizzle."""
    start, _lbo, sbo = desc_fields(d)
    r = np.arange(rows)[:, None]
    k = np.arange(16)[None, :]
    addr = start + (r // 8) * sbo + (r % 8) * 128 + k * 2
    return sm.read(swz128(addr))


def operand_mnmajor(sm, d, n):
    """16×n operand (K rows, N columns), MN-major canonical ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO))."""
    start, lbo, sbo = desc_fields(d)
    k = np.arange(16)[:, None]
    c = np.arange(n)[None, :]
    addr = start + (c // 64) * lbo + (c % 64) * 2 + (k % 8) * 128 + (k // 8) * sbo
    return sm.read(swz128(addr))


# Fragment index maps over the 128 threads of a warpgroup.
T_ = np.arange(THREADS_WG)
WARP, LANE = T_ >> 5, T_ & 31
G, T4 = LANE >> 2, LANE & 3


def acc_rc(n):
    """Row and column of accumulator register i of each thread: arrays [128, n/2]."""
    i = np.arange(n // 2)[None, :]
    row = 16 * WARP[:, None] + G[:, None] + 8 * ((i >> 1) & 1)
    col = 8 * (i >> 2) + 2 * T4[:, None] + (i & 1)
    return row, col


def to_frag(mat):
    row, col = acc_rc(mat.shape[1])
    return mat[row, col]


def from_frag(frag, n):
    row, col = acc_rc(n)
    m = np.full((64, n), np.nan)
    m[row, col] = frag
    assert not np.isnan(m).any()
    return m


def a_from_regs(p):
    """A[64×16] from register fragments p[128 threads][4 regs][2 halves] (the m16n8k16 A layout per warp)."""
    a = np.full((64, 16), np.nan)
    hits = np.zeros((64, 16), int)
    for j in range(4):
        for h in range(2):
            row = 16 * WARP + G + 8 * (j & 1)
            col = 2 * T4 + h + 8 * (j >> 1)
            a[row, col] = p[:, j, h]
            np.add.at(hits, (row, col), 1)
    assert np.all(hits == 1), "register A fragment does not cover the 64×16 tile once"
    return a


class Kernel:
    """One launch: grid of CTAs run one after another; inside a CTA, coroutines."""

    def __init__(self, q, k, v, causal, scale, rounding, rng):
        self.q, self.k, self.v = q, k, v  # [bh, seq, D]
        self.bh, self.seq, self.D = q.shape
        self.causal, self.scale, self.rounding, self.rng = causal, scale, rounding, rng
        self.out = np.full(q.shape, np.nan)
        self.lse = np.full(q.shape[:2], np.nan)

    # ---------------------------------------------------------------- one CTA
    def run_cta(self, block):
        D, seq = self.D, self.seq
        SUB_Q, SUB_KV = BM * 128, BN * 128
        Q_BYTES, KV_BYTES = SUB_Q * (D // 64), SUB_KV * (D // 64)
        raw = 0x410  # some dynamic shared memory start; the kernel rounds it up to 1024
        base = (raw + 1023) & ~1023
        sq, sk = base, base + Q_BYTES
        sv = sk + 2 * KV_BYTES
        self.sm = Smem(sv + 2 * KV_BYTES + 64)
        bh = block % self.bh
        n_q = (seq + BM - 1) // BM
        q0 = (n_q - 1 - block // self.bh) * BM
        kv_end = min(seq, q0 + BM) if self.causal else seq
        n_tiles = (kv_end + BN - 1) // BN
        self.bars = {"q_full": Barrier("q_full", 1)}
        for s in range(2):
            self.bars[f"k_full{s}"] = Barrier(f"k_full{s}", 1)
            self.bars[f"v_full{s}"] = Barrier(f"v_full{s}", 1)
            self.bars[f"kv_empty{s}"] = Barrier(f"kv_empty{s}", 8)
        self.tma_pending = []
        geo = dict(SUB_Q=SUB_Q, SUB_KV=SUB_KV, Q_BYTES=Q_BYTES, KV_BYTES=KV_BYTES, sq=sq, sk=sk, sv=sv,
                   bh=bh, q0=q0, n_tiles=n_tiles)
        procs = [self.producer(geo), self.consumer(geo, 0), self.consumer(geo, 1)]
        waiting = [None] * 3  # (barrier, parity) each coroutine waits on
        done = [False] * 3
        while not all(done):
            # TMA loads land at random moments.
            while self.tma_pending and self.rng.random() < 0.5:
                self.tma_pending.pop(self.rng.integers(len(self.tma_pending)))()
            runnable = [i for i in range(3) if not done[i] and (waiting[i] is None or waiting[i][0].ready(waiting[i][1]))]
            if not runnable:
                if self.tma_pending:
                    self.tma_pending.pop(0)()
                    continue
                raise RuntimeError(f"deadlock in block {block}: {[(w[0].name, w[1]) if w else None for w in waiting]}")
            i = runnable[self.rng.integers(len(runnable))]
            try:
                waiting[i] = next(procs[i])
            except StopIteration:
                done[i] = True
        assert not self.tma_pending

    def tma_load(self, dst, src, c0, c1, c2, bar):
        """Box {64, 128, 1} at (c0, c1, c2) of the [bh, seq, D] tensor, written swizzled at dst."""
        def land():
            r = np.arange(128)[:, None]
            c = np.arange(64)[None, :]
            rows = c1 + r
            vals = np.where(rows < self.seq, src[c2, np.minimum(rows, self.seq - 1), c0 + c], 0.0)
            addr = dst + r * 128 + c * 2  # the box row by row, 128-byte rows
            assert dst % 1024 == 0, "128B-swizzled TMA destinations must be 1024-byte aligned"
            self.sm.write(swz128(addr), vals)
            bar.complete_tx(128 * 64 * 2)
        self.tma_pending.append(land)

    # ---------------------------------------------------------------- producer warpgroup
    def producer(self, g):
        D = self.D
        b = self.bars
        b["q_full"].expect_tx(g["Q_BYTES"])
        for h in range(D // 64):
            self.tma_load(g["sq"] + h * g["SUB_Q"], self.q, h * 64, g["q0"], g["bh"], b["q_full"])
        for j in range(g["n_tiles"]):
            st, ph = j & 1, (j >> 1) & 1
            yield (b[f"kv_empty{st}"], ph ^ 1)
            kdst, vdst = g["sk"] + st * g["KV_BYTES"], g["sv"] + st * g["KV_BYTES"]
            b[f"k_full{st}"].expect_tx(g["KV_BYTES"])
            for h in range(D // 64):
                self.tma_load(kdst + h * g["SUB_KV"], self.k, h * 64, j * BN, g["bh"], b[f"k_full{st}"])
            b[f"v_full{st}"].expect_tx(g["KV_BYTES"])
            for h in range(D // 64):
                self.tma_load(vdst + h * g["SUB_KV"], self.v, h * 64, j * BN, g["bh"], b[f"v_full{st}"])

    # ---------------------------------------------------------------- consumer warpgroup
    def consumer(self, g, cw):
        D, seq, sm, b = self.D, self.seq, self.sm, self.bars
        SUB_Q, SUB_KV, KV_BYTES = g["SUB_Q"], g["SUB_KV"], g["KV_BYTES"]
        row_base = g["q0"] + 64 * cw
        row0 = row_base + 16 * WARP + G  # [128]
        sl2 = self.scale * LOG2E
        sq_wg = g["sq"] + 64 * cw * 128
        o = np.zeros((THREADS_WG, D // 2))
        m = np.full((THREADS_WG, 2), -np.inf)
        l = np.zeros((THREADS_WG, 2))
        inflight = []  # (recompute-function, snapshot) of issued, not yet waited wgmma groups

        def issue_qk(st):
            def compute():
                acc = np.zeros((64, BN))
                for kk in range(D // 16):
                    off = (kk >> 2) * SUB_Q + (kk & 3) * 32
                    offk = (kk >> 2) * SUB_KV + (kk & 3) * 32
                    a = operand_kmajor(sm, desc(sq_wg + off, 16, 1024), 64)
                    bt = operand_kmajor(sm, desc(g["sk"] + st * KV_BYTES + offk, 16, 1024), BN)  # [N, K]
                    assert not np.isnan(a).any() and not np.isnan(bt).any(), "S wgmma reads unwritten smem"
                    acc = a @ bt.T + (acc if kk > 0 else 0.0)  # scale_d = kk > 0
                return to_frag(acc)
            inflight.append(("s", compute, compute()))

        def issue_pv(st, p, o_in):
            def compute():
                vb = g["sv"] + st * KV_BYTES
                acc = from_frag(o_in, D)
                for kk in range(BN // 16):
                    a = a_from_regs(p[:, kk])
                    bm = operand_mnmajor(sm, desc(vb + kk * 16 * 128, SUB_KV, 1024), D)  # [K, N]
                    assert not np.isnan(bm).any(), "P·V wgmma reads unwritten smem"
                    acc = acc + a @ bm
                return to_frag(acc)
            inflight.append(("o", compute, compute()))

        def wait(n):
            """wgmma.wait_group n: all but the n most recent groups complete; operands re-read now."""
            results = {}
            while len(inflight) > n:
                name, compute, snap = inflight.pop(0)
                again = compute()
                assert np.array_equal(again, snap), f"{name} wgmma operands changed while in flight"
                results[name] = snap
            return results

        def softmax(s, kv0):
            s = s.copy()
            if kv0 + BN > seq or (self.causal and kv0 + BN - 1 > row_base):
                i = np.arange(BN // 2)[None, :]
                key = kv0 + (i >> 2) * 8 + 2 * T4[:, None] + (i & 1)
                row = row0[:, None] + ((i >> 1) & 1) * 8
                s[(key >= seq) | (self.causal & (key > row))] = -np.inf
            corr = np.zeros((THREADS_WG, 2))
            for r in range(2):
                cols = [4 * n8 + 2 * r + e for n8 in range(BN // 8) for e in range(2)]
                mx = s[:, cols].max(axis=1)
                mx = np.maximum(mx, mx[T_ ^ 1])
                mx = np.maximum(mx, mx[T_ ^ 2])
                m_new = np.maximum(m[:, r], mx * sl2)
                m_use = np.where(m_new == -np.inf, 0.0, m_new)
                corr[:, r] = np.exp2(m[:, r] - m_use)
                m[:, r] = m_new
                s[:, cols] = np.exp2(s[:, cols] * sl2 - m_use[:, None])
                l[:, r] = l[:, r] * corr[:, r] + s[:, cols].sum(axis=1)
            return s, corr

        def pack(s):
            p = np.zeros((THREADS_WG, BN // 16, 4, 2))
            for kk in range(BN // 16):
                for j in range(4):
                    p[:, kk, j, 0] = round_to(s[:, 8 * kk + 2 * j], self.rounding)
                    p[:, kk, j, 1] = round_to(s[:, 8 * kk + 2 * j + 1], self.rounding)
            return p

        n_tiles = g["n_tiles"]
        yield (b["q_full"], 0)
        yield (b["k_full0"], 0)
        issue_qk(0)
        yield None
        s = wait(0)["s"]
        s, _ = softmax(s, 0)
        p = pack(s)
        for j in range(1, n_tiles):
            st, pst = j & 1, (j & 1) ^ 1
            yield (b[f"k_full{st}"], (j >> 1) & 1)
            yield (b[f"v_full{pst}"], ((j - 1) >> 1) & 1)
            issue_qk(st)
            issue_pv(pst, p, o)
            yield None  # both products in flight: the producer and the other warpgroup run
            s = wait(1)["s"]
            s, corr = softmax(s, j * BN)
            yield None  # let the others run while P·V is in flight
            o = wait(0)["o"]
            b[f"kv_empty{pst}"].arrive(4)  # lane 0 of each of the 4 warps
            o = o * corr[:, ((np.arange(D // 2) >> 1) & 1)]
            p = pack(s)
        st = (n_tiles - 1) & 1
        yield (b[f"v_full{st}"], ((n_tiles - 1) >> 1) & 1)
        issue_pv(st, p, o)
        yield None
        o = wait(0)["o"]

        # Epilogue: normalise, log-sum-exp, stage through the swizzled Q rows, 16-byte stores.
        inv = np.zeros((THREADS_WG, 2))
        for r in range(2):
            tot = l[:, r].copy()
            tot = tot + tot[T_ ^ 1]
            tot = tot + tot[T_ ^ 2]
            inv[:, r] = 1.0 / tot
            row = row0 + 8 * r
            ok = (T4 == 0) & (row < seq)
            self.lse[g["bh"], row[ok]] = (m[ok, r] + np.log2(tot[ok])) * LN2
        yield None  # fh_wg_sync: the other warpgroup may still be reading its own Q rows
        for n8 in range(D // 8):
            sub = sq_wg + (n8 >> 3) * SUB_Q
            within = 2 * T4 * 2
            for r in range(2):
                rl = 16 * WARP + G + 8 * r
                addr = sub + rl * 128 + (((n8 & 7) ^ (rl & 7)) << 4) + within
                # the kernel's explicit XOR is the TMA swizzle of the plain address
                assert np.array_equal(addr, swz128(sub + rl * 128 + (n8 & 7) * 16 + within))
                sm.write(addr, round_to(o[:, 4 * n8 + 2 * r] * inv[:, r], self.rounding))
                sm.write(addr + 2, round_to(o[:, 4 * n8 + 2 * r + 1] * inv[:, r], self.rounding))
        yield None
        chunks = D // 8
        for it in range(64 * chunks // 128):
            c = T_ + it * 128
            rl, ch = c // chunks, c % chunks
            row = row_base + rl
            addr = sq_wg + (ch >> 3) * SUB_Q + rl * 128 + (((ch & 7) ^ (rl & 7)) << 4)
            vals = sm.read(addr[:, None] + 2 * np.arange(8)[None, :])
            ok = row < seq
            for t in np.nonzero(ok)[0]:
                self.out[g["bh"], row[t], ch[t] * 8: ch[t] * 8 + 8] = vals[t]

    def run(self):
        n_q = (self.seq + BM - 1) // BM
        for block in range(n_q * self.bh):
            self.run_cta(block)
        return self.out, self.lse


def reference(q, k, v, causal, scale):
    s = np.einsum("hid,hjd->hij", q, k) * scale
    if causal:
        t = q.shape[1]
        s = np.where(np.tril(np.ones((t, t), bool))[None], s, -np.inf)
    mx = s.max(axis=2, keepdims=True)
    lse = (mx + np.log(np.exp(s - mx).sum(axis=2, keepdims=True)))[..., 0]
    return np.einsum("hij,hjd->hid", np.exp(s - lse[..., None]), v), lse


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("shapes", nargs="*", help="seq:head_dim:c|n (causal or not)")
    ap.add_argument("--round", choices=["bf16", "f16"], default=None)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    shapes = args.shapes or [f"{t}:{d}:{c}" for t in (1, 17, 128, 129, 300) for d in (64, 128) for c in "cn"] + \
        ["511:128:c", "640:64:n"]
    rng = np.random.default_rng(args.seed)
    worst = 0.0
    for spec in shapes:
        t, d, c = spec.split(":")
        t, d, causal = int(t), int(d), c == "c"
        rq = lambda *s: round_to(rng.uniform(-1.5, 1.5, s), args.round)
        q, k = rq(args.heads, t, d), rq(args.heads, t, d)
        v = round_to(rng.uniform(-1, 1, (args.heads, t, d)), args.round)
        scale = 1 / np.sqrt(d)
        out, lse = Kernel(q, k, v, causal, scale, args.round, rng).run()
        assert not np.isnan(out).any(), f"{spec}: output element never written"
        assert not np.isnan(lse).any(), f"{spec}: lse element never written"
        ro, rl = reference(q, k, v, causal, scale)
        eo, el = np.abs(out - ro).max(), np.abs(lse - rl).max()
        worst = max(worst, eo, el) if args.round is None else worst
        print(f"seq {t:5d} d {d:3d} causal {causal!s:5}: max |out err| {eo:.2e}  max |lse err| {el:.2e}", flush=True)
        tol = 1e-9 if args.round is None else (3e-2 if args.round == "bf16" else 4e-3)
        if eo > tol or el > 1e-9 + (0 if args.round is None else 1e-5):
            sys.exit(f"FAILED {spec}")
    print("all shapes match the reference")


if __name__ == "__main__":
    main()
