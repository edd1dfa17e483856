// The Hopper (sm_90a) prelude: PTX wrappers shared by the kernels that use tensor-map TMA,
// setmaxnreg and wgmma (matmul_wgmma.cu, flash_attention_hopper.cu). Prepended after common.cuh
// (whose sm_90 section has the mbarrier wrappers) to every kernel file registered with
// `needs_sm90a`.

// Host emulation (kernels/emu/emu_hopper.hpp) supplies its own TMA, setmaxnreg and wgmma.
#ifndef POLYLM_HOST_EMULATION
// ---------------------------------------------------------------- TMA

/// TMA: the box of the tensor map at generic address `map` (a `__grid_constant__` parameter) at
/// coordinates (c0 innermost, c1, c2) into shared memory at `dst` (1024-byte aligned for the
/// 128B swizzle), completing its bytes of the transaction on mbarrier `bar`.
__device__ __forceinline__ void tma_load_3d(u32 dst, const void* map, u32 bar, int c0, int c1, int c2) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
        "[%5];\n" ::"r"(dst),
        "l"(reinterpret_cast<u64>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
        : "memory");
}
/// `tma_load_3d` with a fourth coordinate c3 (outermost).
__device__ __forceinline__ void tma_load_4d(u32 dst, const void* map, u32 bar, int c0, int c1, int c2, int c3) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, "
        "%5}], [%6];\n" ::"r"(dst),
        "l"(reinterpret_cast<u64>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
        : "memory");
}
__device__ __forceinline__ void tma_prefetch_map(const void* map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<u64>(map)) : "memory");
}

// ---------------------------------------------------------------- warp specialisation

template <int REGS>
__device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS));
}
template <int REGS>
__device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS));
}

// ---------------------------------------------------------------- wgmma

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
/// Orders this thread's ordinary shared-memory writes before later reads of the same memory by
/// the async proxy (wgmma descriptors, TMA stores); a barrier then makes them everyone's.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/// Pins registers in place: no computation producing or reading them moves across this point
/// (used around wgmma.fence and after wgmma waits, so that the compiler neither sinks a write
/// of an operand below the fence nor hoists a read of an accumulator above the wait).
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; i++) asm volatile("" : "+f"(d[i])::"memory");
}

#endif  // POLYLM_HOST_EMULATION

/// A shared-memory matrix descriptor for wgmma with 128-byte swizzling: start address, leading
/// and stride byte offsets, each stored >> 4 in 14 bits; swizzle mode 1 (128B) in bits 62-63;
/// base offset 0 (every swizzle atom starts on a 1024-byte boundary).
__device__ __forceinline__ u64 sw128_desc(u32 addr, u32 lbo, u32 sbo) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)((lbo & 0x3FFFF) >> 4) << 16) |
           ((u64)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

#ifndef POLYLM_HOST_EMULATION
// The accumulator operands of a wgmma asm statement (`d` is the accumulator array) and their
// numbers in its text, for N/2 = 32, 64 and 128 accumulators per thread.
#define WG_ACC8(i) \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define WG_ACC16 WG_ACC8(0), WG_ACC8(8)
#define WG_ACC32 WG_ACC16, WG_ACC8(16), WG_ACC8(24)
#define WG_ACC64 WG_ACC32, WG_ACC8(32), WG_ACC8(40), WG_ACC8(48), WG_ACC8(56)
#define WG_ACC128                                                                                         \
    WG_ACC64, WG_ACC8(64), WG_ACC8(72), WG_ACC8(80), WG_ACC8(88), WG_ACC8(96), WG_ACC8(104), WG_ACC8(112), \
        WG_ACC8(120)
#define WG_REGS16 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define WG_REGS32                                                          \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15," \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WG_REGS64                                                                    \
    WG_REGS32 ","                                                                    \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47," \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WG_REGS128                                                                               \
    WG_REGS64 ","                                                                                \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"             \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"             \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111," \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"

// wgmma_ss_m64n<N>k16_<TY><TA, TB>(d, da, db, scale_d): D (+)= A·B, f32 accumulators, A and B
// from shared memory through descriptors; scale_d = 0 overwrites D; TA/TB are the tnspA/tnspB
// bits (1: M-/N-major operand). The asm operands are the accumulators %0.., then the two
// descriptors, scale-d and the transpose bits, numbered SCALE_D, DESCS and TRANSPOSES.
#define WGMMA_SS(N, TY, ACCS, REGS, ACC_OPERANDS, SCALE_D, DESCS, TRANSPOSES)                          \
    template <int TA, int TB>                                                                         \
    __device__ __forceinline__ void wgmma_ss_m64n##N##k16_##TY(float(&d)[ACCS], u64 da, u64 db,       \
                                                              int scale_d) {                          \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE_D ", 0;\n"                             \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #TY "." #TY " {" REGS "}, " DESCS \
                     ", p, 1, 1, " TRANSPOSES ";\n}\n"                                                  \
                     : ACC_OPERANDS                                                                   \
                     : "l"(da), "l"(db), "r"(scale_d), "n"(TA), "n"(TB));                             \
    }
WGMMA_SS(32, bf16, 16, WG_REGS16, WG_ACC16, "%18", "%16, %17", "%19, %20")
WGMMA_SS(32, f16, 16, WG_REGS16, WG_ACC16, "%18", "%16, %17", "%19, %20")
WGMMA_SS(64, bf16, 32, WG_REGS32, WG_ACC32, "%34", "%32, %33", "%35, %36")
WGMMA_SS(64, f16, 32, WG_REGS32, WG_ACC32, "%34", "%32, %33", "%35, %36")
WGMMA_SS(128, bf16, 64, WG_REGS64, WG_ACC64, "%66", "%64, %65", "%67, %68")
WGMMA_SS(128, f16, 64, WG_REGS64, WG_ACC64, "%66", "%64, %65", "%67, %68")
WGMMA_SS(256, bf16, 128, WG_REGS128, WG_ACC128, "%130", "%128, %129", "%131, %132")
WGMMA_SS(256, f16, 128, WG_REGS128, WG_ACC128, "%130", "%128, %129", "%131, %132")

// wgmma_rs_m64n<N>k16_<TY>(d, a, db): D += A·B with A (64×16) in registers (four 32-bit
// registers of two 16-bit values per thread) and B an MN-major (transposed) descriptor.
#define WGMMA_RS(N, TY, ACCS, REGS, ACC_OPERANDS, A_REGS, DESC)                                   \
    __device__ __forceinline__ void wgmma_rs_m64n##N##k16_##TY(float(&d)[ACCS], const u32(&a)[4],   \
                                                              u64 db) {                         \
        asm volatile("wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #TY "." #TY " {" REGS "}, " \
                     A_REGS ", " DESC ", 1, 1, 1, 1;\n"                                            \
                     : ACC_OPERANDS                                                            \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));                   \
    }
WGMMA_RS(64, bf16, 32, WG_REGS32, WG_ACC32, "{%32, %33, %34, %35}", "%36")
WGMMA_RS(64, f16, 32, WG_REGS32, WG_ACC32, "{%32, %33, %34, %35}", "%36")
WGMMA_RS(128, bf16, 64, WG_REGS64, WG_ACC64, "{%64, %65, %66, %67}", "%68")
WGMMA_RS(128, f16, 64, WG_REGS64, WG_ACC64, "{%64, %65, %66, %67}", "%68")
#endif  // POLYLM_HOST_EMULATION
