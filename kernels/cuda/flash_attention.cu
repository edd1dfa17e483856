// Flash attention, forward and backward, on tensor cores through inline PTX (portable path:
// sm_80 and newer; `mma.sync.aligned.m16n8k16` with bf16 or f16 inputs and f32 accumulators,
// `ldmatrix` (`.trans` where the operand is stored the other way round) and `cp.async`).
//
// Memory contract. q, k, v, out, dout, dq, dk, dv are [batch, heads, seq, D] operands, each with
// its own element strides for batch, head and row (`FaLayout`; D is contiguous), so a fused QKV
// projection's [batch, seq, 3, heads, D] output is read in place and the output can be written
// as [batch, seq, heads, D]; dense [bh, seq, D] is the special case the tests and `attention.cu`
// use. D = 64 or 128, element type bf16 or f16; every row starts on a 16-byte boundary (the host
// checks that strides and offsets are multiples of 8 elements). lse is dense [bh, seq] f32
// (bh = batch × heads): the natural log-sum-exp of the scaled scores of each query row (the same
// quantity the simple kernel and the CPU op save). The backward uses a dense f32 workspace
// dq_acc [bh, seq, D] and the row dots [bh, seq] f32; nothing of size seq×seq exists anywhere. Query rows at or beyond seq are never stored; keys at or beyond seq are
// loaded as zeros (cp.async zero-fill) and masked to -inf in the forward.
//
// Forward (`flash_fwd_*`): one block of 4 warps owns 64 query rows (16 per warp) of one (b, h);
// a one-dimensional grid of tiles × bh blocks, ordered so that every head's heaviest causal tile
// (the last query rows) is launched first and the lightest last (longest-first scheduling). Q is staged through shared
// memory into registers once; K and V tiles of 64 keys are double-buffered in shared memory
// with cp.async (the next tile's copy overlaps this tile's math). Per tile: S = Q·Kᵀ on tensor
// cores, the causal/ragged mask only on the tiles that need it, an online softmax in f32 (base 2,
// the scale folded into one FMA), P rounded to bf16/f16 straight from the accumulator registers
// into A fragments, O += P·V. Key tiles entirely above the causal diagonal are never visited.
// At the end O is divided by the row sum, staged through shared memory, stored with 16-byte
// stores; the log-sum-exp is written for the backward.
//
// Backward: `flash_bwd_prep_*` computes D_i = Σ dO_i∘O_i in f32 and zeroes the dQ workspace
// (one fused pre-pass). `flash_bwd_*`: one block of 4 warps owns 64 keys (16 per warp), keeps
// its K and V tile in shared memory and dK, dV in f32 registers, and walks the query tiles
// (only those at or below the diagonal when causal) with Q and dO double-buffered by cp.async;
// the grid is ordered like the forward's (key block 0, the heaviest when causal, first).
// Per query tile, each warp computes Sᵀ = K·Qᵀ for its keys, Pᵀ = exp(Sᵀ·scale − lse) (the
// probabilities recomputed from the saved log-sum-exp), dV += Pᵀ·dO, dPᵀ = V·dOᵀ,
// dSᵀ = Pᵀ∘(dPᵀ − D), dK += dSᵀ·Q; dSᵀ goes to shared memory (bf16/f16) and each warp then
// computes dQ for 16 query rows over the block's 64 keys and adds it into the f32 workspace
// with atomics. `flash_bwd_dq_*` finally writes dQ = scale·dq_acc in the storage type.
// Shared-memory rows are padded by 16 bytes so that ldmatrix and the fragment stores are free of
// bank conflicts.
//
// Registers (ptxas, sm_90): forward 128 (D=64) / 240 (D=128), backward 227 / 255, no spills; the
// backward at D=128 computes dPᵀ in quarters to stay within 255 registers. The Hopper (wgmma/TMA)
// kernels are in flash_attention_hopper.cu; the backward there shares this file's pre-pass and
// dQ kernels.

#define FA_WARPS 4
#define FA_THREADS (32 * FA_WARPS)
#define FA_BM 64  // query rows per tile
#define FA_BN 64  // keys per tile
#define FA_PAD 8  // elements of padding per shared-memory row
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

// FlashDims, FaLayout and fa_head (the shape and operand layouts) are in common.cuh, shared with
// flash_attention_hopper.cu.

// ------------------------------------------------------------------ PTX helpers
// (smem_u32, cp.async, ldmatrix, mma.sync and pack2 are in common.cuh)

__device__ __forceinline__ float fa_exp2(float x) {
#ifdef POLYLM_HOST_EMULATION
    return exp2f(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// blockIdx.x read afresh (a volatile read the compiler cannot merge with an earlier one), so
// that values derived from it for the end of a kernel are recomputed there instead of held in
// registers through the main loop.
__device__ __forceinline__ int fa_block_again() {
#ifdef POLYLM_HOST_EMULATION
    return (int)blockIdx.x;
#else
    int x;
    asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(x));
    return x;
#endif
}

// acc[D/8] += A·B for one 16-wide K step `kk`: A (16 × 16) is the m16n8 accumulator pair
// s[2kk], s[2kk+1] converted to T in registers (the A fragment of the mma, also returned in `pa`),
// B the rows kk·16.. of the row-major shared tile at `base` (row stride LD elements), read
// transposed by ldmatrix.
template <class T, int D, int LD, int N>
__device__ __forceinline__ void fa_mma_regs_smem(float (&acc)[D / 8][4], const float (&s)[N][4], int kk, u32 base,
                                                 int lane, u32 (&pa)[4]) {
    pa[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
    pa[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
    pa[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    pa[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
    for (int dp = 0; dp < D / 16; dp++) {
        u32 b0, b1, b2, b3;
        ldmatrix_x4_trans(base + (u32)(((kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8) * 2),
                  b0, b1, b2, b3);
        mma_m16n8k16<T>(acc[2 * dp], pa, b0, b1);
        mma_m16n8k16<T>(acc[2 * dp + 1], pa, b2, b3);
    }
}

// Copies `ROWS` rows of D elements starting at global row `g` (row stride `ld` elements; rows at
// or beyond `valid` are zero-filled) into shared memory at `dst` with row stride D + FA_PAD; no
// commit.
template <class T, int ROWS, int D>
__device__ __forceinline__ void fa_load_tile(u32 dst, const T* g, int valid, int ld) {
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    constexpr int TOTAL = ROWS * CHUNKS;
    static_assert(TOTAL % FA_THREADS == 0, "tile copy must split evenly over the threads");
    constexpr int LD = D + FA_PAD;
#pragma unroll
    for (int it = 0; it < TOTAL / FA_THREADS; it++) {
        const int c = threadIdx.x + it * FA_THREADS;
        const int row = c / CHUNKS, col = (c % CHUNKS) * 8;
        const bool ok = row < valid;
        cp_async16(dst + (u32)((row * LD + col) * 2), g + (i64)(ok ? row : 0) * ld + col, ok ? 16 : 0);
    }
}

// Stores one warp's 16 staged rows (shared, stride D + FA_PAD) to global rows row0.. (row stride
// `ld` elements) with 16-byte stores, skipping rows at or beyond `limit`.
template <class T, int D>
__device__ __forceinline__ void fa_store_rows(const unsigned short* s, T* g, int row0, int limit, int ld) {
    constexpr int CHUNKS = D / 8;
    constexpr int LD = D + FA_PAD;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int it = 0; it < 16 * CHUNKS / 32; it++) {
        const int c = lane + it * 32;
        const int r = c / CHUNKS, col = (c % CHUNKS) * 8;
        if (row0 + r < limit) {
            *reinterpret_cast<uint4*>(g + (i64)(row0 + r) * ld + col) =
                *reinterpret_cast<const uint4*>(s + r * LD + col);
        }
    }
}

// ------------------------------------------------------------------ forward

template <class T, int D>
__device__ __forceinline__ void flash_fwd(FlashDims a, const T* __restrict__ q, const T* __restrict__ k,
                                          const T* __restrict__ v, T* __restrict__ out,
                                          float* __restrict__ lse) {
    constexpr int LD = D + FA_PAD;
    constexpr int TILE = FA_BN * LD;  // elements of one K or V stage
    extern __shared__ __align__(16) unsigned char fa_smem[];
    unsigned short* sq = reinterpret_cast<unsigned short*>(fa_smem);
    const u32 sq_a = smem_u32(sq);
    const u32 sk_a = sq_a + FA_BM * LD * 2;       // 2 stages of K
    const u32 sv_a = sk_a + 2 * TILE * 2;         // 2 stages of V

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int T_ = a.seq;
    const int bh = blockIdx.x % a.bh;
    const int q0 = ((T_ + FA_BM - 1) / FA_BM - 1 - (int)(blockIdx.x / a.bh)) * FA_BM;  // heaviest first
    const T* qh = q + fa_head(a.q, bh, a.heads);
    const T* kh = k + fa_head(a.k, bh, a.heads);
    const T* vh = v + fa_head(a.v, bh, a.heads);
    const int ldq = (int)a.q.row, ldk = (int)a.k.row, ldv = (int)a.v.row;
    const int kv_end = a.causal ? min(T_, q0 + FA_BM) : T_;
    const int n_tiles = (kv_end + FA_BN - 1) / FA_BN;
    const float sl2 = a.scale * FA_LOG2E;

    fa_load_tile<T, FA_BM, D>(sq_a, qh + (i64)q0 * ldq, T_ - q0, ldq);
    fa_load_tile<T, FA_BN, D>(sk_a, kh, T_, ldk);
    fa_load_tile<T, FA_BN, D>(sv_a, vh, T_, ldv);
    cp_async_commit();

    u32 qf[D / 16][4];
    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m[2] = {-POLY_INF, -POLY_INF}, l[2] = {0.0f, 0.0f};
    const int row0 = q0 + warp * 16 + g;  // this thread's rows: row0 and row0 + 8

    for (int j = 0; j < n_tiles; j++) {
        const int stage = j & 1;
        if (j + 1 < n_tiles) {
            const int nk = (j + 1) * FA_BN;
            fa_load_tile<T, FA_BN, D>(sk_a + (stage ^ 1) * TILE * 2, kh + (i64)nk * ldk, T_ - nk, ldk);
            fa_load_tile<T, FA_BN, D>(sv_a + (stage ^ 1) * TILE * 2, vh + (i64)nk * ldv, T_ - nk, ldv);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (j == 0) {
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                ldmatrix_x4(sq_a + (u32)(((warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8) * 2),
                        qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3]);
        }
        const u32 sk = sk_a + stage * TILE * 2, sv = sv_a + stage * TILE * 2;

        // S = Q·Kᵀ (16 rows × 64 keys per warp)
        float s[FA_BN / 8][4];
#pragma unroll
        for (int i = 0; i < FA_BN / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
            for (int np = 0; np < FA_BN / 16; np++) {
                u32 b0, b1, b2, b3;
                ldmatrix_x4(sk + (u32)(((np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 +
                                    ((lane >> 3) & 1) * 8) * 2),
                        b0, b1, b2, b3);
                mma_m16n8k16<T>(s[2 * np], qf[kk], b0, b1);
                mma_m16n8k16<T>(s[2 * np + 1], qf[kk], b2, b3);
            }
        }

        // Mask keys beyond the sequence and (causal) keys after the query, where any can occur.
        const int kv0 = j * FA_BN;
        const bool need_mask = (kv0 + FA_BN > T_) || (a.causal && kv0 + FA_BN - 1 > q0 + warp * 16);
        if (need_mask) {
#pragma unroll
            for (int nt = 0; nt < FA_BN / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = kv0 + nt * 8 + 2 * t4 + (e & 1);
                    const int row = row0 + (e >> 1) * 8;
                    if (key >= T_ || (a.causal && key > row)) s[nt][e] = -POLY_INF;
                }
            }
        }

        // Online softmax in base 2: p = 2^(s·scale·log2e − m).
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = -POLY_INF;
#pragma unroll
            for (int nt = 0; nt < FA_BN / 8; nt++) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m[r], mx * sl2);
            const float m_use = m_new == -POLY_INF ? 0.0f : m_new;  // a row with no key yet
            const float corr = fa_exp2(m[r] - m_use);
            m[r] = m_new;
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < FA_BN / 8; nt++) {
                s[nt][2 * r] = fa_exp2(fmaf(s[nt][2 * r], sl2, -m_use));
                s[nt][2 * r + 1] = fa_exp2(fmaf(s[nt][2 * r + 1], sl2, -m_use));
                sum += s[nt][2 * r] + s[nt][2 * r + 1];
            }
            l[r] = l[r] * corr + sum;  // this thread's columns only; reduced over the quad at the end
#pragma unroll
            for (int dt = 0; dt < D / 8; dt++) {
                o[dt][2 * r] *= corr;
                o[dt][2 * r + 1] *= corr;
            }
        }

        // O += P·V: the S accumulators become the A fragments of P directly.
#pragma unroll
        for (int kk = 0; kk < FA_BN / 16; kk++) {
            u32 pa[4];
            fa_mma_regs_smem<T, D, LD>(o, s, kk, sv, lane, pa);
        }
        __syncthreads();  // the next iteration's copy overwrites this stage
    }

    // Normalise, stage this warp's 16 rows in its own rows of the Q tile, store.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        inv[r] = 1.0f / sum;
        const int row = row0 + r * 8;
        if (t4 == 0 && row < T_) lse[(i64)bh * T_ + row] = (m[r] + log2f(sum)) * FA_LN2;
    }
    unsigned short* so = sq + warp * 16 * LD;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        const int col = dt * 8 + 2 * t4;
        *reinterpret_cast<u32*>(so + g * LD + col) = pack2<T>(o[dt][0] * inv[0], o[dt][1] * inv[0]);
        *reinterpret_cast<u32*>(so + (g + 8) * LD + col) =
            pack2<T>(o[dt][2] * inv[1], o[dt][3] * inv[1]);
    }
    __syncwarp();
    fa_store_rows<T, D>(so, out + fa_head(a.o, bh, a.heads), q0 + warp * 16, T_, (int)a.o.row);
}

// ------------------------------------------------------------------ backward

// D_i = Σ_c dO[i,c]·O[i,c] (f32) and dq_acc[i,:] = 0; one warp per row i of the bh × seq rows.
template <class T>
__device__ __forceinline__ void flash_bwd_prep(FlashDims a, int d, const T* __restrict__ o,
                                               const T* __restrict__ dout, float* __restrict__ dot,
                                               float* __restrict__ dq_acc) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= a.bh * a.seq) return;
    const int lane = threadIdx.x & 31;
    const int bh = row / a.seq, t = row - bh * a.seq;
    const T* orow = o + fa_head(a.o, bh, a.heads) + (i64)t * a.o.row;
    const T* grow = dout + fa_head(a.dout, bh, a.heads) + (i64)t * a.dout.row;
    const i64 off = (i64)row * d;
    float s = 0.0f;
    for (int c = 2 * lane; c < d; c += 64) {
        const u32 ov = *reinterpret_cast<const u32*>(orow + c);
        const u32 gv = *reinterpret_cast<const u32*>(grow + c);
        T o_lo, o_hi, g_lo, g_hi;
        o_lo.bits = (unsigned short)(ov & 0xffffu);
        o_hi.bits = (unsigned short)(ov >> 16);
        g_lo.bits = (unsigned short)(gv & 0xffffu);
        g_hi.bits = (unsigned short)(gv >> 16);
        s = fmaf(to_f32(o_lo), to_f32(g_lo), s);
        s = fmaf(to_f32(o_hi), to_f32(g_hi), s);
        *reinterpret_cast<float2*>(dq_acc + off + c) = make_float2(0.0f, 0.0f);
    }
    s = warp_sum(s);
    if (lane == 0) dot[row] = s;
}

template <class T, int D>
__device__ __forceinline__ void flash_bwd(FlashDims a, const T* __restrict__ q, const T* __restrict__ k,
                                          const T* __restrict__ v, const T* __restrict__ dout,
                                          const float* __restrict__ lse, const float* __restrict__ dot,
                                          float* __restrict__ dq_acc, T* __restrict__ dk,
                                          T* __restrict__ dv) {
    constexpr int LD = D + FA_PAD;
    constexpr int TILE = FA_BM * LD;   // elements of one Q or dO stage (and of K, V: FA_BN == FA_BM)
    constexpr int LDS = FA_BM + FA_PAD;  // row stride of the dSᵀ tile
    static_assert(FA_BM == FA_BN && FA_BN == 16 * FA_WARPS, "one 16-row slice per warp both ways");
    extern __shared__ __align__(16) unsigned char fa_smem[];
    unsigned short* sk = reinterpret_cast<unsigned short*>(fa_smem);
    unsigned short* sv = sk + TILE;
    unsigned short* sds = sv + 5 * TILE;  // after K, V, 2 stages of Q and 2 of dO
    float* sl = reinterpret_cast<float*>(sds + FA_BN * LDS);  // [2][FA_BM] lse·log2e
    float* sd = sl + 2 * FA_BM;                               // [2][FA_BM] row dots
    const u32 sk_a = smem_u32(sk), sv_a = sk_a + TILE * 2, sq_a = sv_a + TILE * 2;
    const u32 sdo_a = sq_a + 2 * TILE * 2, sds_a = smem_u32(sds);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int T_ = a.seq;
    const int bh = blockIdx.x % a.bh;
    const int kv0 = (int)(blockIdx.x / a.bh) * FA_BN;  // causal: key block 0 has the most work, runs first
    // Registers are tight (255 at D = 128): the row strides stay in the parameter bank, the
    // head offsets of Q and dO are held as 32-bit counts of 16-byte vectors (offsets are
    // multiples of 8 elements, below 2³⁵), and the dense per-row arrays are indexed from one
    // 32-bit row base.
    const u32 q_vec = (u32)(fa_head(a.q, bh, a.heads) >> 3), do_vec = (u32)(fa_head(a.dout, bh, a.heads) >> 3);
    const auto q_rows = [&](int row) { return q + ((i64)q_vec << 3) + (i64)row * a.q.row; };
    const auto do_rows = [&](int row) { return dout + ((i64)do_vec << 3) + (i64)row * a.dout.row; };
    const int ldq = (int)a.q.row, ldo = (int)a.dout.row;
    const int row_base = bh * T_;  // of lse, dot and the dense dQ workspace (rows < 2³¹)
    const float sl2 = a.scale * FA_LOG2E;
    const int qt_begin = a.causal ? kv0 / FA_BM : 0;
    const int qt_end = (T_ + FA_BM - 1) / FA_BM;

    fa_load_tile<T, FA_BN, D>(sk_a, k + fa_head(a.k, bh, a.heads) + (i64)kv0 * a.k.row, T_ - kv0, (int)a.k.row);
    fa_load_tile<T, FA_BN, D>(sv_a, v + fa_head(a.v, bh, a.heads) + (i64)kv0 * a.v.row, T_ - kv0, (int)a.v.row);
    {
        const int q0 = qt_begin * FA_BM;
        fa_load_tile<T, FA_BM, D>(sq_a, q_rows(q0), T_ - q0, ldq);
        fa_load_tile<T, FA_BM, D>(sdo_a, do_rows(q0), T_ - q0, ldo);
        if (tid < FA_BM) {
            const int qi = q0 + tid;
            sl[tid] = qi < T_ ? lse[row_base + qi] * FA_LOG2E : POLY_INF;  // +inf: padded rows get P = 0
            sd[tid] = qi < T_ ? dot[row_base + qi] : 0.0f;
        }
    }
    cp_async_commit();

    float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++) {
        dka[i][0] = dka[i][1] = dka[i][2] = dka[i][3] = 0.0f;
        dva[i][0] = dva[i][1] = dva[i][2] = dva[i][3] = 0.0f;
    }
    const int key0 = kv0 + warp * 16 + g;  // this thread's keys: key0 and key0 + 8
    const u32 kw_a = sk_a + (u32)((warp * 16) * LD * 2), vw_a = sv_a + (u32)((warp * 16) * LD * 2);

    for (int qt = qt_begin; qt < qt_end; qt++) {
        const int stage = (qt - qt_begin) & 1;
        const int q0 = qt * FA_BM;
        if (qt + 1 < qt_end) {
            const int nq = q0 + FA_BM;
            const u32 off = (u32)((stage ^ 1) * TILE * 2);
            fa_load_tile<T, FA_BM, D>(sq_a + off, q_rows(nq), T_ - nq, ldq);
            fa_load_tile<T, FA_BM, D>(sdo_a + off, do_rows(nq), T_ - nq, ldo);
            cp_async_commit();
            if (tid < FA_BM) {
                const int qi = nq + tid;
                sl[(stage ^ 1) * FA_BM + tid] = qi < T_ ? lse[row_base + qi] * FA_LOG2E : POLY_INF;
                sd[(stage ^ 1) * FA_BM + tid] = qi < T_ ? dot[row_base + qi] : 0.0f;
            }
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const u32 sq = sq_a + (u32)(stage * TILE * 2), sdo = sdo_a + (u32)(stage * TILE * 2);
        const float* lrow = sl + stage * FA_BM;
        const float* drow = sd + stage * FA_BM;

        // Sᵀ = K·Qᵀ for this warp's 16 keys × 64 queries.
        float s[FA_BM / 8][4];
#pragma unroll
        for (int i = 0; i < FA_BM / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            u32 af[4];
            ldmatrix_x4(kw_a + (u32)(((lane & 15) * LD + kk * 16 + (lane >> 4) * 8) * 2), af[0], af[1], af[2], af[3]);
#pragma unroll
            for (int np = 0; np < FA_BM / 16; np++) {
                u32 b0, b1, b2, b3;
                ldmatrix_x4(sq + (u32)(((np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 +
                                    ((lane >> 3) & 1) * 8) * 2),
                        b0, b1, b2, b3);
                mma_m16n8k16<T>(s[2 * np], af, b0, b1);
                mma_m16n8k16<T>(s[2 * np + 1], af, b2, b3);
            }
        }

        // Pᵀ = 2^(Sᵀ·scale·log2e − lse·log2e), zero above the causal diagonal.
        const bool need_mask = a.causal && (kv0 + warp * 16 + 15 > q0);
#pragma unroll
        for (int nt = 0; nt < FA_BM / 8; nt++) {
            const int ql = nt * 8 + 2 * t4;
            const float2 lv = *reinterpret_cast<const float2*>(lrow + ql);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float lq = (e & 1) ? lv.y : lv.x;
                float p = fa_exp2(fmaf(s[nt][e], sl2, -lq));
                if (need_mask && key0 + (e >> 1) * 8 > q0 + ql + (e & 1)) p = 0.0f;
                s[nt][e] = p;
            }
        }

        // dV += Pᵀ·dO
#pragma unroll
        for (int kk = 0; kk < FA_BM / 16; kk++) {
            u32 pa[4];
            fa_mma_regs_smem<T, D, LD>(dva, s, kk, sdo, lane, pa);
        }

        // dPᵀ = V·dOᵀ, then dSᵀ = Pᵀ∘(dPᵀ − D) in place of Pᵀ; in parts of 64/DP_SPLIT queries,
        // which re-reads V's fragments per part but keeps few accumulators live (no spills at D=128).
        constexpr int DP_SPLIT = D == 128 ? 4 : 2;
#pragma unroll
        for (int h = 0; h < DP_SPLIT; h++) {
            constexpr int HT = FA_BM / 8 / DP_SPLIT;  // n-tiles of 8 queries per part
            float dp_[HT][4];
#pragma unroll
            for (int i = 0; i < HT; i++) dp_[i][0] = dp_[i][1] = dp_[i][2] = dp_[i][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                u32 af[4];
                ldmatrix_x4(vw_a + (u32)(((lane & 15) * LD + kk * 16 + (lane >> 4) * 8) * 2), af[0], af[1], af[2],
                        af[3]);
#pragma unroll
                for (int np = 0; np < HT / 2; np++) {
                    u32 b0, b1, b2, b3;
                    ldmatrix_x4(sdo + (u32)((((h * HT / 2 + np) * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD +
                                         kk * 16 + ((lane >> 3) & 1) * 8) * 2),
                            b0, b1, b2, b3);
                    mma_m16n8k16<T>(dp_[2 * np], af, b0, b1);
                    mma_m16n8k16<T>(dp_[2 * np + 1], af, b2, b3);
                }
            }
#pragma unroll
            for (int i = 0; i < HT; i++) {
                const int nt = h * HT + i;
                const float2 dv2 = *reinterpret_cast<const float2*>(drow + nt * 8 + 2 * t4);
                s[nt][0] *= dp_[i][0] - dv2.x;
                s[nt][1] *= dp_[i][1] - dv2.y;
                s[nt][2] *= dp_[i][2] - dv2.x;
                s[nt][3] *= dp_[i][3] - dv2.y;
            }
        }

        // dK += dSᵀ·Q; dSᵀ also goes to shared memory for dQ.
#pragma unroll
        for (int kk = 0; kk < FA_BM / 16; kk++) {
            u32 pa[4];
            fa_mma_regs_smem<T, D, LD>(dka, s, kk, sq, lane, pa);
            unsigned short* w = sds + (warp * 16 + g) * LDS + kk * 16 + 2 * t4;
            *reinterpret_cast<u32*>(w) = pa[0];
            *reinterpret_cast<u32*>(w + 8 * LDS) = pa[1];
            *reinterpret_cast<u32*>(w + 8) = pa[2];
            *reinterpret_cast<u32*>(w + 8 * LDS + 8) = pa[3];
        }
        __syncthreads();  // dSᵀ of every warp is in shared memory

        // dQ (unscaled) for this warp's 16 query rows over the block's 64 keys, into dq_acc.
        // (No FA_PROBE_NO_DQ here: at head dim 128 this kernel has no register to spare for it.)
        {
            u32 dsa[FA_BN / 16][4];
#pragma unroll
            for (int kk = 0; kk < FA_BN / 16; kk++)
                ldmatrix_x4_trans(sds_a + (u32)(((kk * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + warp * 16 +
                                         ((lane >> 3) & 1) * 8) * 2),
                          dsa[kk][0], dsa[kk][1], dsa[kk][2], dsa[kk][3]);
            const int qr = q0 + warp * 16 + g;
            float* acc0 = dq_acc + (i64)(row_base + qr) * D;
            float* acc1 = acc0 + 8 * D;
#pragma unroll
            for (int dc = 0; dc < D / 32; dc++) {  // 32 columns at a time: 16 accumulators live
                float c[4][4];
#pragma unroll
                for (int i = 0; i < 4; i++) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < FA_BN / 16; kk++) {
#pragma unroll
                    for (int dp = 0; dp < 2; dp++) {
                        u32 b0, b1, b2, b3;
                        ldmatrix_x4_trans(sk_a + (u32)(((kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dc * 32 +
                                                dp * 16 + (lane >> 4) * 8) * 2),
                                  b0, b1, b2, b3);
                        mma_m16n8k16<T>(c[2 * dp], dsa[kk], b0, b1);
                        mma_m16n8k16<T>(c[2 * dp + 1], dsa[kk], b2, b3);
                    }
                }
#pragma unroll
                for (int nt = 0; nt < 4; nt++) {
                    const int col = dc * 32 + nt * 8 + 2 * t4;
                    if (qr < T_) atomic_add_f32x2(acc0 + col, c[nt][0], c[nt][1]);
                    if (qr + 8 < T_) atomic_add_f32x2(acc1 + col, c[nt][2], c[nt][3]);
                }
            }
        }
        __syncthreads();  // the next iteration overwrites this stage and the dSᵀ tile
    }

    // dK = scale·Σ dSᵀ·Q, dV = Σ Pᵀ·dO: staged in this warp's own rows of the K and V tiles.
    unsigned short* skw = sk + warp * 16 * LD;
    unsigned short* svw = sv + warp * 16 * LD;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        const int col = dt * 8 + 2 * t4;
        *reinterpret_cast<u32*>(skw + g * LD + col) = pack2<T>(dka[dt][0] * a.scale, dka[dt][1] * a.scale);
        *reinterpret_cast<u32*>(skw + (g + 8) * LD + col) =
            pack2<T>(dka[dt][2] * a.scale, dka[dt][3] * a.scale);
        *reinterpret_cast<u32*>(svw + g * LD + col) = pack2<T>(dva[dt][0], dva[dt][1]);
        *reinterpret_cast<u32*>(svw + (g + 8) * LD + col) = pack2<T>(dva[dt][2], dva[dt][3]);
    }
    __syncwarp();
    const int bh_end = fa_block_again() % a.bh;
    fa_store_rows<T, D>(skw, dk + fa_head(a.dk, bh_end, a.heads), kv0 + warp * 16, T_, (int)a.dk.row);
    fa_store_rows<T, D>(svw, dv + fa_head(a.dv, bh_end, a.heads), kv0 + warp * 16, T_, (int)a.dv.row);
}

// dq = scale·dq_acc in the storage type and dq's layout, four columns per thread; d is a
// multiple of 4.
template <class T>
__device__ __forceinline__ void flash_bwd_dq(FlashDims a, int d, const float* __restrict__ acc, T* __restrict__ dq) {
    const i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= (i64)a.bh * a.seq * d) return;
    const int row = (int)(i / d), col = (int)(i - (i64)row * d);
    const int bh = row / a.seq, t = row - bh * a.seq;
    const float4 x = *reinterpret_cast<const float4*>(acc + i);
    const float vals[4] = {x.x * a.scale, x.y * a.scale, x.z * a.scale, x.w * a.scale};
    store4<T>(dq + fa_head(a.dq, bh, a.heads) + (i64)t * a.dq.row + col, vals);
}

// ------------------------------------------------------------------ entry points

#define FLASH_D(T, S, D)                                                                                   \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                               \
        flash_fwd_##S##_d##D(FlashDims a, const T* q, const T* k, const T* v, T* out, float* lse) {        \
        flash_fwd<T, D>(a, q, k, v, out, lse);                                                             \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                               \
        flash_bwd_##S##_d##D(FlashDims a, const T* q, const T* k, const T* v, const T* dout,               \
                             const float* lse, const float* dot, float* dq_acc, T* dk, T* dv) {            \
        flash_bwd<T, D>(a, q, k, v, dout, lse, dot, dq_acc, dk, dv);                                       \
    }

#define FLASH(T, S)                                                                                        \
    FLASH_D(T, S, 64)                                                                                      \
    FLASH_D(T, S, 128)                                                                                     \
    extern "C" __global__ void flash_bwd_prep_##S(FlashDims a, int d, const T* o, const T* dout,          \
                                                  float* dot, float* dq_acc) {                             \
        flash_bwd_prep<T>(a, d, o, dout, dot, dq_acc);                                                     \
    }                                                                                                      \
    extern "C" __global__ void flash_bwd_dq_##S(FlashDims a, int d, const float* acc, T* dq) {             \
        flash_bwd_dq<T>(a, d, acc, dq);                                                                    \
    }

FLASH(bf16, bf16)
FLASH(f16, f16)
