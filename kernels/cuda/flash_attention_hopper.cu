// Flash attention for Hopper (sm_90a), forward and backward: wgmma, TMA and warp specialisation,
// through inline PTX only. The forward saves the log-sum-exp in the layout and units of
// `flash_attention.cu`, so either backward takes it; the backward (below the forward) runs
// between that file's pre-pass and dQ kernels.
//
// Memory contract (that of `flash_attention.cu`): q, k, v and out are [batch, heads, seq, D]
// operands with their own batch, head and row strides (FlashDims's layouts; D contiguous), D = 64
// or 128, element type bf16 or f16, 16-byte aligned rows; lse is dense [bh, seq] f32, the natural
// log-sum-exp of the scaled scores of each query row. q, k and v are read only through TMA tensor
// maps built on the host (4-D: {D, seq, heads, batch} with the operand's strides, box
// {64, 128, 1, 1}, 128-byte swizzle), so rows at or beyond seq come in as zeros and never cross
// into the next head. Query rows at or beyond seq are never stored.
//
// One CTA = 3 warpgroups (384 threads) and 128 query rows of one (b, h); a one-dimensional grid of
// tiles × bh, the heaviest causal tiles first (as in the portable kernel).
//  - Warpgroup 0 is the producer. It gives most of its registers away (setmaxnreg.dec to 24) and
//    one thread issues the TMA loads: Q once, then K and V tiles of 128 keys into a 2-stage ring.
//    Each stage has three mbarriers: K full, V full (the loads' transaction bytes complete them)
//    and empty (the 8 consumer warps arrive when their last wgmma reading the stage is done).
//  - Warpgroups 1 and 2 are consumers (setmaxnreg.inc to 240), 64 query rows each. Per key tile j:
//    S_j = Q·K_jᵀ with wgmma m64n128k16 (A and B from shared memory, K-major, 128B-swizzle
//    descriptors), issued before O += P_{j-1}·V_{j-1} (wgmma m64nDk16 with P in registers, the
//    register-A form, and V from shared memory through an MN-major descriptor), so that the
//    softmax of tile j overlaps the P·V product of tile j-1. The online softmax runs in f32 in
//    base 2 (scale·log2e folded into one FMA), masks only where needed (the causal diagonal tile
//    and the ragged last tile), and key tiles wholly above the diagonal are never loaded. P is
//    rounded to bf16/f16 straight from the S accumulators into A fragments (the wgmma accumulator
//    layout per warp is that of mma.m16n8, the register-A layout that of mma.m16n8k16's A).
//  - At the end O is divided by the row sum, staged through the warpgroup's own rows of the Q
//    tile (in the same 128B-swizzled order, free of bank conflicts) and stored with 16-byte
//    stores, rows beyond seq skipped; the log-sum-exp goes to lse.
//
// Shared memory: Q 128×D, two stages of K and V 128×D each, all bf16/f16 in 64-column sub-tiles
// of 128-byte rows (the TMA box), 1024-byte aligned: 160 KiB at D = 128, 80 KiB at D = 64, plus
// the barriers and 1 KiB of alignment slack.
//
// Registers (ptxas, sm_90a): 168 at launch (384 threads, one block per SM), up to 199 (D = 128) /
// 158 (D = 64) in the consumers after setmaxnreg; no spills, and no "wgmma serialized" advisory:
// every tile's waits are unconditional (tile 0 is peeled) and P is repacked only after the P·V
// that reads it has completed.
//
// Not yet run on a GPU (see docs/cuda.md): the NVRTC gate compiles it for sm_90a with no spills,
// and kernels/tests/host_emulation.rs runs it on the CPU (TMA, mbarriers and wgmma emulated)
// against an f64 attention.

#define FH_BM 128  // query rows per CTA (two consumer warpgroups of 64)
#define FH_BN 128  // keys per tile
#define FH_THREADS 384
#define FH_PRODUCER_REGS 24
#define FH_CONSUMER_REGS 240
#define FH_LOG2E 1.4426950408889634f
#define FH_LN2 0.6931471805599453f

// FlashDims, FaLayout and fa_head are in common.cuh (shared with flash_attention.cu).

// The driver's CUtensorMap: 128 opaque bytes, passed by value as a __grid_constant__ parameter.
struct __align__(64) FhTensorMap {
    unsigned long long opaque[16];
};

// ------------------------------------------------------------------ PTX helpers
// (the mbarrier, TMA, setmaxnreg and wgmma wrappers are in hopper.cuh, prepended to this file;
// smem_u32 and pack2 are in common.cuh)

#ifndef POLYLM_HOST_EMULATION
// Barrier over the 128 threads of one consumer warpgroup (ids 1 and 2; 0 is __syncthreads).
__device__ __forceinline__ void fh_wg_sync(int id) {
    asm volatile("bar.sync %0, 128;" ::"r"(id) : "memory");
}

__device__ __forceinline__ void fh_st_shared32(u32 addr, u32 v) {
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ uint4 fh_ld_shared128(u32 addr) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr)
                 : "memory");
    return v;
}

// Makes `v` unknown to the optimiser from here on (it cannot hoist what depends on it).
__device__ __forceinline__ void fh_opaque(u32& v) { asm volatile("" : "+r"(v)); }

__device__ __forceinline__ float fh_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// fence_regs (hopper.cuh) for the packed P fragments.
template <int N> __device__ __forceinline__ void fence_regs(u32 (&r)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(r[i][0]), "+r"(r[i][1]), "+r"(r[i][2]), "+r"(r[i][3])::"memory");
}
#else
// Host emulation (kernels/emu/emu_hopper.hpp): the same helpers on the emulated machine.
__device__ __forceinline__ void fh_wg_sync(int id) { emu::named_barrier(id, 128); }
__device__ __forceinline__ void fh_st_shared32(u32 addr, u32 v) { std::memcpy(emu::local(addr), &v, 4); }
__device__ __forceinline__ uint4 fh_ld_shared128(u32 addr) {
    uint4 v;
    std::memcpy(&v, emu::local(addr), 16);
    return v;
}
__device__ __forceinline__ float fh_exp2(float x) { return exp2f(x); }
__device__ __forceinline__ void fh_opaque(u32&) {}
template <int N> __device__ __forceinline__ void fence_regs(u32 (&)[N][4]) {}
#endif

// S[64×128] (+)= A·B with A (64×16) and B (16×128, stored as 128 rows of K) both K-major in shared
// memory; scale_d = 0 overwrites S (the first K step).
template <class T> __device__ __forceinline__ void fh_wgmma_ss_n128(float (&d)[64], u64 da, u64 db, int scale_d);
template <> __device__ __forceinline__ void fh_wgmma_ss_n128<bf16>(float (&d)[64], u64 da, u64 db, int scale_d) {
    wgmma_ss_m64n128k16_bf16<0, 0>(d, da, db, scale_d);
}
template <> __device__ __forceinline__ void fh_wgmma_ss_n128<f16>(float (&d)[64], u64 da, u64 db, int scale_d) {
    wgmma_ss_m64n128k16_f16<0, 0>(d, da, db, scale_d);
}

// O[64×D] += P·V with P (64×16) in registers and V (16×D) MN-major in shared memory.
template <class T, int D> struct FhPv;
template <> struct FhPv<bf16, 64> {
    static __device__ __forceinline__ void mma(float (&o)[32], const u32 (&a)[4], u64 db) { wgmma_rs_m64n64k16_bf16(o, a, db); }
};
template <> struct FhPv<f16, 64> {
    static __device__ __forceinline__ void mma(float (&o)[32], const u32 (&a)[4], u64 db) { wgmma_rs_m64n64k16_f16(o, a, db); }
};
template <> struct FhPv<bf16, 128> {
    static __device__ __forceinline__ void mma(float (&o)[64], const u32 (&a)[4], u64 db) { wgmma_rs_m64n128k16_bf16(o, a, db); }
};
template <> struct FhPv<f16, 128> {
    static __device__ __forceinline__ void mma(float (&o)[64], const u32 (&a)[4], u64 db) { wgmma_rs_m64n128k16_f16(o, a, db); }
};

// ------------------------------------------------------------------ online softmax

// One key tile's softmax step for this thread's two rows (row0, row0 + 8) in the accumulator
// layout (s[4·n8 + 2·r + e]: row row0 + 8·r, key kv0 + 8·n8 + 2·t4 + e): masks keys beyond the
// sequence and (causal) after the query where any can occur, updates the running maximum m (base
// 2, scaled) and this thread's partial row sums l, and writes
// the probabilities P = 2^(s·scale·log2e − m) over s. Returns the factors by which O must be rescaled.
__device__ __forceinline__ float2 fh_softmax(float (&s)[FH_BN / 2], float (&m)[2], float (&l)[2], int kv0, int seq,
                                             int causal, int row_base, int row0, int t4, float sl2) {
    if (kv0 + FH_BN > seq || (causal && kv0 + FH_BN - 1 > row_base)) {
#pragma unroll
        for (int i = 0; i < FH_BN / 2; i++) {
            const int key = kv0 + (i >> 2) * 8 + 2 * t4 + (i & 1);
            const int row = row0 + ((i >> 1) & 1) * 8;
            if (key >= seq || (causal && key > row)) s[i] = -POLY_INF;
        }
    }
    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float mx = -POLY_INF;
#pragma unroll
        for (int n8 = 0; n8 < FH_BN / 8; n8++) mx = fmaxf(mx, fmaxf(s[4 * n8 + 2 * r], s[4 * n8 + 2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[r], mx * sl2);
        const float m_use = m_new == -POLY_INF ? 0.0f : m_new;  // a row with no key yet
        corr[r] = fh_exp2(m[r] - m_use);
        m[r] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int n8 = 0; n8 < FH_BN / 8; n8++) {
            s[4 * n8 + 2 * r] = fh_exp2(fmaf(s[4 * n8 + 2 * r], sl2, -m_use));
            s[4 * n8 + 2 * r + 1] = fh_exp2(fmaf(s[4 * n8 + 2 * r + 1], sl2, -m_use));
            sum += s[4 * n8 + 2 * r] + s[4 * n8 + 2 * r + 1];
        }
        l[r] = l[r] * corr[r] + sum;  // this thread's columns only; reduced over the quad at the end
    }
    return make_float2(corr[0], corr[1]);
}

// P rounded to the storage type as wgmma A fragments of 16 keys each: {row g, keys 2t4, 2t4+1},
// {row g+8, same keys}, {row g, keys 8+2t4, 9+2t4}, {row g+8, same keys}.
template <class T>
__device__ __forceinline__ void fh_pack_p(const float (&s)[FH_BN / 2], u32 (&p)[FH_BN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < FH_BN / 16; kk++) {
        p[kk][0] = pack2<T>(s[8 * kk + 0], s[8 * kk + 1]);
        p[kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
        p[kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
        p[kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
    }
}

// ------------------------------------------------------------------ forward

template <class T, int D>
__device__ __forceinline__ void flash_fwd_hopper(FlashDims a, const FhTensorMap* map_q, const FhTensorMap* map_k, const FhTensorMap* map_v, T* __restrict__ out,
                                                 float* __restrict__ lse) {
    constexpr u32 SUB_Q = FH_BM * 128;    // bytes of one 64-column sub-tile of Q (128-byte rows)
    constexpr u32 SUB_KV = FH_BN * 128;   // ... of K or V
    constexpr u32 Q_BYTES = SUB_Q * (D / 64);
    constexpr u32 KV_BYTES = SUB_KV * (D / 64);
    static_assert(FH_BM == 128 && FH_BN == 128, "two consumer warpgroups of 64 rows, 128-key tiles");

    extern __shared__ __align__(1024) unsigned char fh_raw[];
    const u32 base = (smem_u32(fh_raw) + 1023u) & ~1023u;  // the 128B swizzle repeats every 1024 bytes
    const u32 sq = base, sk = base + Q_BYTES, sv = sk + 2 * KV_BYTES;
    const u32 bars = sv + 2 * KV_BYTES;
    const u32 q_full = bars;                // + 8·stage for the three per-stage barriers:
    const u32 k_full = bars + 8, v_full = bars + 24, kv_empty = bars + 40;

    const int tid = threadIdx.x;
    const int wg = tid >> 7;
    const int T_ = a.seq;
    const int bh = blockIdx.x % a.bh;
    const int hb = bh / a.heads, hh = bh - hb * a.heads;  // TMA coordinates: batch, head
    const int n_q = (T_ + FH_BM - 1) / FH_BM;
    const int q0 = (n_q - 1 - (int)(blockIdx.x / a.bh)) * FH_BM;  // heaviest causal tiles first
    const int kv_end = a.causal ? min(T_, q0 + FH_BM) : T_;
    const int n_tiles = (kv_end + FH_BN - 1) / FH_BN;

    if (tid == 0) {
        mbar_init(q_full, 1);
#pragma unroll
        for (int s = 0; s < 2; s++) {
            mbar_init(k_full + 8 * s, 1);
            mbar_init(v_full + 8 * s, 1);
            mbar_init(kv_empty + 8 * s, 8);  // one arrival per consumer warp
        }
        mbar_fence_init();
    }
    __syncthreads();

    if (wg == 0) {
        // ---------------- producer: one thread issues every TMA load
        setmaxnreg_dec<FH_PRODUCER_REGS>();
        if (tid == 0) {
            tma_prefetch_map(map_q);
            tma_prefetch_map(map_k);
            tma_prefetch_map(map_v);
            mbar_arrive_expect_tx(q_full, Q_BYTES);
#pragma unroll
            for (int h = 0; h < D / 64; h++) tma_load_4d(sq + h * SUB_Q, map_q, q_full, h * 64, q0, hh, hb);
            for (int j = 0; j < n_tiles; j++) {
                const int st = j & 1;
                const u32 ph = (u32)(j >> 1) & 1u;
                mbar_wait(kv_empty + 8 * st, ph ^ 1u);  // a fresh barrier's "previous" phase counts as done
                const u32 kdst = sk + st * KV_BYTES, vdst = sv + st * KV_BYTES;
                mbar_arrive_expect_tx(k_full + 8 * st, KV_BYTES);
#pragma unroll
                for (int h = 0; h < D / 64; h++)
                    tma_load_4d(kdst + h * SUB_KV, map_k, k_full + 8 * st, h * 64, j * FH_BN, hh, hb);
                mbar_arrive_expect_tx(v_full + 8 * st, KV_BYTES);
#pragma unroll
                for (int h = 0; h < D / 64; h++)
                    tma_load_4d(vdst + h * SUB_KV, map_v, v_full + 8 * st, h * 64, j * FH_BN, hh, hb);
            }
        }
        return;
    }

    // ---------------- consumers: warpgroup cw owns query rows q0 + 64·cw .. + 63
    setmaxnreg_inc<FH_CONSUMER_REGS>();
    const int cw = wg - 1;
    const int warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int row_base = q0 + 64 * cw;
    const int row0 = row_base + 16 * warp + g;  // this thread's rows: row0 and row0 + 8
    const float sl2 = a.scale * FH_LOG2E;
    const u32 sq_wg = sq + 64 * cw * 128;        // this warpgroup's 64 rows of every Q sub-tile

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.0f;
    float s[FH_BN / 2];
    u32 p[FH_BN / 16][4];
#pragma unroll
    for (int i = 0; i < FH_BN / 2; i++) s[i] = 0.0f;  // defined before the register fences read them
#pragma unroll
    for (int i = 0; i < FH_BN / 16; i++) p[i][0] = p[i][1] = p[i][2] = p[i][3] = 0u;
    float m[2] = {-POLY_INF, -POLY_INF}, l[2] = {0.0f, 0.0f};

    // S_j = Q·K_jᵀ into s: D/16 steps of 16 along the head dimension, 32 bytes each inside a
    // 128-byte swizzled row (sub-tile kk / 4).
    auto issue_qk = [&](int st) {
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            const u32 off = (kk >> 2) * SUB_Q + (kk & 3) * 32;
            const u32 offk = (kk >> 2) * SUB_KV + (kk & 3) * 32;
            fh_wgmma_ss_n128<T>(s, sw128_desc(sq_wg + off, 16, 1024), sw128_desc(sk + st * KV_BYTES + offk, 16, 1024), kk > 0);
        }
        wgmma_commit();
    };
    // O += P·V_j: BN/16 steps of 16 keys (2048 bytes of V each), N = D in 64-column blocks SUB_KV apart.
    auto issue_pv = [&](int st) {
        const u32 vb = sv + st * KV_BYTES;
#pragma unroll
        for (int kk = 0; kk < FH_BN / 16; kk++) FhPv<T, D>::mma(o, p[kk], sw128_desc(vb + kk * 16 * 128, SUB_KV, 1024));
        wgmma_commit();
    };
    auto fence_all = [&]() {
        fence_regs(s);
        fence_regs(p);
        fence_regs(o);
        wgmma_fence();
    };

    // Tile 0 (every tile wait is unconditional, so ptxas can prove which wgmma is in flight).
    mbar_wait(q_full, 0);
    mbar_wait(k_full, 0);
    fence_all();
    issue_qk(0);
    wgmma_wait<0>();
    fence_regs(s);
    fh_softmax(s, m, l, 0, T_, a.causal, row_base, row0, t4, sl2);  // O is still zero: no rescale
    fh_pack_p<T>(s, p);
    for (int j = 1; j < n_tiles; j++) {
        const int st = j & 1, pst = st ^ 1;
        mbar_wait(k_full + 8 * st, (u32)(j >> 1) & 1u);
        mbar_wait(v_full + 8 * pst, (u32)((j - 1) >> 1) & 1u);
        fence_all();
        issue_qk(st);   // S_j ...
        issue_pv(pst);  // ... and O += P_{j-1}·V_{j-1}, in flight during this tile's softmax
        wgmma_wait<1>();
        fence_regs(s);
        const float2 corr = fh_softmax(s, m, l, j * FH_BN, T_, a.causal, row_base, row0, t4, sl2);
        wgmma_wait<0>();  // P_{j-1}·V_{j-1} done: p and o may be touched again
        fence_regs(o);
        __syncwarp();
        if (lane == 0) mbar_arrive(kv_empty + 8 * pst);  // stage j-1 (K and V) is free
#pragma unroll
        for (int i = 0; i < D / 2; i++) o[i] *= ((i >> 1) & 1) ? corr.y : corr.x;
        fh_pack_p<T>(s, p);
    }
    {
        const int st = (n_tiles - 1) & 1;
        mbar_wait(v_full + 8 * st, (u32)((n_tiles - 1) >> 1) & 1u);
        fence_all();
        issue_pv(st);
        wgmma_wait<0>();
        fence_regs(o);
    }

    // Normalise; the log-sum-exp in natural-log units, as the portable kernel writes it.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        inv[r] = 1.0f / sum;
        const int row = row0 + r * 8;
        if (t4 == 0 && row < T_) lse[(i64)bh * T_ + row] = (m[r] + log2f(sum)) * FH_LN2;
    }

    // Stage O in this warpgroup's rows of the Q tile (same swizzled order: chunk c of row r sits at
    // chunk c ^ (r & 7)), then 16-byte stores of whole rows.
    fh_wg_sync(1 + cw);  // every warp's wgmmas (the Q reads) are done
#pragma unroll
    for (int n8 = 0; n8 < D / 8; n8++) {
        const u32 sub = sq_wg + (n8 >> 3) * SUB_Q;
        const u32 within = (u32)(2 * t4) * 2;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int rl = 16 * warp + g + 8 * r;  // row within the warpgroup
            const u32 addr = sub + rl * 128 + ((u32)((n8 & 7) ^ (rl & 7)) << 4) + within;
            fh_st_shared32(addr, pack2<T>(o[4 * n8 + 2 * r] * inv[r], o[4 * n8 + 2 * r + 1] * inv[r]));
        }
    }
    fh_wg_sync(1 + cw);
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    const int wtid = tid & 127;
    T* out_h = out + fa_head(a.o, bh, a.heads);
#pragma unroll
    for (int it = 0; it < 64 * CHUNKS / 128; it++) {
        const int c = wtid + it * 128;
        const int rl = c / CHUNKS, ch = c % CHUNKS;
        const int row = row_base + rl;
        const uint4 v = fh_ld_shared128(sq_wg + (ch >> 3) * SUB_Q + rl * 128 + ((u32)((ch & 7) ^ (rl & 7)) << 4));
        if (row < T_) *reinterpret_cast<uint4*>(out_h + (i64)row * a.o.row + ch * 8) = v;
    }
}

// ------------------------------------------------------------------ backward
//
// `flash_bwd_hopper_*` replaces the portable `flash_bwd_*` between the same pre-pass
// (`flash_bwd_prep_*`: row dots D = rowsum(dO∘O), dq_acc zeroed) and the same final
// `flash_bwd_dq_*` (dQ = scale·dq_acc) of flash_attention.cu, with the same arguments except that
// q, k, v and dout come through tensor maps ({D, seq, bh}; boxes of 64 columns × 128 rows for K
// and V, × 64 rows for Q and dO; 128-byte swizzle).
//
// One CTA = 3 warpgroups and 128 keys of one (b, h); a one-dimensional grid of key blocks × bh,
// key block 0 (the most query tiles when causal) first. Warpgroup 0 is the producer: one thread
// loads K and V once, then Q and dO tiles of 64 queries into a 2-stage ring (full: the loads'
// transaction bytes; empty: the 8 consumer warps). Warpgroups 1 and 2 are consumers of 64 keys
// each, with dK and dV in f32 registers. Per query tile (only those at or below the diagonal when
// causal), each consumer warpgroup:
//   Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ    wgmma m64n64k16 (two m64n32k16 halves at head dim 128, to
//                                 keep the registers in budget), both operands K-major;
//   Pᵀ = 2^(Sᵀ·scale·log2e − lse·log2e), zero where masked (causal, keys or queries past seq);
//   dSᵀ = Pᵀ∘(dPᵀ − D);
//   dV += Pᵀ·dO, dK += dSᵀ·Q      wgmma m64nDk16, A (Pᵀ, dSᵀ) from registers, B MN-major;
//   dSᵀ → shared memory (its 64 key rows of a 128 × 64 tile, 128-byte swizzled), then
//   dQ_part = dS·K over its 64 keys, wgmma m64n64k16 with A M-major (the dSᵀ rows) and B
//   N-major (K), 64 columns at a time, added into dq_acc with f32 atomics.
// At the end dK·scale and dV are stored in the storage type (rows past seq skipped).

#define FHB_BM 64   // queries per tile
#define FHB_BN 128  // keys per CTA: two consumer warpgroups of 64

// D[64×N] (+)= A·B, N = 32 or 64, both operands K-major in shared memory (the backward's Sᵀ
// and dPᵀ over N queries).
template <class T, int N> struct FhSsK;
template <> struct FhSsK<bf16, 32> {
    static __device__ __forceinline__ void mma(float (&d)[16], u64 da, u64 db, int scale_d) {
        wgmma_ss_m64n32k16_bf16<0, 0>(d, da, db, scale_d);
    }
};
template <> struct FhSsK<f16, 32> {
    static __device__ __forceinline__ void mma(float (&d)[16], u64 da, u64 db, int scale_d) {
        wgmma_ss_m64n32k16_f16<0, 0>(d, da, db, scale_d);
    }
};
template <> struct FhSsK<bf16, 64> {
    static __device__ __forceinline__ void mma(float (&d)[32], u64 da, u64 db, int scale_d) {
        wgmma_ss_m64n64k16_bf16<0, 0>(d, da, db, scale_d);
    }
};
template <> struct FhSsK<f16, 64> {
    static __device__ __forceinline__ void mma(float (&d)[32], u64 da, u64 db, int scale_d) {
        wgmma_ss_m64n64k16_f16<0, 0>(d, da, db, scale_d);
    }
};

// D[64×64] (+)= A·B, both operands in shared memory (TA / TB: M- / N-major).
template <class T> struct FhSs64;
template <> struct FhSs64<bf16> {
    template <int TA, int TB>
    static __device__ __forceinline__ void mma(float (&d)[32], u64 da, u64 db, int scale_d) {
        wgmma_ss_m64n64k16_bf16<TA, TB>(d, da, db, scale_d);
    }
};
template <> struct FhSs64<f16> {
    template <int TA, int TB>
    static __device__ __forceinline__ void mma(float (&d)[32], u64 da, u64 db, int scale_d) {
        wgmma_ss_m64n64k16_f16<TA, TB>(d, da, db, scale_d);
    }
};

template <class T, int D>
__device__ __forceinline__ void flash_bwd_hopper(FlashDims a, const FhTensorMap* map_q, const FhTensorMap* map_k,
                                                 const FhTensorMap* map_v, const FhTensorMap* map_do,
                                                 const float* __restrict__ lse, const float* __restrict__ dot,
                                                 float* __restrict__ dq_acc, T* __restrict__ dk, T* __restrict__ dv) {
    constexpr u32 SUB_KV = FHB_BN * 128;  // one 64-column sub-tile of K or V: 128 rows of 128 bytes
    constexpr u32 SUB_Q = FHB_BM * 128;   // ... of Q or dO: 64 rows
    constexpr u32 KV_BYTES = SUB_KV * (D / 64);
    constexpr u32 Q_BYTES = SUB_Q * (D / 64);
    constexpr u32 DS_BYTES = FHB_BN * 128;  // dSᵀ: 128 key rows of 64 queries

    extern __shared__ __align__(1024) unsigned char fh_raw[];
    const u32 base = (smem_u32(fh_raw) + 1023u) & ~1023u;
    const u32 sk = base, sv = sk + KV_BYTES, sq = sv + KV_BYTES;  // Q and dO: 2 stages each
    const u32 sdo = sq + 2 * Q_BYTES, sds = sdo + 2 * Q_BYTES;
    const u32 bars = sds + DS_BYTES;
    const u32 kv_full = bars, q_full = bars + 8, q_empty = bars + 24;  // + 8·stage

    const int tid = threadIdx.x;
    const int wg = tid >> 7;
    const int T_ = a.seq;
    const int bh = blockIdx.x % a.bh;
    const int hb = bh / a.heads, hh = bh - hb * a.heads;  // TMA coordinates: batch, head
    const int kv0 = (int)(blockIdx.x / a.bh) * FHB_BN;
    const int qt_begin = a.causal ? kv0 / FHB_BM : 0;
    const int qt_end = (T_ + FHB_BM - 1) / FHB_BM;

    if (tid == 0) {
        mbar_init(kv_full, 1);
#pragma unroll
        for (int st = 0; st < 2; st++) {
            mbar_init(q_full + 8 * st, 1);
            mbar_init(q_empty + 8 * st, 8);  // one arrival per consumer warp
        }
        mbar_fence_init();
    }
    __syncthreads();

    if (wg == 0) {
        // ---------------- producer: one thread issues every TMA load
        setmaxnreg_dec<FH_PRODUCER_REGS>();
        if (tid == 0) {
            tma_prefetch_map(map_q);
            tma_prefetch_map(map_k);
            tma_prefetch_map(map_v);
            tma_prefetch_map(map_do);
            mbar_arrive_expect_tx(kv_full, 2 * KV_BYTES);
#pragma unroll
            for (int h = 0; h < D / 64; h++) {
                tma_load_4d(sk + h * SUB_KV, map_k, kv_full, h * 64, kv0, hh, hb);
                tma_load_4d(sv + h * SUB_KV, map_v, kv_full, h * 64, kv0, hh, hb);
            }
            for (int i = qt_begin; i < qt_end; i++) {
                const int n = i - qt_begin, st = n & 1;
                mbar_wait(q_empty + 8 * st, ((u32)(n >> 1) & 1u) ^ 1u);  // a fresh barrier's "previous" phase is done
                const u32 full = q_full + 8 * st;
                mbar_arrive_expect_tx(full, 2 * Q_BYTES);
#pragma unroll
                for (int h = 0; h < D / 64; h++) {
                    tma_load_4d(sq + st * Q_BYTES + h * SUB_Q, map_q, full, h * 64, i * FHB_BM, hh, hb);
                    tma_load_4d(sdo + st * Q_BYTES + h * SUB_Q, map_do, full, h * 64, i * FHB_BM, hh, hb);
                }
            }
        }
        return;
    }

    // ---------------- consumers: warpgroup cw owns keys kv0 + 64·cw .. + 63
    setmaxnreg_inc<FH_CONSUMER_REGS>();
    const int cw = wg - 1;
    const int warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int key0 = kv0 + 64 * cw + 16 * warp + g;  // this thread's keys: key0 and key0 + 8
    const float sl2 = a.scale * FH_LOG2E;
    const u32 sk_wg = sk + 64 * cw * 128, sv_wg = sv + 64 * cw * 128;  // this warpgroup's key rows
    const u32 sds_wg = sds + 64 * cw * 128;
    const float* lse_h = lse + (i64)bh * T_;
    const float* dot_h = dot + (i64)bh * T_;

    float dka[D / 2], dva[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) dka[i] = dva[i] = 0.0f;
    mbar_wait(kv_full, 0);

    for (int i = qt_begin; i < qt_end; i++) {
        const int n = i - qt_begin, st = n & 1;
        const int q0 = i * FHB_BM;
        mbar_wait(q_full + 8 * st, (u32)(n >> 1) & 1u);
        const u32 sq_s = sq + st * Q_BYTES, sdo_s = sdo + st * Q_BYTES;

        // Once every warp's dQ product of the previous tile (which read the dSᵀ rows) is done.
        fh_wg_sync(1 + cw);
        // This thread's dSᵀ row (rows key0 and key0 + 8, both swizzled by g) and column offset,
        // made opaque per tile so that the compiler recomputes the 16 store addresses below
        // instead of keeping (and spilling) them across the loop.
        u32 ds_row = sds_wg + (16 * warp + g) * 128 + 4 * t4, ds_swz = (u32)g;
        fh_opaque(ds_row);
        fh_opaque(ds_swz);
        // The tile's 64 queries at once at head dim 64; at 128, in two halves of QH = 32, so that
        // only 16 + 16 f32 scores are live beside the 128 dK, dV accumulators.
        constexpr int QH = D == 128 ? 32 : 64;
#pragma unroll
        for (int hq = 0; hq < FHB_BM / QH; hq++) {
            // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ over the head dimension (32 bytes of a 128-byte row per
            // step), B the half's 32 query rows (4096 bytes in).
            float s[QH / 2], dp[QH / 2];
#pragma unroll
            for (int j = 0; j < QH / 2; j++) s[j] = dp[j] = 0.0f;
            fence_regs(s);
            fence_regs(dp);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                const u32 ok = (kk >> 2) * SUB_KV + (kk & 3) * 32;
                const u32 oq = hq * QH * 128 + (kk >> 2) * SUB_Q + (kk & 3) * 32;
                FhSsK<T, QH>::mma(s, sw128_desc(sk_wg + ok, 16, 1024), sw128_desc(sq_s + oq, 16, 1024), kk > 0);
                FhSsK<T, QH>::mma(dp, sw128_desc(sv_wg + ok, 16, 1024), sw128_desc(sdo_s + oq, 16, 1024), kk > 0);
            }
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(s);
            fence_regs(dp);

            // Pᵀ and dSᵀ in the accumulator layout (s[4j + e] is key key0 + 8·(e / 2), query
            // q0 + QH·hq + 8j + 2·t4 + (e % 2)), packed right away as register-A fragments of 16
            // queries (as fh_pack_p).
            u32 pf[QH / 16][4], dsf[QH / 16][4];
#pragma unroll
            for (int j = 0; j < QH / 8; j++) {
                const int qa = q0 + QH * hq + 8 * j + 2 * t4;
                float l2[2], dd[2];
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const bool inside = qa + e < T_;
                    l2[e] = inside ? lse_h[qa + e] * FH_LOG2E : POLY_INF;  // queries past seq: P = 0
                    dd[e] = inside ? dot_h[qa + e] : 0.0f;
                }
                float p[4], ds[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = key0 + 8 * (e >> 1), q = qa + (e & 1);
                    const bool live = key < T_ && (!a.causal || key <= q);
                    p[e] = live ? fh_exp2(fmaf(s[4 * j + e], sl2, -l2[e & 1])) : 0.0f;
                    ds[e] = p[e] * (dp[4 * j + e] - dd[e & 1]);
                }
                // Fragment registers (j & 1)·2 + r of step j / 2 hold rows key0 + 8r.
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    pf[j >> 1][(j & 1) * 2 + r] = pack2<T>(p[2 * r], p[2 * r + 1]);
                    dsf[j >> 1][(j & 1) * 2 + r] = pack2<T>(ds[2 * r], ds[2 * r + 1]);
                }
            }

            // dSᵀ to this warpgroup's 64 rows of the shared tile (row = key, 64 queries as 8
            // swizzled 16-byte chunks; this part fills chunks QH/8·hq ..).
#pragma unroll
            for (int j = 0; j < QH / 8; j++) {
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const u32 addr = ds_row + r * 8 * 128 + (((u32)(QH / 8 * hq + j) ^ ds_swz) << 4);
                    fh_st_shared32(addr, dsf[j >> 1][(j & 1) * 2 + r]);
                }
            }

            // dV += Pᵀ·dO and dK += dSᵀ·Q: 16 queries (2048 bytes of 128-byte rows) per step, B
            // N-major over the head dimension (LBO: the next 64-column sub-tile).
            fence_regs(pf);
            fence_regs(dsf);
            fence_regs(dva);
            fence_regs(dka);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < QH / 16; kk++) {
                const u32 oq = hq * QH * 128 + kk * 2048;
                FhPv<T, D>::mma(dva, pf[kk], sw128_desc(sdo_s + oq, SUB_Q, 1024));
                FhPv<T, D>::mma(dka, dsf[kk], sw128_desc(sq_s + oq, SUB_Q, 1024));
            }
            wgmma_commit();
            wgmma_wait<0>();  // the P and dS fragments may be reused
            fence_regs(dva);
            fence_regs(dka);
        }
        fence_proxy_async();
        fh_wg_sync(1 + cw);  // every warp's dSᵀ rows are written

        // dQ (unscaled) += dS·K over this warpgroup's 64 keys, 64 head columns at a time: A is
        // the dSᵀ rows read M-major, B the K rows read N-major (skipped, products and adds,
        // under a benchmark's FA_PROBE_NO_DQ).
#pragma unroll
        for (int hf = 0; hf < ((a.probe & FA_PROBE_NO_DQ) ? 0 : D / 64); hf++) {
            float dq[32];
#pragma unroll
            for (int j = 0; j < 32; j++) dq[j] = 0.0f;
            fence_regs(dq);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
                FhSs64<T>::template mma<1, 1>(dq, sw128_desc(sds_wg + kk * 2048, DS_BYTES, 1024),
                                              sw128_desc(sk_wg + hf * SUB_KV + kk * 2048, SUB_KV, 1024), kk > 0);
            wgmma_commit();
            wgmma_wait<0>();
            fence_regs(dq);
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int q = q0 + 16 * warp + g + 8 * r;
                if (q >= T_) continue;
                float* row = dq_acc + ((i64)bh * T_ + q) * D + hf * 64 + 2 * t4;
#pragma unroll
                for (int j = 0; j < 8; j++) atomic_add_f32x2(row + 8 * j, dq[4 * j + 2 * r], dq[4 * j + 2 * r + 1]);
            }
        }
        // Every wgmma reading this stage of Q and dO has completed: release it.
        __syncwarp();
        if (lane == 0) mbar_arrive(q_empty + 8 * st);
    }

    // dK = scale·Σ dSᵀ·Q, dV = Σ Pᵀ·dO, stored row by row (keys past seq skipped).
    T* dk_h = dk + fa_head(a.dk, bh, a.heads);
    T* dv_h = dv + fa_head(a.dv, bh, a.heads);
#pragma unroll
    for (int j = 0; j < D / 8; j++) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int key = key0 + 8 * r;
            if (key >= T_) continue;
            const int col = 8 * j + 2 * t4;
            *reinterpret_cast<u32*>(dk_h + (i64)key * a.dk.row + col) =
                pack2<T>(dka[4 * j + 2 * r] * a.scale, dka[4 * j + 2 * r + 1] * a.scale);
            *reinterpret_cast<u32*>(dv_h + (i64)key * a.dv.row + col) = pack2<T>(dva[4 * j + 2 * r], dva[4 * j + 2 * r + 1]);
        }
    }
}

// ------------------------------------------------------------------ entry points

#define FLASH_HOPPER(T, S, D)                                                                              \
    extern "C" __global__ void __launch_bounds__(FH_THREADS, 1) flash_fwd_hopper_##S##_d##D(               \
        FlashDims a, const __grid_constant__ FhTensorMap tq, const __grid_constant__ FhTensorMap tk,       \
        const __grid_constant__ FhTensorMap tv, T* out, float* lse) {                                      \
        flash_fwd_hopper<T, D>(a, &tq, &tk, &tv, out, lse);                                               \
    }

#define FLASH_HOPPER_BWD(T, S, D)                                                                          \
    extern "C" __global__ void __launch_bounds__(FH_THREADS, 1) flash_bwd_hopper_##S##_d##D(               \
        FlashDims a, const __grid_constant__ FhTensorMap tq, const __grid_constant__ FhTensorMap tk,       \
        const __grid_constant__ FhTensorMap tv, const __grid_constant__ FhTensorMap tdo, const float* lse, \
        const float* dot, float* dq_acc, T* dk, T* dv) {                                                   \
        flash_bwd_hopper<T, D>(a, &tq, &tk, &tv, &tdo, lse, dot, dq_acc, dk, dv);                          \
    }

FLASH_HOPPER_BWD(bf16, bf16, 64)
FLASH_HOPPER_BWD(bf16, bf16, 128)
FLASH_HOPPER_BWD(f16, f16, 64)
FLASH_HOPPER_BWD(f16, f16, 128)

FLASH_HOPPER(bf16, bf16, 64)
FLASH_HOPPER(bf16, bf16, 128)
FLASH_HOPPER(f16, f16, 64)
FLASH_HOPPER(f16, f16, 128)
