#!/usr/bin/env python3
"""CPU emulation of the Hopper matrix product (kernels/cuda/matmul_wgmma.cu), without a GPU.

It replays, in numpy, what the kernel and its wrapper (kernels/cuda/matmul_wgmma.rs) do with
addresses, and checks the result against A·B:

1. The host plan: each operand's TMA tensor map (sizes, byte strides, K-major or not), as
   `tma_operand` builds it, and the boxes the kernel asks for.
2. TMA writes: every box element at coordinates inside the tensor is read from global memory
   (the padding of the stored matrices holds NaN, so reading it fails), elements outside are
   zero-filled, and each lands in shared memory at its 128-byte row with the 128-byte swizzle
   applied (the 16-byte chunk index, address bits 4-6, XORed with the row within the 1024-byte
   atom, address bits 7-9).
3. wgmma reads: for every K step the kernel's descriptors (start address, LBO, SBO, swizzle
   mode 128B) are decoded the way the PTX ISA describes the canonical layouts
   ("Shared Memory Matrix Layout", "Canonical Layouts"):
       K-major,  128B: ((8,m),(T,2k)) : ((8T,SBO),(1,T))
       MN-major, 128B: ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO))
   in elements, T = 8 for 16-bit types, then Swizzle<3,4,3> on the byte address; the 64 × 16
   slab of A and the 16 × BN slab of B are gathered from shared memory at those addresses.
4. The accumulator fragment of wgmma .m64nNk16 (f32 D) as the PTX ISA gives it ("Register
   Fragments", Figure "WGMMA .m64nNk16 register fragment layout for accumulator matrix D"):
   thread of warp w, lane 4g + t, holds d[i] at row 16w + g + 8*((i//2)%2), column
   8*(i//4) + 2t + i%2.
5. The epilogue's indexing as the kernel writes it (pairs of columns, rows r and r + 8, bounds
   checks), into a NaN-poisoned C: every element must be written once and equal A·B.
6. The tile walk of the persistent grid (grouped rasterisation) must cover every tile once.
7. The mbarrier ring protocol (full/empty barriers, arrive/expect_tx, try_wait.parity with
   the kernel's phase bookkeeping, one wgmma group in flight) under random interleavings of
   the producer, the TMA completions and the 8 consumer warps: no slot is overwritten before
   every consumer warp has released it, every consumer reads the slice meant for it, and
   nothing deadlocks.

What it cannot check: that the hardware really behaves as the PTX ISA says (that needs a GPU:
tests/cuda_matmul_tc.rs), timing, and the driver's acceptance of the tensor maps.

Usage: python3 scripts/emulate_wgmma_layout.py [--quick]
"""

import random
import sys

import numpy as np

BM, BK = 128, 64
BOX_BYTES = 64 * BK * 2  # one {64, 64} box of 128-byte rows
TILES = {"128x128": (128, 6), "128x256": (256, 4)}  # BN, stages
GROUP_M = 8


# ------------------------------------------------------------------ host plan (matmul_wgmma.rs)

def tma_map_of(k_major, ptr, elem, inner, outer, ld, batch_stride, batch):
    if inner == 0 or outer == 0 or batch == 0 or ptr % 16:
        return None
    inner_bytes = inner * elem
    row_bytes = (-(-inner_bytes // 16) * 16) if outer == 1 else ld * elem
    if row_bytes % 16 or row_bytes < inner_bytes:
        return None
    matrix_bytes = row_bytes * outer
    batched = batch > 1 and batch_stride != 0
    if batched:
        batch_bytes = batch_stride * elem
        if batch_bytes % 16 or batch_bytes < matrix_bytes:
            return None
    else:
        batch_bytes = -(-matrix_bytes // 16) * 16
    dims = (inner, outer, batch if batched else 1)
    return dict(k_major=k_major, dims=dims, strides=(row_bytes, batch_bytes), batched=batched)


def tma_operand(ptr, elem, k, mn, k_stride, mn_stride, batch_stride, batch):
    op = None
    if k_stride == 1:
        op = tma_map_of(True, ptr, elem, k, mn, mn_stride, batch_stride, batch)
    if op is None and mn_stride == 1:
        op = tma_map_of(False, ptr, elem, mn, k, k_stride, batch_stride, batch)
    return op


# ------------------------------------------------------------------ global memory

class Stored:
    """A logical batch × rows × cols matrix stored like tests/cuda_matmul_tc.rs's `store`
    with padded leading dimensions: NaN padding, offset 8, 16-byte aligned."""

    def __init__(self, values, transposed, broadcast):
        batch, rows, cols = values.shape
        inner, outer = (rows, cols) if transposed else (cols, rows)
        ld = -(-inner // 8) * 8
        stored = 1 if broadcast else batch
        mat = outer * ld
        bs = -(-mat // 8) * 8 + 8
        self.offset = 8
        self.flat = np.full(self.offset + stored * bs, np.nan)
        for b in range(stored):
            for r in range(rows):
                for c in range(cols):
                    at = c * ld + r if transposed else r * ld + c
                    self.flat[self.offset + b * bs + at] = values[b, r, c]
        self.rs, self.cs = (1, ld) if transposed else (ld, 1)
        self.bs = 0 if broadcast else bs
        self.ptr = 0x7F0000000000 + 2 * self.offset  # 16-byte aligned device address


# ------------------------------------------------------------------ swizzle, TMA, descriptors

def swizzle128(addr):
    """Swizzle<3,4,3> on byte addresses: bits 4-6 ^= bits 7-9."""
    return addr ^ (((addr >> 7) & 7) << 4)


def tma_load(smem, dst, flat, base_elem, op, box_outer, c0, c1, c2):
    """cp.async.bulk.tensor.3d of a {64, box_outer, 1} box with SWIZZLE_128B to byte `dst`."""
    assert dst % 1024 == 0, "the kernel keeps every box on a 1024-byte boundary"
    d0, d1, d2 = op["dims"]
    s1, s2 = op["strides"]
    i0 = np.arange(64)[None, :]
    i1 = np.arange(box_outer)[:, None]
    x0, x1 = c0 + i0, c1 + i1
    inside = (x0 < d0) & (x1 < d1) & (c2 < d2) & (x0 >= 0) & (x1 >= 0)
    src = base_elem + x0 + x1 * (s1 // 2) + c2 * (s2 // 2)
    src = np.where(inside, src, 0)
    vals = np.where(inside, flat[src], 0.0)
    addr = swizzle128(dst + i1 * 128 + i0 * 2)
    smem[addr // 2] = vals
    return 64 * box_outer * 2  # bytes the transaction counts (the whole box)


def make_desc(addr, lbo, sbo):
    """sw128_desc of the kernel."""
    return ((addr & 0x3FFFF) >> 4) | (((lbo & 0x3FFFF) >> 4) << 16) | (((sbo & 0x3FFFF) >> 4) << 32) | (1 << 62)


def desc_fields(desc):
    start = (desc & 0x3FFF) << 4
    lbo = ((desc >> 16) & 0x3FFF) << 4
    sbo = ((desc >> 32) & 0x3FFF) << 4
    base_offset = (desc >> 49) & 7
    mode = (desc >> 62) & 3
    assert mode == 1 and base_offset == 0
    return start, lbo, sbo


def wgmma_read(smem, desc, trans, mn_size):
    """The mn_size × 16 operand slab (rows: M or N, columns: K) a wgmma reads through `desc`
    (trans = 0: K-major, 1: MN-major), 16-bit elements (T = 8)."""
    start, lbo, sbo = desc_fields(desc)
    x = np.arange(mn_size)[:, None]  # M or N index
    k = np.arange(16)[None, :]
    T = 8
    if trans == 0:  # ((8,m),(T,2k)) : ((8T,SBO),(1,T)) elements; SBO in bytes
        elem_off = (x % 8) * 8 * T + (k % T) + (k // T) * T
        byte = start + elem_off * 2 + (x // 8) * sbo
    else:  # ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO))
        elem_off = (x % T) + ((x // T) % 8) * T + (k % 8) * 8 * T
        byte = start + elem_off * 2 + (x // 64) * lbo + (k // 8) * sbo
    return smem[swizzle128(byte) // 2]


# ------------------------------------------------------------------ tile walk (wg_tile)

def wg_tile(tiles_m, tiles_n, t):
    per_batch = tiles_m * tiles_n
    batch = t // per_batch
    pid = t - batch * per_batch
    per_group = GROUP_M * tiles_n
    group = pid // per_group
    first_m = group * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    in_group = pid - group * per_group
    return batch, first_m + in_group % group_rows, in_group // group_rows


# ------------------------------------------------------------------ one product

def fragment_row_col(warp, lane, i):
    """PTX ISA accumulator layout of wgmma .m64nNk16 (f32): register i of a thread."""
    g, t = lane >> 2, lane & 3
    return 16 * warp + g + 8 * ((i // 2) % 2), 8 * (i // 4) + 2 * t + (i % 2)


def emulate(tile_name, m, n, k, batch, a_t, b_t, b_broadcast, grid, rng):
    bn, stages = TILES[tile_name]
    a_vals = rng.integers(-3, 4, size=(batch, m, k)).astype(np.float64)
    b_vals = rng.integers(-3, 4, size=(1 if b_broadcast else batch, k, n)).astype(np.float64)
    A = Stored(a_vals, a_t, False)
    B = Stored(b_vals, b_t, b_broadcast)
    a_op = tma_operand(A.ptr, 2, k, m, A.cs, A.rs, A.bs, batch)
    b_op = tma_operand(B.ptr, 2, k, n, B.rs, B.cs, B.bs, batch)
    assert a_op is not None and b_op is not None, "padded operands must be TMA-eligible"
    assert a_op["k_major"] == (not a_t) and b_op["k_major"] == b_t
    a_box = BM if a_op["k_major"] else 64
    b_box = bn if b_op["k_major"] else 64

    a_bytes, b_bytes = BM * BK * 2, bn * BK * 2
    stage_bytes = a_bytes + b_bytes
    raw = 0x460  # where dynamic shared memory happens to start (after the static barriers)
    base = (raw + 1023) & ~1023
    smem = np.full((base + stages * stage_bytes) // 2, np.nan)

    tiles_m, tiles_n = -(-m // BM), -(-n // bn)
    total = tiles_m * tiles_n * batch
    kt_count = -(-k // BK)
    C = np.full((batch, m, n), np.nan)
    writes = np.zeros((batch, m, n), dtype=np.int64)
    seen = []
    a_lbo, b_lbo = (16 if a_op["k_major"] else BOX_BYTES), (16 if b_op["k_major"] else BOX_BYTES)
    a_kstep, b_kstep = (32 if a_op["k_major"] else 16 * 128), (32 if b_op["k_major"] else 16 * 128)

    for bid in range(grid):
        stage = 0
        for t in range(bid, total, grid):
            bz, tm, tn = wg_tile(tiles_m, tiles_n, t)
            seen.append(t)
            m0, n0 = tm * BM, tn * bn
            za = bz if a_op["batched"] else 0
            zb = bz if b_op["batched"] else 0
            acc = [np.zeros((64, bn)) for _ in range(2)]
            for kt in range(kt_count):
                k0 = kt * BK
                sa = base + stage * stage_bytes
                sb = sa + a_bytes
                tx = 0
                # Producer (tid 0): the kernel's TMA calls.
                if a_op["k_major"]:
                    tx += tma_load(smem, sa, A.flat, A.offset, a_op, a_box, k0, m0, za)
                else:
                    for j in range(BM // 64):
                        tx += tma_load(smem, sa + j * BOX_BYTES, A.flat, A.offset, a_op, a_box, m0 + 64 * j, k0, za)
                if b_op["k_major"]:
                    tx += tma_load(smem, sb, B.flat, B.offset, b_op, b_box, k0, n0, zb)
                else:
                    for j in range(bn // 64):
                        tx += tma_load(smem, sb + j * BOX_BYTES, B.flat, B.offset, b_op, b_box, n0 + 64 * j, k0, zb)
                assert tx == stage_bytes, "expect_tx must equal the bytes the boxes deliver"
                # Consumers: 4 wgmma per slice through the descriptors.
                for cw in range(2):
                    ca = base + stage * stage_bytes + cw * BOX_BYTES
                    cb = base + stage * stage_bytes + a_bytes
                    for kk in range(BK // 16):
                        da = make_desc(ca + kk * a_kstep, a_lbo, 1024)
                        db = make_desc(cb + kk * b_kstep, b_lbo, 1024)
                        a_slab = wgmma_read(smem, da, 0 if a_op["k_major"] else 1, 64)  # 64 × 16
                        b_slab = wgmma_read(smem, db, 0 if b_op["k_major"] else 1, bn)  # bn × 16
                        assert not np.isnan(a_slab).any() and not np.isnan(b_slab).any(), "read unwritten smem"
                        # The slab must be exactly rows m0+64cw.., k k0+16kk.. of A (zero outside).
                        want_a = np.zeros((64, 16))
                        r_hi, k_lo = min(m, m0 + 64 * cw + 64), k0 + 16 * kk
                        if m0 + 64 * cw < m and k_lo < k:
                            want_a[: r_hi - m0 - 64 * cw, : min(16, k - k_lo)] = a_vals[
                                bz, m0 + 64 * cw : r_hi, k_lo : min(k, k_lo + 16)
                            ]
                        assert np.array_equal(a_slab, want_a), f"A slab mismatch at tile {t} kt {kt} kk {kk} cw {cw}"
                        acc[cw] += a_slab @ b_slab.T
                stage = (stage + 1) % stages
            # Epilogue: registers per the PTX fragment layout, stored with the kernel's indexing.
            for cw in range(2):
                row0, col0 = m0 + 64 * cw, n0
                for warp in range(4):
                    for lane in range(32):
                        regs = np.empty(bn // 2)
                        for i in range(bn // 2):
                            r, c = fragment_row_col(warp, lane, i)
                            regs[i] = acc[cw][r, c]
                        g, tt = lane >> 2, lane & 3
                        r = row0 + 16 * warp + g
                        for j in range(bn // 8):
                            c = col0 + 8 * j + 2 * tt
                            for rr, v0, v1 in ((r, regs[4 * j], regs[4 * j + 1]), (r + 8, regs[4 * j + 2], regs[4 * j + 3])):
                                if rr >= m or c >= n:
                                    continue
                                C[bz, rr, c] = v0
                                writes[bz, rr, c] += 1
                                if c + 1 < n:
                                    C[bz, rr, c + 1] = v1
                                    writes[bz, rr, c + 1] += 1
    assert sorted(seen) == list(range(total)), "the persistent walk must visit every tile once"
    want = np.einsum("bik,bkj->bij", a_vals, np.broadcast_to(b_vals, (batch, k, n)))
    assert (writes == 1).all(), f"elements written {writes.min()}..{writes.max()} times"
    assert np.array_equal(C, want), "C differs from A·B"


# ------------------------------------------------------------------ the mbarrier ring protocol

class MBarrier:
    """mbarrier phase semantics: a phase completes when its pending arrivals reach zero and its
    transaction count is zero; try_wait.parity(p) succeeds once the phase of parity p is over,
    i.e. while the current phase's parity differs from p."""

    def __init__(self, count):
        self.count = count
        self.pending = count
        self.tx = 0
        self.phase = 0

    def _maybe_complete(self):
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.count

    def arrive(self, expect_tx=0):
        self.tx += expect_tx
        self.pending -= 1
        assert self.pending >= 0
        self._maybe_complete()

    def complete_tx(self, nbytes):
        self.tx -= nbytes
        assert self.tx >= 0
        self._maybe_complete()

    def try_wait_parity(self, parity):
        return (self.phase & 1) != parity


def protocol(stages, tiles, kt_count, seed):
    rnd = random.Random(seed)
    full = [MBarrier(1) for _ in range(stages)]
    empty = [MBarrier(8) for _ in range(stages)]
    slot_data = [None] * stages  # which (tile, kt) a slot holds once its TMA has landed
    readers = [set() for _ in range(stages)]  # consumer warps that may still read the slot
    inflight = []  # (slot, label, bytes) TMA loads not yet landed
    uses = [(t, kt) for t in range(tiles) for kt in range(kt_count)]

    def producer():
        stage = phase = 0
        for label in uses:
            while not empty[stage].try_wait_parity(phase ^ 1):
                yield
            assert not readers[stage], "a slot is refilled while a consumer warp may still read it"
            full[stage].arrive(expect_tx=2)
            inflight.append((stage, label, 1))
            inflight.append((stage, label, 1))  # two boxes
            stage += 1
            if stage == stages:
                stage, phase = 0, phase ^ 1
            yield

    def consumer(w):
        stage = phase = 0
        pending = []  # committed wgmma groups: slots they read
        for t in range(tiles):
            prev = None
            for kt in range(kt_count):
                while not full[stage].try_wait_parity(phase):
                    yield
                assert slot_data[stage] == (t, kt), f"warp {w} reads {slot_data[stage]} for {(t, kt)}"
                readers[stage].add(w)
                pending.append(stage)
                yield
                # wgmma.wait_group 1: all but the newest group may complete (at a random time).
                while len(pending) > 1:
                    readers[pending.pop(0)].discard(w)
                    yield
                if kt > 0:
                    empty[prev].arrive()
                prev = stage
                stage += 1
                if stage == stages:
                    stage, phase = 0, phase ^ 1
            while pending:  # wait_group 0
                readers[pending.pop(0)].discard(w)
            if kt_count > 0:
                empty[prev].arrive()
            yield

    def tma_engine():
        while True:
            if inflight and rnd.random() < 0.5:
                i = rnd.randrange(len(inflight))
                stage, label, nbytes = inflight.pop(i)
                slot_data[stage] = label
                full[stage].complete_tx(nbytes)
            yield

    actors = [producer()] + [consumer(w) for w in range(8)]
    engine = tma_engine()
    done = [False] * len(actors)
    for _ in range(2_000_000):
        if all(done):
            return
        i = rnd.randrange(len(actors) + 1)
        if i == len(actors):
            next(engine)
        elif not done[i]:
            try:
                next(actors[i])
            except StopIteration:
                done[i] = True
    raise AssertionError("deadlock: the ring made no progress")


def main():
    quick = "--quick" in sys.argv
    rng = np.random.default_rng(7)
    shapes = [
        (1, 1, 1, 1, 1),
        (7, 1, 33, 1, 3),
        (1, 100, 7, 1, 2),
        (33, 100, 7, 2, 4),
        (129, 255, 64, 3, 5),
        (130, 300, 257, 2, 3),
        (257, 520, 128, 1, 7),
    ]
    if quick:
        shapes = shapes[:4] + [(130, 300, 257, 2, 3)]
    cases = 0
    for tile_name in TILES:
        for (m, n, k, batch, grid) in shapes:
            for a_t in (False, True):
                for b_t in (False, True):
                    emulate(tile_name, m, n, k, batch, a_t, b_t, batch > 1 and (m + n) % 2 == 0, grid, rng)
                    cases += 1
    print(f"layout emulation: {cases} products (2 tiles × 4 layouts × {len(shapes)} shapes) match A·B")
    runs = 0
    for stages in (4, 6):
        for tiles, kt in ((1, 1), (1, 9), (3, 5), (4, 1), (2, 13)):
            for seed in range(3 if quick else 10):
                protocol(stages, tiles, kt, seed * 101 + stages)
                runs += 1
    print(f"ring protocol: {runs} random interleavings, no early refill, no wrong slice, no deadlock")
    print(f"{cases + runs} passed, 0 failed")


if __name__ == "__main__":
    main()
