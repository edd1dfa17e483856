// Host emulation of polylm's CUDA kernels: runs the text of a kernel file on the CPU, one OS
// thread per CUDA thread, so that the kernels' logic is tested where there is no GPU (CI).
//
// What is emulated, and how faithfully:
// - blocks, warps and clusters: every thread of a block (and, for a cluster launch, every
//   block of the cluster) runs at once; `__syncthreads`, the cluster barrier and the warp
//   shuffles are real barriers, so a thread that skips one deadlocks the launch (reported after
//   a timeout). Exited threads drop out of the barriers, as on the GPU.
// - shared memory: a per-block arena poisoned with 0xCD; `__shared__` variables are placed in
//   it by the harness (kernels/tests/host_emulation.rs rewrites their declarations), the
//   dynamic part after them.
// - `cp.async`: copies are queued per thread and performed only at `cp.async.wait_group`, for
//   the groups the wait covers, so a wait that covers too little reads poison.
// - mbarriers: arrival counts, transaction bytes and phases; bulk copies (TMA) and `st.async`
//   sends complete on them from another thread after a random delay, so a consumer that does
//   not wait reads stale data.
// - arithmetic: f32 on the host (exp2f, rsqrtf and friends at host precision, not the GPU's
//   approximations); bf16 and f16 round to nearest even like `cvt.rn`.
// Not emulated: memory-model subtleties beyond these orderings, timing, and the tensor-core
// instructions (the files that use them are not run here).
#pragma once

#define POLYLM_HOST_EMULATION 1

#include <math.h>
#include <pthread.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __align__(n) alignas(n)
#define __cluster_dims__(x, y, z)
#define __launch_bounds__(...)
#define __grid_constant__
#define __restrict__
#define __CUDA_ARCH__ 900

struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
struct int2 { int x, y; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline int2 make_int2(int a, int b) { return {a, b}; }

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
/// The high 32 bits of the 64-bit product of two unsigned 32-bit integers.
inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * (unsigned long long)b) >> 32);
}
inline float __uint_as_float(unsigned i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline unsigned emu_float_bits(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// CUDA's integer min/max device functions.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

namespace emu {

/// Reports a failure of the emulated kernel (deadlock, bad address) and stops the process.
[[noreturn]] inline void fail(const std::string& what) {
    std::fprintf(stderr, "emulation error: %s\n", what.c_str());
    std::fflush(stderr);
    std::_Exit(3);
}

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};

constexpr size_t kStaticShared = 64 * 1024;
constexpr size_t kDynamicShared = 232 * 1024;

struct Cluster;

/// A warp's exchange area for the collective operations (shuffles, ldmatrix, mma.sync).
struct Warp {
    float values[32];
    uint32_t words[32][10];
    std::barrier<> bar{32};
};

struct ThreadCtx;

struct Block {
    Dim3 idx;
    unsigned rank = 0;
    Cluster* cluster = nullptr;
    std::vector<unsigned char> smem;
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<Warp>> warps;
    /// One barrier per warpgroup (128 threads), for the warpgroup-wide wgmma.
    std::vector<std::unique_ptr<std::barrier<>>> warpgroups;
    /// Named barriers (`bar.sync id, count`), made on first use.
    std::mutex named_mutex;
    std::map<int, std::unique_ptr<std::barrier<>>> named;
    /// Every thread's context, by thread index.
    std::vector<ThreadCtx*> threads;
};

struct Cluster {
    std::vector<std::unique_ptr<Block>> blocks;
    std::unique_ptr<std::barrier<>> bar;
};

struct CopyOp {
    unsigned char* dst;
    const unsigned char* src;
    int src_bytes;
};

/// One recorded wgmma.mma_async (emu_hopper.hpp): run when a wgmma.wait_group covers it.
struct WgmmaOp {
    int n = 0;              // N of m64nNk16
    bool f16 = false;       // element type: f16, else bf16
    float* d = nullptr;     // this thread's N/2 accumulators
    uint64_t da = 0, db = 0;
    bool scale_d = true;    // false: D = A·B
    int trans_a = 0, trans_b = 0;
    /// The A registers (register-A form), read when the operation runs, as the hardware may:
    /// a kernel that rewrites them before the wait sees its new values used.
    const uint32_t* a = nullptr;
};

struct ThreadCtx {
    Dim3 tid;
    Block* block = nullptr;
    std::vector<CopyOp> open;
    std::deque<std::vector<CopyOp>> groups;
    std::vector<WgmmaOp> wg_open;
    std::deque<std::vector<WgmmaOp>> wg_groups;
};

inline thread_local ThreadCtx* self = nullptr;

/// What the harness puts in a kernel's 128-byte tensor-map parameter (emu_hopper.hpp's TMA).
struct TensorMap {
    const unsigned char* base;
    uint64_t dims[5];     // elements, innermost first (unused dimensions 1)
    uint64_t strides[4];  // bytes, of dimensions 1..rank-1
    uint32_t box[5];      // elements (unused dimensions 1)
    uint32_t rank;
    uint32_t elem_bytes;
    uint32_t magic;
};
constexpr uint32_t kTensorMapMagic = 0x7e45a9u;

/// The launch in progress: its shape, its `__shared__` layout and its asynchronous operations.
struct Launch {
    Dim3 grid, block;
    unsigned cluster = 1;
    size_t dynamic = 0;
    std::mutex m;
    std::map<std::string, size_t> offsets;
    size_t next = 0;
    std::vector<std::thread> async_ops;
    std::mt19937 rng{12345};
};
inline Launch* current = nullptr;

#define threadIdx (::emu::self->tid)
#define blockIdx (::emu::self->block->idx)
#define blockDim (::emu::current->block)
#define gridDim (::emu::current->grid)

/// The `__shared__` variable `name` of function `fn`: the same offset in every block's arena.
template <class T>
T& shared(const char* fn, const char* name) {
    size_t off;
    {
        std::lock_guard<std::mutex> g(current->m);
        std::string key = std::string(fn) + ":" + name;
        auto it = current->offsets.find(key);
        if (it == current->offsets.end()) {
            off = (current->next + 127) & ~size_t(127);
            current->next = off + sizeof(T);
            if (current->next > kStaticShared) fail("static shared memory exceeds the emulated 64 KiB");
            current->offsets[key] = off;
        } else {
            off = it->second;
        }
    }
    return *reinterpret_cast<T*>(self->block->smem.data() + off);
}
inline unsigned char* dynamic_shared() { return self->block->smem.data() + kStaticShared; }

inline unsigned char* local(uint32_t addr) {
    if (addr >= self->block->smem.size()) fail("shared address out of range: " + std::to_string(addr));
    return self->block->smem.data() + addr;
}

/// Runs `op` on another thread after a random delay of up to 200 µs.
inline void async(std::function<void()> op) {
    std::lock_guard<std::mutex> g(current->m);
    int delay = std::uniform_int_distribution<int>(0, 200)(current->rng);
    current->async_ops.emplace_back([op = std::move(op), delay] {
        std::this_thread::sleep_for(std::chrono::microseconds(delay));
        op();
    });
}

// ---------------------------------------------------------------- mbarriers

struct MBar {
    int count = 0, pending = 0;
    long long tx = 0;
    unsigned phase = 0;
};
inline std::mutex mbar_mutex;
inline std::condition_variable mbar_cv;
inline std::map<std::pair<Block*, uint32_t>, MBar> mbars;

inline MBar& mbar_at(Block* b, uint32_t addr) {
    auto it = mbars.find({b, addr});
    if (it == mbars.end()) fail("mbarrier used before mbarrier.init at shared address " + std::to_string(addr));
    return it->second;
}
inline void mbar_settle(MBar& m) {
    if (m.pending < 0) fail("more arrivals than the mbarrier's count");
    if (m.pending == 0 && m.tx == 0) {
        m.phase++;
        m.pending = m.count;
        mbar_cv.notify_all();
    }
}
inline void mbar_complete_tx(Block* b, uint32_t addr, long long bytes) {
    std::lock_guard<std::mutex> g(mbar_mutex);
    MBar& m = mbar_at(b, addr);
    m.tx -= bytes;
    mbar_settle(m);
}

}  // namespace emu

// ---------------------------------------------------------------- what common.cuh leaves to PTX

struct bf16;
struct f16;

inline void __syncthreads() { emu::self->block->bar->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int offset) {
    emu::Warp& w = *emu::self->block->warps[emu::self->tid.x / 32];
    const unsigned lane = emu::self->tid.x % 32;
    w.values[lane] = v;
    w.bar.arrive_and_wait();
    float r = w.values[lane ^ (unsigned)offset];
    w.bar.arrive_and_wait();
    return r;
}

inline uint32_t smem_u32(const void* p) {
    const unsigned char* base = emu::self->block->smem.data();
    const unsigned char* q = static_cast<const unsigned char*>(p);
    if (q < base || q >= base + emu::self->block->smem.size()) emu::fail("smem_u32 of a pointer outside shared memory");
    return (uint32_t)(q - base);
}

inline void cp_async16(uint32_t dst, const void* src, int src_bytes) {
    emu::self->open.push_back({emu::local(dst), static_cast<const unsigned char*>(src), src_bytes});
}
inline void cp_async_commit() {
    emu::self->groups.push_back(std::move(emu::self->open));
    emu::self->open.clear();
}
template <int N>
inline void cp_async_wait() {
    while (emu::self->groups.size() > (size_t)N) {
        for (const emu::CopyOp& c : emu::self->groups.front()) {
            std::memcpy(c.dst, c.src, c.src_bytes);
            std::memset(c.dst + c.src_bytes, 0, 16 - c.src_bytes);
        }
        emu::self->groups.pop_front();
    }
}

inline void mbar_init(uint32_t bar, uint32_t count) {
    std::lock_guard<std::mutex> g(emu::mbar_mutex);
    emu::MBar& m = emu::mbars[{emu::self->block, bar}];
    m = emu::MBar{(int)count, (int)count, 0, 0};
}
inline void mbar_fence_init() {}
inline void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    std::lock_guard<std::mutex> g(emu::mbar_mutex);
    emu::MBar& m = emu::mbar_at(emu::self->block, bar);
    m.tx += bytes;
    m.pending--;
    emu::mbar_settle(m);
}
inline void mbar_arrive(uint32_t bar) { mbar_arrive_expect_tx(bar, 0); }
inline void mbar_wait(uint32_t bar, uint32_t parity) {
    std::unique_lock<std::mutex> g(emu::mbar_mutex);
    emu::Block* b = emu::self->block;
    bool done = emu::mbar_cv.wait_for(g, std::chrono::seconds(120),
                                      [&] { return (emu::mbar_at(b, bar).phase & 1u) != parity; });
    if (!done) emu::fail("mbarrier wait timed out (deadlock)");
}
inline void mbar_wait_cluster(uint32_t bar, uint32_t parity) { mbar_wait(bar, parity); }

inline void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
    if (bytes % 16 != 0 || (reinterpret_cast<uintptr_t>(src) & 15) != 0 || dst % 16 != 0)
        emu::fail("bulk copy of a size or address that is not a multiple of 16");
    emu::Block* b = emu::self->block;
    unsigned char* d = emu::local(dst);
    if (dst + bytes > b->smem.size()) emu::fail("bulk copy past the end of shared memory");
    emu::async([=] {
        std::memcpy(d, src, bytes);
        emu::mbar_complete_tx(b, bar, bytes);
    });
}

inline uint32_t cluster_rank() { return emu::self->block->rank; }
inline void cluster_barrier() { emu::self->block->cluster->bar->arrive_and_wait(); }
inline void cluster_send2(uint32_t addr, uint32_t bar, uint32_t rank, float a, float b) {
    emu::Cluster* c = emu::self->block->cluster;
    if (rank >= c->blocks.size()) emu::fail("cluster_send2 to a rank outside the cluster");
    emu::Block* t = c->blocks[rank].get();
    emu::async([=] {
        float2 v{a, b};
        std::memcpy(t->smem.data() + addr, &v, sizeof v);
        emu::mbar_complete_tx(t, bar, sizeof v);
    });
}

inline void __syncwarp() { emu::self->block->warps[emu::self->tid.x / 32]->bar.arrive_and_wait(); }

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }

namespace emu {

/// Runs `fill(lane, words)` for every lane of the calling warp (publishing up to 10 words),
/// waits for the whole warp, runs `use(words of all lanes)`, and waits again before the
/// exchange area is reused.
template <class Fill, class Use>
inline void warp_exchange(Fill fill, Use use) {
    Warp& w = *self->block->warps[self->tid.x / 32];
    const unsigned lane = self->tid.x % 32;
    fill(w.words[lane]);
    w.bar.arrive_and_wait();
    use(w.words, lane);
    w.bar.arrive_and_wait();
}

inline uint16_t smem_u16(uint32_t addr) {
    uint16_t v;
    std::memcpy(&v, local(addr), 2);
    return v;
}
inline uint32_t smem_word(uint32_t addr) {
    uint32_t v;
    std::memcpy(&v, local(addr), 4);
    return v;
}

}  // namespace emu

/// ldmatrix.m8n8.x4.b16: lanes 8i..8i+7 give the row addresses of matrix i; lane l receives in
/// r_i row l/4, elements 2(l%4) and 2(l%4)+1 of matrix i (the lower one in the low half).
inline void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    uint32_t* out[4] = {&r0, &r1, &r2, &r3};
    emu::warp_exchange([&](uint32_t* w) { w[0] = addr; },
                       [&](uint32_t (*all)[10], unsigned lane) {
                           for (int i = 0; i < 4; i++) *out[i] = emu::smem_word(all[8 * i + lane / 4][0] + 4 * (lane % 4));
                       });
}
/// ldmatrix...x4.trans: as `ldmatrix_x4` with each matrix transposed: lane l receives
/// elements (2(l%4), l/4) and (2(l%4)+1, l/4) of matrix i (row, column of the stored matrix).
inline void ldmatrix_x4_trans(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    uint32_t* out[4] = {&r0, &r1, &r2, &r3};
    emu::warp_exchange([&](uint32_t* w) { w[0] = addr; },
                       [&](uint32_t (*all)[10], unsigned lane) {
                           for (int i = 0; i < 4; i++) {
                               const uint32_t col = 2 * (lane / 4);
                               const uint32_t lo = emu::smem_u16(all[8 * i + 2 * (lane % 4)][0] + col);
                               const uint32_t hi = emu::smem_u16(all[8 * i + 2 * (lane % 4) + 1][0] + col);
                               *out[i] = lo | (hi << 16);
                           }
                       });
}

namespace emu {

/// The emulated bf16 and f16 roundings (round to nearest even; NaN stays NaN).
inline unsigned short round_bf16(float v) {
    unsigned u = emu_float_bits(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
inline unsigned short round_f16(float v) {
    _Float16 h = (_Float16)v;
    unsigned short bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}
inline float widen_f16(unsigned short bits) {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return (float)h;
}

// ---------------------------------------------------------------- launching

static void* thread_main(void* arg) {
    auto* job = static_cast<std::pair<ThreadCtx*, const std::function<void()>*>*>(arg);
    self = job->first;
    (*job->second)();
    Block* b = self->block;
    if (!self->open.empty() || !self->groups.empty()) fail("a thread exited with cp.async copies it never waited for");
    if (!self->wg_open.empty() || !self->wg_groups.empty()) fail("a thread exited with wgmma operations it never waited for");
    // Exited threads no longer count at the barriers.
    if (!b->warpgroups.empty()) b->warpgroups[self->tid.x / 128]->arrive_and_drop();
    b->warps[self->tid.x / 32]->bar.arrive_and_drop();
    b->bar->arrive_and_drop();
    b->cluster->bar->arrive_and_drop();
    return nullptr;
}

/// Runs `body` as the kernel on a 1-D grid of `grid` blocks of `block` threads, in clusters of
/// `cluster` blocks (one cluster at a time, its blocks at once), with `dynamic` bytes of
/// dynamic shared memory.
inline void launch(Dim3 grid, unsigned block, unsigned cluster, size_t dynamic, const std::function<void()>& body) {
    if (block == 0 || block % 32 != 0 || block > 1024) fail("block size must be a multiple of 32 up to 1024");
    if (cluster == 0 || grid.x % cluster != 0) fail("grid is not a whole number of clusters");
    if (dynamic > kDynamicShared) fail("dynamic shared memory exceeds the emulated 232 KiB");
    // A watchdog: a launch that deadlocks (a barrier some thread never reaches) fails instead of
    // hanging the test.
    std::mutex done_mutex;
    std::condition_variable done_cv;
    bool done = false;
    std::thread watchdog([&] {
        std::unique_lock<std::mutex> g(done_mutex);
        if (!done_cv.wait_for(g, std::chrono::seconds(300), [&] { return done; }))
            fail("the launch did not finish in 300 s (deadlock)");
    });
    Launch l;
    l.grid = grid;
    l.block.x = block;
    l.cluster = cluster;
    l.dynamic = dynamic;
    current = &l;
    const unsigned blocks = grid.x * grid.y * grid.z;
    for (unsigned c0 = 0; c0 < blocks; c0 += cluster) {
        Cluster c;
        c.bar = std::make_unique<std::barrier<>>(block * cluster);
        for (unsigned r = 0; r < cluster; r++) {
            auto b = std::make_unique<Block>();
            const unsigned linear = c0 + r;
            b->idx.x = linear % grid.x;
            b->idx.y = linear / grid.x % grid.y;
            b->idx.z = linear / (grid.x * grid.y);
            b->rank = r;
            b->cluster = &c;
            b->smem.assign(kStaticShared + dynamic, 0xCD);
            b->bar = std::make_unique<std::barrier<>>(block);
            for (unsigned w = 0; w < block / 32; w++) b->warps.push_back(std::make_unique<Warp>());
            if (block % 128 == 0)
                for (unsigned w = 0; w < block / 128; w++) b->warpgroups.push_back(std::make_unique<std::barrier<>>(128));
            b->threads.assign(block, nullptr);
            c.blocks.push_back(std::move(b));
        }
        std::vector<ThreadCtx> ctx(block * cluster);
        std::vector<std::pair<ThreadCtx*, const std::function<void()>*>> jobs(ctx.size());
        std::vector<pthread_t> threads(ctx.size());
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        for (size_t i = 0; i < ctx.size(); i++) {
            ctx[i].block = c.blocks[i / block].get();
            ctx[i].tid.x = (unsigned)(i % block);
            ctx[i].block->threads[i % block] = &ctx[i];
        }
        for (size_t i = 0; i < ctx.size(); i++) {
            jobs[i] = {&ctx[i], &body};
            if (pthread_create(&threads[i], &attr, thread_main, &jobs[i]) != 0) fail("cannot start a thread");
        }
        for (pthread_t t : threads) pthread_join(t, nullptr);
        pthread_attr_destroy(&attr);
        for (std::thread& t : l.async_ops) t.join();
        l.async_ops.clear();
        std::lock_guard<std::mutex> g(mbar_mutex);
        for (auto& b : c.blocks) {
            for (auto it = mbars.begin(); it != mbars.end();)
                it = it->first.first == b.get() ? mbars.erase(it) : std::next(it);
        }
    }
    current = nullptr;
    {
        std::lock_guard<std::mutex> g(done_mutex);
        done = true;
    }
    done_cv.notify_all();
    watchdog.join();
}

}  // namespace emu
