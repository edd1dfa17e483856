// Tensor-core matrix product for sm_80 and later (the portable path):
//
//     pre  = alpha · A[b]·B[b] (+ bias per column)
//     C[b] = act(pre) + beta · C[b]            act = identity or GeLU (tanh form)
//
// with bf16 or f16 inputs, f32 accumulation and f32, bf16 or f16 output (chosen at run time by
// `out_kind`, so one kernel serves every output type).
//
// Fused into the store (the epilogue, applied to the f32 accumulators in registers):
//   - the alpha scale;
//   - a bias added per output column (bias stored in the output type);
//   - GeLU (tanh form, `gelu_tanh` of common.cuh) after the bias, optionally also writing the
//     pre-activation (alpha·A·B + bias) to a second buffer of C's shape for the backward pass;
//   - accumulation into the existing C (beta != 0; with beta = 0 C is never read, so it may hold
//     garbage or NaN).
//
// Layouts, without materialised transposes. "n"/"t" as in BLAS for row-major storage:
//   A "n": A stored [M, K] (K contiguous)    A "t": A stored [K, M] (M contiguous)
//   B "n": B stored [K, N] (N contiguous)    B "t": B stored [N, K] (K contiguous)
// so A·B is "nn", A·Bᵀ is "nt", Aᵀ·B is "tn" (and Aᵀ·Bᵀ is "tt"). Batches are strided (any
// batch stride, 0 broadcasts an operand). C is row-major with row stride `ldc` and batch stride
// `c_bs`.
//
// Tiling: a block computes a BM×BN tile of C, stepping through K in slices of BK = 32.
//   "128x128": 256 threads = 8 warps as 2 (M) × 4 (N), each warp 64×32; 4 pipeline stages.
//   "64x64":   128 threads = 4 warps as 2 × 2, each warp 32×32; 3 stages (small problems,
//              where 128×128 tiles would leave most SMs idle).
// Each warp issues mma.sync.aligned.m16n8k16 (row.col, f32 accumulators): per 16-deep K step,
// (WM/16)·(WN/8) MMAs fed by ldmatrix.x4 from shared memory. Operands whose K is contiguous
// are stored in shared memory as [rows][BK] and read with plain ldmatrix; operands whose M (or
// N) is contiguous are stored as [BK][rows] and read with ldmatrix.trans, which delivers the
// same register fragments. Every shared row is padded by 8 elements (16 bytes): the row pitch
// is then 80 bytes ([rows][32+8]) or 4 words past a multiple of 128 bytes ([32][rows+8]), so
// the 8 row addresses of each ldmatrix phase hit 8 disjoint groups of 4 banks (no conflicts).
//
// Pipeline: global → shared with cp.async.cg (16 bytes, L2 only), STAGES-1 K slices in flight:
//   prologue: issue slices 0..STAGES-2, one commit group each;
//   step kt:  wait until slice kt has landed (cp.async.wait_group STAGES-2), barrier, issue
//             slice kt+STAGES-1 into the slot that slice kt-1 used (all warps are past it,
//             thanks to the barrier), then compute on slice kt.
// Ragged edges: a 16-byte chunk wholly outside the matrix is zero-filled (cp.async src-size
// 0), a chunk straddling the contiguous edge copies only its valid bytes and zero-fills the
// rest, and the K tail is zero-filled the same way, so any M, N, K works; stores are guarded.
// The 16-byte path needs each operand's leading stride, batch stride and base address to be
// multiples of 8 elements / 16 bytes; the wrapper checks and otherwise uses the "generic"
// kernel, the same 64×64 tiling fed by predicated element loads through registers with
// arbitrary row/column/batch strides (correct for every view, slower).
//
// Blocks are rasterised in groups of GROUP_M tile rows (consecutive blocks walk down M within
// a group before moving along N), so that a wave of blocks shares A and B tiles in L2.
//
// bias_grad_partial: the first half of the bias gradient, column sums of dY [rows, cols] over
// `splits` row ranges into f32 partials, summed in a fixed order (deterministic) by
// elementwise.cu's column_sum.

#define TC_BK 32
#define TC_PAD 8
#define TC_GROUP_M 8

struct TcShape {
    i64 m, n, k;
    i64 a_rs, a_cs, a_bs;  // A element (b, i, p) at b·a_bs + i·a_rs + p·a_cs
    i64 b_rs, b_cs, b_bs;  // B element (b, p, j) at b·b_bs + p·b_rs + j·b_cs
    i64 ldc, c_bs;         // C element (b, i, j) at b·c_bs + i·ldc + j (pre-activation too)
    float alpha, beta;
    int tiles_m, tiles_n;
    int out_kind;  // 0 f32, 1 bf16, 2 f16
    int flags;     // GEMM_FLAG_* (common.cuh)
};

// (The smem_u32, cp.async, ldmatrix and mma.sync wrappers are in common.cuh.)

// ---------------------------------------------------------------- shared-memory tiles

/// Geometry of one operand's shared tile of `ROWS` (M or N) × BK. `KMAJOR`: stored
/// [ROWS][BK+PAD]; otherwise [BK][ROWS+PAD].
template <int ROWS, bool KMAJOR>
struct TileGeom {
    static constexpr int PITCH = KMAJOR ? TC_BK + TC_PAD : ROWS + TC_PAD;
    static constexpr int ELEMS = KMAJOR ? ROWS * PITCH : TC_BK * PITCH;
    /// Element offset of (row, k).
    static __device__ __forceinline__ int at(int r, int k) { return KMAJOR ? r * PITCH + k : k * PITCH + r; }
};

/// Issues the cp.async copies of one operand's tile: `g` points at tile element (0, 0) (which
/// may lie outside the matrix), `ld` is the stride of the non-contiguous dimension,
/// `outer_left`/`inner_left` how many rows / contiguous elements remain inside the matrix.
/// `safe` is any valid address, used for chunks that copy nothing.
template <class T, int ROWS, bool KMAJOR, int THREADS>
__device__ __forceinline__ void load_tile_async(u32 dst, const T* g, i64 ld, i64 outer_left, i64 inner_left,
                                                const T* safe, int tid) {
    using G = TileGeom<ROWS, KMAJOR>;
    constexpr int OUTER = KMAJOR ? ROWS : TC_BK;  // rows of the copied block
    constexpr int INNER = KMAJOR ? TC_BK : ROWS;  // contiguous elements per row
    constexpr int CPR = INNER / 8;
    constexpr int CHUNKS = OUTER * CPR;
    static_assert(CHUNKS % THREADS == 0, "tile chunks must divide evenly among threads");
#pragma unroll
    for (int i = 0; i < CHUNKS / THREADS; i++) {
        const int idx = tid + i * THREADS;
        const int o = idx / CPR, c = (idx % CPR) * 8;
        const i64 rem = inner_left - c;
        const int n = (o < outer_left && rem > 0) ? (rem >= 8 ? 8 : (int)rem) : 0;
        const T* src = n > 0 ? g + (i64)o * ld + c : safe;
        cp_async16(dst + 2 * (o * G::PITCH + c), src, 2 * n);
    }
}

/// Predicated element loads of one operand's tile (any strides): tile element (r, p) is
/// `g[r·s_r + p·s_k]`, valid while r < rows_left and p < k_left; zero elsewhere.
template <class T, int ROWS, bool KMAJOR, int THREADS>
__device__ __forceinline__ void load_tile_generic(unsigned short* dst, const T* g, i64 s_r, i64 s_k, i64 rows_left,
                                                  i64 k_left, int tid) {
    using G = TileGeom<ROWS, KMAJOR>;
    constexpr int ELEMS = ROWS * TC_BK;
    static_assert(ELEMS % THREADS == 0, "tile elements must divide evenly among threads");
#pragma unroll 4
    for (int i = 0; i < ELEMS / THREADS; i++) {
        const int idx = tid + i * THREADS;
        const int r = idx / TC_BK, p = idx % TC_BK;
        unsigned short v = 0;
        if (r < rows_left && p < k_left) v = reinterpret_cast<const unsigned short*>(g)[r * s_r + p * s_k];
        dst[G::at(r, p)] = v;
    }
}

// ---------------------------------------------------------------- epilogue

template <class O, int MT, int NT>
__device__ __forceinline__ void epilogue_tile(const TcShape& s, void* Cv, void* prev, const void* biasv, i64 row0,
                                              i64 col0, const float (&acc)[MT][NT][4]) {
    if (s.flags & GEMM_FLAG_DISCARD) return;
    const i64 bz = blockIdx.z;
    O* C = reinterpret_cast<O*>(Cv) + bz * s.c_bs;
    O* pre = prev ? reinterpret_cast<O*>(prev) + bz * s.c_bs : nullptr;
    const O* bias = reinterpret_cast<const O*>(biasv);
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const i64 r = row0 + mt * 16 + g;
            const i64 c = col0 + nt * 8 + 2 * t;
            gemm_epilogue_pair(s, C, pre, bias, r, c, acc[mt][nt][0], acc[mt][nt][1]);
            gemm_epilogue_pair(s, C, pre, bias, r + 8, c, acc[mt][nt][2], acc[mt][nt][3]);
        }
    }
}

// ---------------------------------------------------------------- the kernel body

/// A_KMAJOR: A stored with K contiguous ("n"); B_KMAJOR: B stored with K contiguous ("t").
/// ASYNC: 16-byte cp.async loads (aligned operands) or predicated element loads (any strides).
template <class T, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, bool A_KMAJOR, bool B_KMAJOR, bool ASYNC>
__device__ __forceinline__ void gemm_tc_body(const TcShape& s, const T* A, const T* B, void* C, const void* bias,
                                             void* pre) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
    constexpr int MT = WM / 16, NT = WN / 8;
    static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must be a multiple of 16×16");
    using GA = TileGeom<BM, A_KMAJOR>;
    using GB = TileGeom<BN, B_KMAJOR>;
    constexpr int STAGE_ELEMS = GA::ELEMS + GB::ELEMS;

    extern __shared__ __align__(128) unsigned char tc_smem[];
    unsigned short* sm = reinterpret_cast<unsigned short*>(tc_smem);
    const u32 sm_base = smem_u32(tc_smem);

    const int tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;

    // Grouped rasterisation: walk GROUP_M tile rows before moving to the next tile column.
    const int pid = blockIdx.x;
    const int per_group = TC_GROUP_M * s.tiles_n;
    const int group = pid / per_group;
    const int first_m = group * TC_GROUP_M;
    const int group_rows = min(s.tiles_m - first_m, TC_GROUP_M);
    const int in_group = pid - group * per_group;
    const int tile_m = first_m + in_group % group_rows;
    const int tile_n = in_group / group_rows;
    const i64 m0 = (i64)tile_m * BM, n0 = (i64)tile_n * BN;

    const i64 bz = blockIdx.z;
    const T* Ab = A + bz * s.a_bs;
    const T* Bb = B + bz * s.b_bs;

    const int KT = (int)((s.k + TC_BK - 1) / TC_BK);

    auto load_stage = [&](int slot, int kt) {
        const i64 k0 = (i64)kt * TC_BK;
        const int a_off = slot * STAGE_ELEMS, b_off = a_off + GA::ELEMS;
        if constexpr (ASYNC) {
            if constexpr (A_KMAJOR)  // rows m (stride a_rs), contiguous k
                load_tile_async<T, BM, true, THREADS>(sm_base + 2 * a_off, Ab + m0 * s.a_rs + k0, s.a_rs, s.m - m0,
                                                      s.k - k0, Ab, tid);
            else  // rows k (stride a_cs), contiguous m
                load_tile_async<T, BM, false, THREADS>(sm_base + 2 * a_off, Ab + k0 * s.a_cs + m0, s.a_cs, s.k - k0,
                                                       s.m - m0, Ab, tid);
            if constexpr (B_KMAJOR)  // rows n (stride b_cs), contiguous k
                load_tile_async<T, BN, true, THREADS>(sm_base + 2 * b_off, Bb + n0 * s.b_cs + k0, s.b_cs, s.n - n0,
                                                      s.k - k0, Bb, tid);
            else  // rows k (stride b_rs), contiguous n
                load_tile_async<T, BN, false, THREADS>(sm_base + 2 * b_off, Bb + k0 * s.b_rs + n0, s.b_rs, s.k - k0,
                                                       s.n - n0, Bb, tid);
        } else {
            load_tile_generic<T, BM, A_KMAJOR, THREADS>(sm + a_off, Ab + m0 * s.a_rs + k0 * s.a_cs, s.a_rs, s.a_cs,
                                                        s.m - m0, s.k - k0, tid);
            load_tile_generic<T, BN, B_KMAJOR, THREADS>(sm + b_off, Bb + n0 * s.b_cs + k0 * s.b_rs, s.b_cs, s.b_rs,
                                                        s.n - n0, s.k - k0, tid);
        }
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    // Per-lane parts of the ldmatrix row addresses (see the fragment layouts of m16n8k16).
    const int lr = lane & 7, lj = lane >> 3;
    // A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
    const int a_row = A_KMAJOR ? lr + 8 * (lj & 1) : 8 * (lj & 1);
    const int a_k = A_KMAJOR ? 8 * (lj >> 1) : lr + 8 * (lj >> 1);
    // B, two n8 tiles: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
    const int b_row = B_KMAJOR ? lr + 8 * (lj >> 1) : 8 * (lj >> 1);
    const int b_k = B_KMAJOR ? 8 * (lj & 1) : lr + 8 * (lj & 1);

#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (st < KT) load_stage(st, st);
        cp_async_commit();
    }

    for (int kt = 0; kt < KT; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < KT) load_stage(next % STAGES, next);
        cp_async_commit();

        const int slot = kt % STAGES;
        const u32 a_base = sm_base + 2 * (slot * STAGE_ELEMS);
        const u32 b_base = a_base + 2 * GA::ELEMS;
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 16) {
            u32 af[MT][4], bfr[NT][2];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const u32 addr = a_base + 2 * GA::at(wm * WM + mt * 16 + a_row, kk + a_k);
                if constexpr (A_KMAJOR)
                    ldmatrix_x4(addr, af[mt][0], af[mt][1], af[mt][2], af[mt][3]);
                else
                    ldmatrix_x4_trans(addr, af[mt][0], af[mt][1], af[mt][2], af[mt][3]);
            }
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                const u32 addr = b_base + 2 * GB::at(wn * WN + np * 16 + b_row, kk + b_k);
                if constexpr (B_KMAJOR)
                    ldmatrix_x4(addr, bfr[2 * np][0], bfr[2 * np][1], bfr[2 * np + 1][0], bfr[2 * np + 1][1]);
                else
                    ldmatrix_x4_trans(addr, bfr[2 * np][0], bfr[2 * np][1], bfr[2 * np + 1][0], bfr[2 * np + 1][1]);
            }
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++) mma_m16n8k16<T>(acc[mt][nt], af[mt], bfr[nt][0], bfr[nt][1]);
        }
    }
    cp_async_wait<0>();

    const i64 row0 = m0 + wm * WM, col0 = n0 + wn * WN;
    switch (s.out_kind) {
        case 0: epilogue_tile<float, MT, NT>(s, C, pre, bias, row0, col0, acc); break;
        case 1: epilogue_tile<bf16, MT, NT>(s, C, pre, bias, row0, col0, acc); break;
        default: epilogue_tile<f16, MT, NT>(s, C, pre, bias, row0, col0, acc); break;
    }
}

// ---------------------------------------------------------------- instantiations

#define TC_ARGS(T) TcShape s, const T* A, const T* B, void* C, const void* bias, void* pre

#define TC_LARGE(T, S, LAY, AK, BK_)                                                                       \
    extern "C" __global__ void __launch_bounds__(256, 2) gemm_tc_128x128_##LAY##_##S(TC_ARGS(T)) {           \
        gemm_tc_body<T, 128, 128, 2, 4, 4, AK, BK_, true>(s, A, B, C, bias, pre);                          \
    }
#define TC_SMALL(T, S, LAY, AK, BK_)                                                                       \
    extern "C" __global__ void __launch_bounds__(128, 2) gemm_tc_64x64_##LAY##_##S(TC_ARGS(T)) {              \
        gemm_tc_body<T, 64, 64, 2, 2, 3, AK, BK_, true>(s, A, B, C, bias, pre);                            \
    }
#define TC_ALL(T, S)                                                                                       \
    TC_LARGE(T, S, nn, true, false)                                                                        \
    TC_LARGE(T, S, nt, true, true)                                                                         \
    TC_LARGE(T, S, tn, false, false)                                                                       \
    TC_LARGE(T, S, tt, false, true)                                                                        \
    TC_SMALL(T, S, nn, true, false)                                                                        \
    TC_SMALL(T, S, nt, true, true)                                                                         \
    TC_SMALL(T, S, tn, false, false)                                                                       \
    TC_SMALL(T, S, tt, false, true)                                                                        \
    extern "C" __global__ void __launch_bounds__(128, 2) gemm_tc_generic_##S(TC_ARGS(T)) {                    \
        gemm_tc_body<T, 64, 64, 2, 2, 2, true, true, false>(s, A, B, C, bias, pre);                        \
    }

TC_ALL(bf16, bf16)
TC_ALL(f16, f16)

// ---------------------------------------------------------------- bias gradient

/// partial[split·cols + c] = Σ dY[r, c] over the rows of split `blockIdx.y`
/// (rows split·rows_per_split .. min(rows, (split+1)·rows_per_split)), in a fixed order.
/// Block 32 × 8: 32 columns, 8 row phases.
template <class T>
__device__ void bias_grad_partial(const T* dy, float* partial, i64 rows, i64 cols, i64 ld, i64 rows_per_split) {
    __shared__ float red[8][33];
    const i64 c = (i64)blockIdx.x * 32 + threadIdx.x;
    const i64 r0 = (i64)blockIdx.y * rows_per_split;
    const i64 r1 = min(rows, r0 + rows_per_split);
    float sum = 0.0f;
    if (c < cols)
        for (i64 r = r0 + threadIdx.y; r < r1; r += 8) sum += to_f32(dy[r * ld + c]);
    red[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y != 0 || c >= cols) return;
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) total += red[i][threadIdx.x];
    partial[(i64)blockIdx.y * cols + c] = total;
}
#define BIAS_GRAD(T, S)                                                                                    \
    extern "C" __global__ void __launch_bounds__(256) bias_grad_partial_##S(                               \
        const T* dy, float* partial, i64 rows, i64 cols, i64 ld, i64 rows_per_split) {                     \
        bias_grad_partial<T>(dy, partial, rows, cols, ld, rows_per_split);                                 \
    }
FOR_EACH_DTYPE(BIAS_GRAD)
