// Shared prelude of every polylm CUDA kernel file.
//
// It is prepended to each kernel source before NVRTC compiles it, so kernels need no
// `#include` and no CUDA toolkit headers: bf16 and f16 are plain 16-bit storage types whose
// conversions to and from f32 go through PTX `cvt` instructions (round to nearest even).
// All arithmetic happens in f32.

typedef unsigned long long u64;
typedef long long i64;
typedef unsigned int u32;

/// +infinity without <math.h>.
#define POLY_INF __int_as_float(0x7f800000)

/// bf16 storage: the upper 16 bits of an IEEE f32.
struct bf16 { unsigned short bits; };
/// IEEE half-precision storage.
struct f16 { unsigned short bits; };

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __uint_as_float(((u32)v.bits) << 16); }
// Host emulation (kernels/emu/emu.hpp, which defines POLYLM_HOST_EMULATION) supplies its own
// versions of the functions written in PTX below.
#ifndef POLYLM_HOST_EMULATION
__device__ __forceinline__ float to_f32(f16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}

#endif
template <class T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
#ifndef POLYLM_HOST_EMULATION
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float v) {
    bf16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
    return r;
}
template <> __device__ __forceinline__ f16 from_f32<f16>(float v) {
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(v));
    return r;
}
#endif

/// Sum over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/// Maximum over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/// Sum over a whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
/// result. `scratch` holds 32 floats of shared memory; the call synchronises the block.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(t);
}

/// Maximum over a whole block; see `block_sum`.
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < warps ? scratch[lane] : -POLY_INF;
    return warp_max(t);
}

/// The tanh form of GeLU and its derivative, as the CPU kernels compute them.
__device__ __forceinline__ float gelu_tanh(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
    float u = k * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}
__device__ __forceinline__ float gelu_tanh_grad(float x) {
    const float k = 0.7978845608028654f;
    float x2 = x * x;
    float u = k * (x + 0.044715f * x2 * x);
    float t = tanhf(u);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * x2);
}

/// Sums each of `N` values over a whole block at once (one pair of barriers for all of them);
/// every thread gets the sums in `v`. `scratch` holds `32 * N` floats; see `block_sum`.
template <int N>
__device__ __forceinline__ void block_sum_n(float (&v)[N], float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int i = 0; i < N; i++) v[i] = warp_sum(v[i]);
    __syncthreads();
    if (lane == 0) {
#pragma unroll
        for (int i = 0; i < N; i++) scratch[32 * i + warp] = v[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < N; i++) v[i] = warp_sum(lane < warps ? scratch[32 * i + lane] : 0.0f);
}

/// Sum of two values over a whole block at once; see `block_sum_n`. `scratch` holds 64 floats.
__device__ __forceinline__ float2 block_sum2(float a, float b, float* scratch) {
    float v[2] = {a, b};
    block_sum_n<2>(v, scratch);
    return make_float2(v[0], v[1]);
}

/// Loads `N` consecutive elements starting at `p` as f32; `p` must be aligned to the vector.
template <class T, int N>
__device__ __forceinline__ void load_pack(const T* p, float* out) {
    if constexpr (sizeof(T) * N == 16) {
        uint4 raw = *reinterpret_cast<const uint4*>(p);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < N; i++) out[i] = to_f32(e[i]);
    } else {
#pragma unroll
        for (int i = 0; i < N; i++) out[i] = to_f32(p[i]);
    }
}
/// Stores `N` f32 values as `T` at `p`, aligned to the vector.
template <class T, int N>
__device__ __forceinline__ void store_pack(T* p, const float* in) {
    if constexpr (sizeof(T) * N == 16) {
        uint4 raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int i = 0; i < N; i++) e[i] = from_f32<T>(in[i]);
        *reinterpret_cast<uint4*>(p) = raw;
    } else {
#pragma unroll
        for (int i = 0; i < N; i++) p[i] = from_f32<T>(in[i]);
    }
}
/// Elements of `T` in one 16-byte vector.
template <class T> struct VecWidth { static constexpr int value = 16 / sizeof(T); };

/// True when `p` is aligned to 16 bytes.
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<u64>(p) & 15) == 0; }

/// Column partial sums over row splits (the reductions along a long axis: `sum_axis`, the bias
/// gradient of bias + GeLU) run as blocks of 256 threads: 32 column lanes (threadIdx.x % 32),
/// each taking `N` adjacent columns, by 8 row lanes (threadIdx.x / 32). A row of `sums` holds one
/// row lane's sums of the block's 32·N columns.
#define COLUMN_SUMS_ROW (32 * 8 + 1)

/// The end of such a block: each thread's sums `acc` of its `N` columns go through `sums`, and
/// the block writes, for each of its 32·N columns (from `col0`) below `cols`, the sum over the
/// 8 row lanes in order to `partial[column]`.
template <int N>
__device__ __forceinline__ void write_column_partials(const float (&acc)[N], float (*sums)[COLUMN_SUMS_ROW],
                                                      float* partial, i64 col0, i64 cols) {
    const int lane = threadIdx.x & 31, row_lane = threadIdx.x >> 5;
#pragma unroll
    for (int e = 0; e < N; e++) sums[row_lane][lane * N + e] = acc[e];
    __syncthreads();
    for (int k = threadIdx.x; k < 32 * N; k += 256) {
        const i64 c = col0 + k;
        if (c < cols) {
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) s += sums[j][k];
            partial[c] = s;
        }
    }
}

/// Loads 4 consecutive elements (16 bytes of f32, 8 of bf16/f16) as f32; `p` aligned to that.
template <class T>
__device__ __forceinline__ void load4(const T* p, float* out) {
    if constexpr (sizeof(T) == 4) {
        float4 v = *reinterpret_cast<const float4*>(p);
        out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
    } else {
        uint2 raw = *reinterpret_cast<const uint2*>(p);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < 4; i++) out[i] = to_f32(e[i]);
    }
}
/// Stores 4 f32 values as `T` at `p`, aligned to the 4-element vector.
template <class T>
__device__ __forceinline__ void store4(T* p, const float* in) {
    if constexpr (sizeof(T) == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
    } else {
        uint2 raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int i = 0; i < 4; i++) e[i] = from_f32<T>(in[i]);
        *reinterpret_cast<uint2*>(p) = raw;
    }
}

/// Adds `a` and `b` atomically to the f32 pair at `p` (a global address, 8-byte aligned): one
/// vector reduction on sm_90 and later (`red.global.add.v2.f32`: half the L2 atomic operations
/// of flash attention's dQ accumulation), two scalar atomics before.
__device__ __forceinline__ void atomic_add_f32x2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(POLYLM_HOST_EMULATION)
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
    atomicAdd(p, a);
    atomicAdd(p + 1, b);
#endif
}

/// Instantiates `MACRO(T, suffix)` for the three storage types.
#define FOR_EACH_DTYPE(MACRO) MACRO(float, f32) MACRO(bf16, bf16) MACRO(f16, f16)

// ---------------------------------------------------------------- tensor-core PTX wrappers (sm_80+)
// Shared by matmul_tc.cu, flash_attention.cu and the Hopper files.
#ifndef POLYLM_HOST_EMULATION

/// The shared-memory (32-bit) address of a generic pointer into shared memory.
__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

/// 16-byte asynchronous copy global → shared; bytes beyond `src_bytes` (0..16) are zero-filled
/// and not read.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/// Four 8×8 b16 matrices from shared memory (lane l gives the address of row l % 8 of matrix l / 8).
__device__ __forceinline__ void ldmatrix_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}
/// [`ldmatrix_x4`], each matrix transposed.
__device__ __forceinline__ void ldmatrix_x4_trans(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}

/// d += a·b for one m16n8k16 tile of T (bf16 or f16) with f32 accumulators (a: 4 registers,
/// b: 2, d: 4 floats).
template <class T> __device__ __forceinline__ void mma_m16n8k16(float* d, const u32* a, u32 b0, u32 b1);
template <> __device__ __forceinline__ void mma_m16n8k16<bf16>(float* d, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma_m16n8k16<f16>(float* d, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// Two f32 values rounded to T and packed in one register, `lo` in the lower 16 bits (the lower
/// column / element index).
template <class T> __device__ __forceinline__ u32 pack2(float lo, float hi);
template <> __device__ __forceinline__ u32 pack2<bf16>(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <> __device__ __forceinline__ u32 pack2<f16>(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
#endif  // POLYLM_HOST_EMULATION

// ---------------------------------------------------------------- GEMM epilogue
// Shared by the tensor-core products (matmul_tc.cu, matmul_wgmma.cu). `Shape` has m, n, ldc,
// alpha, beta and flags (the GEMM_FLAG_* bits, matmul_tc.rs's FLAG_*).

#define GEMM_FLAG_BIAS 1
#define GEMM_FLAG_GELU 2
#define GEMM_FLAG_PRE 4
#define GEMM_FLAG_VEC 8
#define GEMM_FLAG_DISCARD 16  // no epilogue at all: times the main loop alone (benchmarks)

/// Stores v0 at p[0] and, if `both`, v1 at p[1]; as one 8- or 4-byte store when `vec`.
template <class O>
__device__ __forceinline__ void gemm_store_pair(O* p, float v0, float v1, bool both, bool vec) {
    if (vec && both) {
        if constexpr (sizeof(O) == 4) {
            *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
        } else {
            O e0 = from_f32<O>(v0), e1 = from_f32<O>(v1);
            *reinterpret_cast<u32*>(p) = (u32)e0.bits | ((u32)e1.bits << 16);
        }
    } else {
        p[0] = from_f32<O>(v0);
        if (both) p[1] = from_f32<O>(v1);
    }
}

/// Applies the epilogue (alpha, bias, GeLU with the pre-activation, beta·C) to the pair of
/// accumulators at (r, c), (r, c+1) and stores them; elements outside m × n are skipped.
template <class Shape, class O>
__device__ __forceinline__ void gemm_epilogue_pair(const Shape& s, O* C, O* pre, const O* bias, i64 r, i64 c,
                                                   float v0, float v1) {
    if (r >= s.m || c >= s.n) return;
    const bool both = c + 1 < s.n;
    const bool vec = (s.flags & GEMM_FLAG_VEC) != 0;
    v0 *= s.alpha;
    v1 *= s.alpha;
    if (s.flags & GEMM_FLAG_BIAS) {
        v0 += to_f32(bias[c]);
        if (both) v1 += to_f32(bias[c + 1]);
    }
    const i64 off = r * s.ldc + c;
    if (s.flags & GEMM_FLAG_GELU) {
        if (s.flags & GEMM_FLAG_PRE) gemm_store_pair<O>(pre + off, v0, v1, both, vec);
        v0 = gelu_tanh(v0);
        v1 = gelu_tanh(v1);
    }
    if (s.beta != 0.0f) {
        v0 += s.beta * to_f32(C[off]);
        if (both) v1 += s.beta * to_f32(C[off + 1]);
    }
    gemm_store_pair<O>(C + off, v0, v1, both, vec);
}

// ---------------------------------------------------------------- flash attention's shape
// Shared by flash_attention.cu and flash_attention_hopper.cu (flash_attention.rs's FlashDims).

// Element strides of one [batch, heads, seq, D] operand (D contiguous; the operand's offset is
// already in its pointer). Row strides fit in 32 bits (checked on the host).
struct FaLayout {
    long long batch, head, row;
};

// The Hopper backward skips dQ (its products and its adds into the accumulator): a benchmark
// times the rest of the pass. The portable backward ignores it.
#define FA_PROBE_NO_DQ 1

struct FlashDims {
    int bh;      // batch × heads
    int heads;   // heads per sequence
    int seq;     // sequence length
    int causal;  // 1: key j is masked for query i when j > i
    float scale; // softmax scale (usually 1/sqrt(D))
    int probe;   // diagnostic bits (FA_PROBE_*), 0 outside benchmarks; keeps the layouts 8-byte aligned
    FaLayout q, k, v, o, dout, dq, dk, dv;
};

/// Element offset of head `bh` (batch × heads flattened) of an operand laid out as `l`.
__device__ __forceinline__ i64 fa_head(const FaLayout& l, int bh, int heads) {
    return (i64)(bh / heads) * l.batch + (i64)(bh % heads) * l.head;
}

// ---------------------------------------------------------------- sm_90: mbarriers, bulk copies, clusters
// Compiled only for compute capability 9.0 and later; kernels that use them sit under the same
// guard (cross_entropy.cu) or in files registered with `needs_sm90a` (hopper.cuh).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(POLYLM_HOST_EMULATION)

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
/// Makes the barrier initialisation visible to the async proxy (TMA) and the other threads.
__device__ __forceinline__ void mbar_fence_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
/// Arrives once and adds `bytes` to the transaction count the current phase waits for.
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
/// How long an mbarrier wait polls before it gives up: 4 s (the low 32 bits of the nanosecond
/// clock, one register, wrap every 4.29 s). No wait of a working kernel comes near it; a kernel
/// that would otherwise hang forever (a transaction count never met, a parity mixed up, a
/// producer gone) faults instead (`fault_kernel`), which the host sees at its next
/// synchronisation, and the GPU is free again.
#define POLYLM_MBAR_TIMEOUT_NS 4000000000u

/// Ends the whole kernel with an error: a store to address 0, which is never mapped, so the
/// host's next synchronisation reports an illegal address. (`trap` would end it too, but makes
/// ptxas spill in flash_attention_hopper's register-tight consumer warpgroups; the store
/// costs nothing until it runs.)
__device__ __forceinline__ void fault_kernel() {
    asm volatile("st.global.u32 [%0], %1;\n" ::"l"(0ull), "r"(0u) : "memory");
}
__device__ __forceinline__ u32 global_timer_lo_ns() {
    u32 t;
    asm volatile("mov.u32 %0, %%globaltimer_lo;\n" : "=r"(t));
    return t;
}
/// One poll of mbarrier `bar` for the completion of the phase of parity `parity`; with
/// `CLUSTER`, with cluster-scope acquire (for data other blocks of the cluster sent).
template <bool CLUSTER>
__device__ __forceinline__ u32 mbar_try_wait(u32 bar, u32 parity) {
    u32 done;
    if (CLUSTER) {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, "
            "p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } else {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    }
    return done;
}
/// Polls until the phase completes; faults after `POLYLM_MBAR_TIMEOUT_NS` (the clock is read
/// only once the first poll has failed).
template <bool CLUSTER>
__device__ __forceinline__ void mbar_wait_until_done(u32 bar, u32 parity) {
    if (mbar_try_wait<CLUSTER>(bar, parity)) return;
    const u32 start = global_timer_lo_ns();
    while (!mbar_try_wait<CLUSTER>(bar, parity)) {
        if (global_timer_lo_ns() - start > POLYLM_MBAR_TIMEOUT_NS) fault_kernel();
    }
}
/// Waits until the phase of parity `parity` has completed (faults after the timeout).
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) { mbar_wait_until_done<false>(bar, parity); }

/// Bulk copy (TMA, one dimension) of `bytes` (a multiple of 16; both addresses 16-byte aligned)
/// from global `src` to this block's shared memory at `dst`, completing its bytes of the
/// transaction on mbarrier `bar`.
__device__ __forceinline__ void bulk_load(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}

/// This block's rank in its cluster.
__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}

/// A barrier over every thread of the cluster: shared-memory writes made before it, local or
/// remote, are visible to every thread of the cluster after it. Every thread must call it.
__device__ __forceinline__ void cluster_barrier() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

/// Sends (a, b) to block `rank` of the cluster: stores them at shared address `addr` of this
/// block's layout in that block's shared memory and completes 8 bytes of the transaction on its
/// mbarrier at `bar` (distributed shared memory; no cluster barrier needed). The receiver waits
/// on that mbarrier with `mbar_wait_cluster`.
__device__ __forceinline__ void cluster_send2(u32 addr, u32 bar, u32 rank, float a, float b) {
    u32 raddr, rbar;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(raddr) : "r"(addr), "r"(rank));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(rbar) : "r"(bar), "r"(rank));
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];\n" ::"r"(raddr),
                 "f"(a), "f"(b), "r"(rbar)
                 : "memory");
}

/// `mbar_wait` with cluster-scope acquire: for data other blocks of the cluster sent with
/// `cluster_send2`.
__device__ __forceinline__ void mbar_wait_cluster(u32 bar, u32 parity) {
    mbar_wait_until_done<true>(bar, parity);
}

#endif  // __CUDA_ARCH__ >= 900
