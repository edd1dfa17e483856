// Tensor-core matrix product for Hopper (sm_90a): TMA loads, mbarrier pipeline, wgmma.
//
//     pre  = alpha · A[b]·B[b] (+ bias per column)
//     C[b] = act(pre) + beta · C[b]            act = identity or GeLU (tanh form)
//
// The same product, epilogues and layouts as matmul_tc.cu (see there for "n"/"t"): bf16 or f16
// inputs, f32 accumulation, f32/bf16/f16 output chosen at run time by `out_kind`. Only views
// that TMA can describe come here (unit innermost stride, 16-byte aligned base, leading and
// batch strides); the wrapper (matmul_wgmma.rs) sends every other view to matmul_tc.
//
// Block: 384 threads = 3 warpgroups, warp-specialised, persistent (one block per SM walks the
// tiles blockIdx.x, blockIdx.x + gridDim.x, ...; the same order in every role).
//   warpgroup 0, the producer: gives most of its registers back (setmaxnreg.dec), and one thread
//     issues the TMA loads (cp.async.bulk.tensor.3d, 128-byte swizzle) of each 64-deep K slice
//     of A and B into a ring of STAGES shared-memory slots;
//   warpgroups 1 and 2, the consumers: take more registers (setmaxnreg.inc); consumer c owns
//     rows 64c..64c+63 of the BM = 128 row tile and all BN (128 or 256) columns, and issues
//     wgmma.mma_async.m64nBNk16 (4 per K slice) with f32 accumulators in registers
//     (BN/2 per thread), then applies the epilogue straight from the registers to global memory.
//
// Ring protocol (per slot s, two mbarriers in shared memory):
//   full[s]  (count 1): the producer arrives with expect_tx(bytes of the slot) and the TMA
//            loads complete the transaction; consumers wait on it;
//   empty[s] (count 8 = consumer warps): lane 0 of each consumer warp arrives once the wgmma
//            groups reading the slot have completed (wgmma.wait_group); the producer waits on
//            it before overwriting the slot.
// Both sides walk the same sequence of (tile, K slice) uses, slot = use % STAGES, and wait with
// try_wait.parity on phase (use / STAGES) & 1 (consumers, full) or its complement (producer,
// empty: a fresh barrier counts its "previous" phase, parity 1, as complete, so the first
// STAGES uses go ahead).
// Consumers keep one wgmma group in flight: after committing slice kt they wait until at most
// one group is pending, which means slice kt-1 has been read, and release its slot.
//
// Shared-memory layout of one slot (1024-byte aligned; every operand tile is made of 128-byte
// rows swizzled in 1024-byte atoms, the 16-byte chunk c of row r stored at chunk c ^ (r % 8),
// which is what TMA's SWIZZLE_128B writes and what a wgmma descriptor with swizzle mode 1 reads):
//   A K-major ("n", A stored [M, K]): one box {64 k, 128 m}: row m at m·128 bytes; consumer c's
//     64 rows start at c·8192. Descriptor: SBO = 1024 (8 rows), LBO unused (1); K step of 16
//     = +32 bytes on the start address.
//   A M-major ("t", A stored [K, M]): two boxes {64 m, 64 k} at 0 and 8192: row k of box j
//     holds m = 64j..64j+63. Consumer c reads box c. Descriptor (transposed, tnspA = 1): SBO =
//     1024 (8 k rows), LBO = 8192 (next 64 m; unused with 64 rows); K step of 16 = +2048 bytes.
//   B K-major ("t", B stored [N, K]): one box {64 k, BN n}: as A K-major with BN rows.
//   B N-major ("n", B stored [K, N]): BN/64 boxes {64 n, 64 k}, 8192 bytes apart. Descriptor
//     (tnspB = 1): SBO = 1024, LBO = 8192; K step of 16 = +2048 bytes.
// (kernels/tests/host_emulation.rs runs this file on the CPU, TMA, mbarriers and wgmma emulated
// in these layouts, against an f64 product.)
//
// Ragged edges: the tensor maps carry the true M, N, K (and batch), so TMA zero-fills whatever
// part of a box lies outside the matrix (the transaction still counts the whole box), and the
// epilogue guards rows and columns. A wholly out-of-range K tail is never loaded (KT = ceil(K/64)).
//
// Accumulator fragment of wgmma .m64nNk16 with f32 D (PTX ISA, "Register Fragments"): thread
// of warp w (in its warpgroup), lane = 4g + t holds d[4j + e] at row 16w + g + 8·(e / 2) and
// column 8j + 2t + (e % 2), j = 0..N/8-1.

#define WG_BM 128
#define WG_BK 64
#define WG_CONSUMERS 2
#define WG_THREADS 384
#define WG_GROUP_M 8
// Registers per thread after setmaxnreg. The block is launched with 168 (ptxas's count under
// __launch_bounds__(384, 1)); 128·40 + 256·232 = 384·168, so the consumers' increase is exactly
// what the producer gives back (kernels/tests/sass_check.rs checks the 168).
#define WG_PRODUCER_REGS 40
#define WG_CONSUMER_REGS 232

/// The driver's CUtensorMap (an opaque 128-byte object made by cuTensorMapEncodeTiled on the
/// host), passed by value as a __grid_constant__ kernel parameter.
struct __align__(64) TmaMap {
    u64 opaque[16];
};

struct WgShape {
    i64 m, n, k;
    i64 ldc, c_bs;  // C element (b, i, j) at b·c_bs + i·ldc + j (pre-activation too)
    float alpha, beta;
    int batch, tiles_m, tiles_n;
    int a_batched, b_batched;  // whether the tensor map has a batch dimension to index
    int out_kind;              // 0 f32, 1 bf16, 2 f16
    int flags;                 // GEMM_FLAG_* (common.cuh)
};

// The PTX wrappers (mbarriers, TMA, setmaxnreg, wgmma) are in hopper.cuh, prepended to this file.

template <class T>
struct WgIsBf16 {
    static constexpr bool value = false;
};
template <>
struct WgIsBf16<bf16> {
    static constexpr bool value = true;
};

/// d += A·B for one K step of 16 on a 64 × BN block.
template <class T, int BN, int TA, int TB>
__device__ __forceinline__ void wgmma_step(float (&d)[BN / 2], u64 da, u64 db) {
    static_assert(BN == 128 || BN == 256, "BN is 128 or 256");
    if constexpr (BN == 256) {
        if constexpr (WgIsBf16<T>::value)
            wgmma_ss_m64n256k16_bf16<TA, TB>(d, da, db, 1);
        else
            wgmma_ss_m64n256k16_f16<TA, TB>(d, da, db, 1);
    } else {
        if constexpr (WgIsBf16<T>::value)
            wgmma_ss_m64n128k16_bf16<TA, TB>(d, da, db, 1);
        else
            wgmma_ss_m64n128k16_f16<TA, TB>(d, da, db, 1);
    }
}

// ---------------------------------------------------------------- epilogue

/// Stores one consumer's 64 × BN accumulators; `row0` is the first row of the warpgroup's
/// block, `col0` the tile's first column (fragment layout in the header comment).
template <class O, int BN>
__device__ __forceinline__ void wg_epilogue(const WgShape& s, void* Cv, void* prev, const void* biasv, i64 bz, i64 row0,
                                            i64 col0, const float (&acc)[BN / 2]) {
    if (s.flags & GEMM_FLAG_DISCARD) return;
    O* C = reinterpret_cast<O*>(Cv) + bz * s.c_bs;
    O* pre = prev ? reinterpret_cast<O*>(prev) + bz * s.c_bs : nullptr;
    const O* bias = reinterpret_cast<const O*>(biasv);
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3;
    const int g = lane >> 2, t = lane & 3;
    const i64 r = row0 + 16 * warp + g;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        const i64 c = col0 + 8 * j + 2 * t;
        gemm_epilogue_pair(s, C, pre, bias, r, c, acc[4 * j], acc[4 * j + 1]);
        gemm_epilogue_pair(s, C, pre, bias, r + 8, c, acc[4 * j + 2], acc[4 * j + 3]);
    }
}

// ---------------------------------------------------------------- tile order

struct WgTile {
    int batch, tile_m, tile_n;
};

/// Tile `t` of the persistent walk: batch entry, then grouped rasterisation (GROUP_M tile rows
/// walked down M before moving along N, so that a wave of blocks shares A and B tiles in L2).
__device__ __forceinline__ WgTile wg_tile(const WgShape& s, int t) {
    const int per_batch = s.tiles_m * s.tiles_n;
    WgTile out;
    out.batch = t / per_batch;
    const int pid = t - out.batch * per_batch;
    const int per_group = WG_GROUP_M * s.tiles_n;
    const int group = pid / per_group;
    const int first_m = group * WG_GROUP_M;
    const int group_rows = min(s.tiles_m - first_m, WG_GROUP_M);
    const int in_group = pid - group * per_group;
    out.tile_m = first_m + in_group % group_rows;
    out.tile_n = in_group / group_rows;
    return out;
}

// ---------------------------------------------------------------- the kernel body

/// A_KMAJOR: A stored with K contiguous ("n"); B_KMAJOR: B stored with K contiguous ("t").
template <class T, int BN, int STAGES, bool A_KMAJOR, bool B_KMAJOR>
__device__ __forceinline__ void gemm_wgmma_body(const TmaMap* map_a, const TmaMap* map_b, const WgShape& s, void* C,
                                                const void* bias, void* pre) {
    constexpr u32 A_BYTES = WG_BM * WG_BK * 2;
    constexpr u32 B_BYTES = BN * WG_BK * 2;
    constexpr u32 STAGE_BYTES = A_BYTES + B_BYTES;
    constexpr u32 BOX_BYTES = 64 * WG_BK * 2;  // one {64, 64} box of 128-byte rows
    static_assert(STAGE_BYTES % 1024 == 0, "slots must keep the 1024-byte swizzle alignment");

    extern __shared__ unsigned char wg_smem[];
    __shared__ __align__(8) u64 wg_bars[2 * STAGES];
    const u32 base = (smem_u32(wg_smem) + 1023u) & ~1023u;
    const u32 full0 = smem_u32(wg_bars), empty0 = full0 + 8 * STAGES;

    const int tid = threadIdx.x;
    const int wg = tid >> 7, lane = tid & 31;
    if (tid == 0) {
#pragma unroll
        for (int i = 0; i < STAGES; i++) {
            mbar_init(full0 + 8 * i, 1);
            mbar_init(empty0 + 8 * i, WG_CONSUMERS * 4);
        }
        mbar_fence_init();
    }
    __syncthreads();

    const int KT = (int)((s.k + WG_BK - 1) / WG_BK);
    const int total = s.tiles_m * s.tiles_n * s.batch;

    if (wg == 0) {
        // ------------------------------------------------ producer
        setmaxnreg_dec<WG_PRODUCER_REGS>();
        if (tid != 0) return;
        tma_prefetch_map(map_a);
        tma_prefetch_map(map_b);
        u32 stage = 0, phase = 0;
        for (int t = blockIdx.x; t < total; t += gridDim.x) {
            const WgTile tile = wg_tile(s, t);
            const int m0 = tile.tile_m * WG_BM, n0 = tile.tile_n * BN;
            const int za = s.a_batched ? tile.batch : 0, zb = s.b_batched ? tile.batch : 0;
            for (int kt = 0; kt < KT; kt++) {
                const int k0 = kt * WG_BK;
                mbar_wait(empty0 + 8 * stage, phase ^ 1);
                const u32 full = full0 + 8 * stage;
                mbar_arrive_expect_tx(full, STAGE_BYTES);
                const u32 sa = base + stage * STAGE_BYTES, sb = sa + A_BYTES;
                if constexpr (A_KMAJOR) {
                    tma_load_3d(sa, map_a, full, k0, m0, za);
                } else {
#pragma unroll
                    for (int j = 0; j < WG_BM / 64; j++) tma_load_3d(sa + j * BOX_BYTES, map_a, full, m0 + 64 * j, k0, za);
                }
                if constexpr (B_KMAJOR) {
                    tma_load_3d(sb, map_b, full, k0, n0, zb);
                } else {
#pragma unroll
                    for (int j = 0; j < BN / 64; j++) tma_load_3d(sb + j * BOX_BYTES, map_b, full, n0 + 64 * j, k0, zb);
                }
                if (++stage == STAGES) {
                    stage = 0;
                    phase ^= 1;
                }
            }
        }
    } else {
        // ------------------------------------------------ consumers
        setmaxnreg_inc<WG_CONSUMER_REGS>();
        const int cw = wg - 1;  // rows 64·cw .. 64·cw+63 of the tile
        // Both A layouts put consumer cw's 64 rows 8192 bytes apart (64 rows of 128 bytes, or
        // box cw of 64 k rows).
        const u32 a_off = (u32)cw * BOX_BYTES;
        constexpr u32 A_LBO = A_KMAJOR ? 16 : BOX_BYTES, B_LBO = B_KMAJOR ? 16 : BOX_BYTES;
        constexpr u32 A_KSTEP = A_KMAJOR ? 32 : 16 * 128, B_KSTEP = B_KMAJOR ? 32 : 16 * 128;
        float acc[BN / 2];
        u32 stage = 0, phase = 0;
        for (int t = blockIdx.x; t < total; t += gridDim.x) {
            const WgTile tile = wg_tile(s, t);
#pragma unroll
            for (int i = 0; i < BN / 2; i++) acc[i] = 0.0f;
            u32 prev = 0;
            for (int kt = 0; kt < KT; kt++) {
                mbar_wait(full0 + 8 * stage, phase);
                const u32 sa = base + stage * STAGE_BYTES + a_off, sb = base + stage * STAGE_BYTES + A_BYTES;
                fence_regs(acc);
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < WG_BK / 16; kk++) {
                    const u64 da = sw128_desc(sa + kk * A_KSTEP, A_LBO, 1024);
                    const u64 db = sw128_desc(sb + kk * B_KSTEP, B_LBO, 1024);
                    wgmma_step<T, BN, A_KMAJOR ? 0 : 1, B_KMAJOR ? 0 : 1>(acc, da, db);
                }
                wgmma_commit();
                fence_regs(acc);
                // At most one group pending: slice kt-1 has been read, its slot can be refilled.
                wgmma_wait<1>();
                fence_regs(acc);
                if (kt > 0 && lane == 0) mbar_arrive(empty0 + 8 * prev);
                prev = stage;
                if (++stage == STAGES) {
                    stage = 0;
                    phase ^= 1;
                }
            }
            wgmma_wait<0>();
            fence_regs(acc);
            if (KT > 0 && lane == 0) mbar_arrive(empty0 + 8 * prev);

            const i64 row0 = (i64)tile.tile_m * WG_BM + 64 * cw, col0 = (i64)tile.tile_n * BN;
            switch (s.out_kind) {
                case 0: wg_epilogue<float, BN>(s, C, pre, bias, tile.batch, row0, col0, acc); break;
                case 1: wg_epilogue<bf16, BN>(s, C, pre, bias, tile.batch, row0, col0, acc); break;
                default: wg_epilogue<f16, BN>(s, C, pre, bias, tile.batch, row0, col0, acc); break;
            }
        }
    }
}

// ---------------------------------------------------------------- instantiations

#define WG_ARGS const __grid_constant__ TmaMap map_a, const __grid_constant__ TmaMap map_b, WgShape s, void *C, \
                const void *bias, void *pre

#define WG_KERNEL(T, S, BN, STAGES, LAY, AK, BK_)                                                          \
    extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) gemm_wgmma_128x##BN##_##LAY##_##S(WG_ARGS) { \
        gemm_wgmma_body<T, BN, STAGES, AK, BK_>(&map_a, &map_b, s, C, bias, pre);                          \
    }
#define WG_LAYOUTS(T, S, BN, STAGES)                                                                       \
    WG_KERNEL(T, S, BN, STAGES, nn, true, false)                                                           \
    WG_KERNEL(T, S, BN, STAGES, nt, true, true)                                                            \
    WG_KERNEL(T, S, BN, STAGES, tn, false, false)                                                          \
    WG_KERNEL(T, S, BN, STAGES, tt, false, true)

// 128×256: 4 slots of 48 KiB; 128×128: 6 slots of 32 KiB (192 KiB of the 227 KiB either way).
WG_LAYOUTS(bf16, bf16, 256, 4)
WG_LAYOUTS(f16, f16, 256, 4)
WG_LAYOUTS(bf16, bf16, 128, 6)
WG_LAYOUTS(f16, f16, 128, 6)
