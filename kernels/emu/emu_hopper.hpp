// Host emulation of the Hopper (sm_90a) instructions hopper.cuh wraps, included after
// emu_convert.hpp for the files registered with `needs_sm90a`. See emu.hpp for the machine.
//
// - TMA (`cp.async.bulk.tensor.3d` and `.4d`, 128-byte swizzle): the tensor map is an `emu::TensorMap`
//   the harness writes into the kernel's 128-byte map parameter (base address, sizes, byte
//   strides, box); a load copies the box from another thread after a random delay, zero-fills
//   what lies outside the tensor, writes 16-byte chunk c of box row r at chunk c ^ (r % 8) of
//   its 1024-byte atom (the swizzle is on the shared address bits, like the hardware's), and
//   completes the whole box's bytes on the mbarrier.
// - wgmma.mma_async m64nNk16 (bf16/f16 in, f32 accumulators), A from shared memory or from
//   registers, B from shared memory: operations are recorded per thread at issue, grouped at
//   wgmma.commit_group, and run when a wgmma.wait_group covers them (as late as the hardware
//   may), reading shared memory through the descriptors in the PTX ISA's canonical 128B-swizzle
//   layouts (T = 8 elements per 16 bytes):
//     K-major  ((8,m),(T,2k)):((8T,SBO),(1,T))          row r, k: (r%8)·128 + (r/8)·SBO + 2k
//     MN-major ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO))     mn, k: 2(mn%64) + (mn/64)·LBO
//                                                              + (k%8)·128 + (k/8)·SBO
//   then the swizzle (address bits 4-6 ^= bits 7-9). Accumulator fragment: thread of warp w,
//   lane 4g + t holds d[4j + e] at row 16w + g + 8(e/2), column 8j + 2t + (e%2); register A:
//   register j, half h at row 16w + g + 8(j&1), column 2t + h + 8(j>>1).
// - setmaxnreg, fences and prefetches: nothing to do on the host.
#pragma once

namespace emu {

inline void named_barrier(int id, unsigned count) {
    Block* b = self->block;
    std::barrier<>* bar;
    {
        std::lock_guard<std::mutex> g(b->named_mutex);
        auto& slot = b->named[id];
        if (!slot) slot = std::make_unique<std::barrier<>>(count);
        bar = slot.get();
    }
    bar->arrive_and_wait();
}

/// The 128-byte swizzle of a shared address: 16-byte chunk ^= 128-byte row within the
/// 1024-byte atom.
inline uint32_t swizzle128(uint32_t addr) { return addr ^ (((addr >> 7) & 7u) << 4); }

inline void wgmma_record(WgmmaOp op) { self->wg_open.push_back(op); }

/// Element (row, k) of a wgmma shared-memory operand whose rows are M (A) or N (B).
inline float wgmma_smem(const WgmmaOp& op, uint64_t desc, int trans, int row, int k) {
    if ((desc >> 62) != 1) fail("wgmma descriptor without the 128-byte swizzle");
    if (((desc >> 49) & 7) != 0) fail("wgmma descriptor with a non-zero base offset");
    const uint32_t start = (uint32_t)(desc & 0x3FFF) << 4;
    const uint32_t lbo = (uint32_t)((desc >> 16) & 0x3FFF) << 4;
    const uint32_t sbo = (uint32_t)((desc >> 32) & 0x3FFF) << 4;
    uint32_t off;
    if (!trans)  // K-major
        off = (uint32_t)(row % 8) * 128 + (uint32_t)(row / 8) * sbo + 2u * (uint32_t)k;
    else  // MN-major
        off = 2u * (uint32_t)(row % 64) + (uint32_t)(row / 64) * lbo + (uint32_t)(k % 8) * 128 + (uint32_t)(k / 8) * sbo;
    const uint32_t addr = swizzle128(start + off);
    uint16_t bits;
    std::memcpy(&bits, local(addr), 2);
    return op.f16 ? widen_f16(bits) : __uint_as_float((uint32_t)bits << 16);
}

inline float register_half(bool f16, uint32_t word, int high) {
    const uint16_t bits = (uint16_t)(high ? word >> 16 : word & 0xffffu);
    return f16 ? widen_f16(bits) : __uint_as_float((uint32_t)bits << 16);
}

/// Runs `op` (issued by every thread of the warpgroup as its `index`-th pending operation) for
/// the calling thread's accumulators.
inline void wgmma_run(const WgmmaOp& op, size_t group, size_t index) {
    const unsigned tid = self->tid.x, wg0 = tid / 128 * 128;
    const unsigned w = (tid % 128) / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    float A[64][16];
    if (op.a != nullptr) {
        for (unsigned other = 0; other < 128; other++) {
            ThreadCtx* c = self->block->threads[wg0 + other];
            const WgmmaOp& o = c->wg_groups.at(group).at(index);
            const unsigned ow = other / 32, og = (other % 32) / 4, ot = other % 4;
            for (int j = 0; j < 4; j++)
                for (int h = 0; h < 2; h++)
                    A[16 * ow + og + 8 * (j & 1)][2 * ot + h + 8 * (j >> 1)] = register_half(op.f16, o.a[j], h);
        }
    } else {
        for (int m = 0; m < 64; m++)
            for (int k = 0; k < 16; k++) A[m][k] = wgmma_smem(op, op.da, op.trans_a, m, k);
    }
    std::vector<float> B((size_t)16 * op.n);
    for (int n = 0; n < op.n; n++)
        for (int k = 0; k < 16; k++) B[(size_t)k * op.n + n] = wgmma_smem(op, op.db, op.trans_b, n, k);
    for (int i = 0; i < op.n / 2; i++) {
        const int j = i / 4, e = i % 4;
        const int row = 16 * (int)w + (int)g + 8 * (e / 2), col = 8 * j + 2 * (int)t + (e % 2);
        float acc = 0.0f;
        for (int k = 0; k < 16; k++) acc += A[row][k] * B[(size_t)k * op.n + col];
        op.d[i] = op.scale_d ? op.d[i] + acc : acc;
    }
}

}  // namespace emu

inline void tma_prefetch_map(const void*) {}

namespace emu {

/// A TMA load of the box at coordinates `c` (innermost first, `rank` of them) of the tensor map
/// at `map`: checks the map's rank, then copies on another thread (see the file comment).
inline void tma_load(uint32_t dst, const void* map, uint32_t bar, uint32_t rank, const long long (&c)[5]) {
    TensorMap m;
    std::memcpy(&m, map, sizeof m);
    if (m.magic != kTensorMapMagic) fail("a TMA load on a parameter that is not an emulated tensor map");
    if (m.rank != rank) fail("a " + std::to_string(rank) + "-d TMA load on a tensor map of rank " + std::to_string(m.rank));
    const uint32_t row_bytes = m.box[0] * m.elem_bytes;
    if (row_bytes != 128) fail("the emulated TMA takes boxes of 128-byte rows (the 128-byte swizzle)");
    if (dst % 1024 != 0) fail("a swizzled TMA destination must be 1024-byte aligned");
    uint32_t rows = 1;  // box rows of 128 bytes: every dimension after the first
    for (int i = 1; i < 5; i++) rows *= m.box[i];
    const uint32_t bytes = row_bytes * rows;
    Block* b = self->block;
    if (dst + bytes > b->smem.size()) fail("TMA box past the end of shared memory");
    async([=] {
        for (uint32_t r = 0; r < rows; r++) {
            // Box coordinates of row r (dimension 1 fastest), and the row's global byte offset.
            bool inside = true;
            uint64_t offset = 0;
            uint32_t rest = r;
            for (int i = 1; i < 5; i++) {
                const long long gi = c[i] + (long long)(rest % m.box[i]);
                rest /= m.box[i];
                inside = inside && gi >= 0 && (uint64_t)gi < m.dims[i];
                if (i < (int)m.rank) offset += (uint64_t)gi * m.strides[i - 1];
            }
            for (uint32_t x = 0; x < m.box[0]; x++) {
                const long long gx = c[0] + x;
                const uint32_t addr = swizzle128(dst + r * row_bytes + x * m.elem_bytes);
                unsigned char* out = b->smem.data() + addr;
                if (inside && gx >= 0 && (uint64_t)gx < m.dims[0])
                    std::memcpy(out, m.base + offset + (uint64_t)gx * m.elem_bytes, m.elem_bytes);
                else
                    std::memset(out, 0, m.elem_bytes);
            }
        }
        mbar_complete_tx(b, bar, bytes);
    });
}

}  // namespace emu

inline void tma_load_3d(uint32_t dst, const void* map, uint32_t bar, int c0, int c1, int c2) {
    emu::tma_load(dst, map, bar, 3, {c0, c1, c2, 0, 0});
}

inline void tma_load_4d(uint32_t dst, const void* map, uint32_t bar, int c0, int c1, int c2, int c3) {
    emu::tma_load(dst, map, bar, 4, {c0, c1, c2, c3, 0});
}

template <int REGS>
inline void setmaxnreg_dec() {}
template <int REGS>
inline void setmaxnreg_inc() {}

inline void wgmma_fence() {}
inline void fence_proxy_async() {}
template <int R>
inline void fence_regs(float (&)[R]) {}

inline void wgmma_commit() {
    emu::self->wg_groups.push_back(std::move(emu::self->wg_open));
    emu::self->wg_open.clear();
}

/// wgmma.wait_group N over the warpgroup: every operation in all but the newest N groups runs.
template <int N>
inline void wgmma_wait() {
    emu::ThreadCtx* self = emu::self;
    if (self->block->warpgroups.empty()) emu::fail("wgmma in a block that is not whole warpgroups");
    std::barrier<>& wg = *self->block->warpgroups[self->tid.x / 128];
    wg.arrive_and_wait();  // every thread of the warpgroup has issued its operations
    const size_t run = self->wg_groups.size() > (size_t)N ? self->wg_groups.size() - N : 0;
    for (size_t gi = 0; gi < run; gi++)
        for (size_t i = 0; i < self->wg_groups[gi].size(); i++) emu::wgmma_run(self->wg_groups[gi][i], gi, i);
    wg.arrive_and_wait();  // nobody drops a group another thread may still read
    for (size_t gi = 0; gi < run; gi++) self->wg_groups.pop_front();
}

#define EMU_WGMMA_SS(N, TY, F16)                                                                        \
    template <int TA, int TB>                                                                           \
    inline void wgmma_ss_m64n##N##k16_##TY(float (&d)[N / 2], uint64_t da, uint64_t db, int scale_d) { \
        emu::WgmmaOp op;                                                                                \
        op.n = N;                                                                                       \
        op.f16 = F16;                                                                                   \
        op.d = d;                                                                                       \
        op.da = da;                                                                                     \
        op.db = db;                                                                                     \
        op.scale_d = scale_d != 0;                                                                      \
        op.trans_a = TA;                                                                                \
        op.trans_b = TB;                                                                                \
        emu::wgmma_record(op);                                                                          \
    }
EMU_WGMMA_SS(32, bf16, false)
EMU_WGMMA_SS(32, f16, true)
EMU_WGMMA_SS(64, bf16, false)
EMU_WGMMA_SS(64, f16, true)
EMU_WGMMA_SS(128, bf16, false)
EMU_WGMMA_SS(128, f16, true)
EMU_WGMMA_SS(256, bf16, false)
EMU_WGMMA_SS(256, f16, true)

// The register-A form: always accumulates, B MN-major (transposed), as hopper.cuh issues it.
#define EMU_WGMMA_RS(N, TY, F16)                                                                          \
    inline void wgmma_rs_m64n##N##k16_##TY(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db) {     \
        emu::WgmmaOp op;                                                                                  \
        op.n = N;                                                                                         \
        op.f16 = F16;                                                                                     \
        op.d = d;                                                                                         \
        op.db = db;                                                                                       \
        op.trans_b = 1;                                                                                   \
        op.a = a;                                                                                         \
        emu::wgmma_record(op);                                                                            \
    }
EMU_WGMMA_RS(64, bf16, false)
EMU_WGMMA_RS(64, f16, true)
EMU_WGMMA_RS(128, bf16, false)
EMU_WGMMA_RS(128, f16, true)
