// LayerNorm over the last axis, forward and backward, with an optional fused residual add.
//
// Forward: one warp per row. With a residual, the row is `round_T(x + residual)`, written to
// `sum_out` (the next residual stream) and normalised. The row is swept three times (sum,
// centred sum of squares, output); the second and third sweeps hit L1.
//
// Backward: a block takes a run of rows; each thread owns a fixed set of columns, so the
// per-block weight and bias gradients accumulate in shared memory without atomics, and a
// second kernel sums the per-block partials in a fixed order (deterministic).

template <class T>
struct RowSource {
    const T* x;
    const T* residual;  // may be null
    __device__ __forceinline__ void load(int c, float* v, bool vec) const {
        constexpr int P = VecWidth<T>::value;
        if (vec) {
            load_pack<T, P>(x + c, v);
            if (residual) {
                float r[P];
                load_pack<T, P>(residual + c, r);
#pragma unroll
                for (int i = 0; i < P; i++) v[i] = to_f32(from_f32<T>(v[i] + r[i]));
            }
        } else {
            v[0] = to_f32(x[c]);
            if (residual) v[0] = to_f32(from_f32<T>(v[0] + to_f32(residual[c])));
        }
    }
};

template <class T>
__device__ void layernorm_fwd(const T* x, const T* residual, const T* w, const T* b, T* out, T* sum_out,
                              float* mean, float* rstd, int rows, int cols, float eps) {
    constexpr int P = VecWidth<T>::value;
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const i64 base = (i64)row * cols;
    RowSource<T> src{x + base, residual ? residual + base : nullptr};
    T* o = out + base;
    T* so = sum_out ? sum_out + base : nullptr;
    const bool vec = cols % P == 0 && aligned16(src.x) && (!residual || aligned16(src.residual)) &&
                     aligned16(o) && (!so || aligned16(so)) && aligned16(w) && aligned16(b);
    const int step = vec ? 32 * P : 32;
    const int width = vec ? P : 1;

    float s = 0.0f;
    for (int c = lane * width; c < cols; c += step) {
        float v[P];
        src.load(c, v, vec);
        for (int i = 0; i < width; i++) s += v[i];
        if (so) {
            if (vec) store_pack<T, P>(so + c, v);
            else so[c] = from_f32<T>(v[0]);
        }
    }
    const float mu = warp_sum(s) / cols;
    float q = 0.0f;
    for (int c = lane * width; c < cols; c += step) {
        float v[P];
        src.load(c, v, vec);
        for (int i = 0; i < width; i++) q += (v[i] - mu) * (v[i] - mu);
    }
    const float rs = rsqrtf(warp_sum(q) / cols + eps);
    for (int c = lane * width; c < cols; c += step) {
        float v[P], wv[P], bv[P];
        src.load(c, v, vec);
        if (vec) {
            load_pack<T, P>(w + c, wv);
            load_pack<T, P>(b + c, bv);
#pragma unroll
            for (int i = 0; i < P; i++) v[i] = (v[i] - mu) * rs * wv[i] + bv[i];
            store_pack<T, P>(o + c, v);
        } else {
            o[c] = from_f32<T>((v[0] - mu) * rs * to_f32(w[c]) + to_f32(b[c]));
        }
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

template <class T>
__device__ void layernorm_bwd(const T* x, const T* w, const float* mean, const float* rstd, const T* dout,
                              const T* dresidual, T* dx, float* partial, int rows, int cols) {
    extern __shared__ float smem[];
    __shared__ float scratch[64];
    float* sdw = smem;
    float* sdb = smem + cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        sdw[c] = 0.0f;
        sdb[c] = 0.0f;
    }
    const int per_block = (rows + gridDim.x - 1) / gridDim.x;
    const int r0 = blockIdx.x * per_block;
    const int r1 = min(rows, r0 + per_block);
    for (int row = r0; row < r1; row++) {
        const i64 base = (i64)row * cols;
        const float mu = mean[row], rs = rstd[row];
        float a = 0.0f, bsum = 0.0f;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            float g = to_f32(dout[base + c]) * to_f32(w[c]);
            float xh = (to_f32(x[base + c]) - mu) * rs;
            a += g;
            bsum += g * xh;
        }
        const float2 sums = block_sum2(a, bsum, scratch);
        const float mg = sums.x / cols, mgx = sums.y / cols;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            float d = to_f32(dout[base + c]);
            float xh = (to_f32(x[base + c]) - mu) * rs;
            float g = d * to_f32(w[c]);
            float v = rs * (g - mg - xh * mgx);
            if (dresidual) v += to_f32(dresidual[base + c]);
            dx[base + c] = from_f32<T>(v);
            sdw[c] += d * xh;
            sdb[c] += d;
        }
    }
    float* p = partial + (i64)blockIdx.x * 2 * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        p[c] = sdw[c];
        p[cols + c] = sdb[c];
    }
}


// The fast paths, for rows of whole 16-byte vectors (cols % (16 / sizeof(T)) == 0) and
// 16-byte aligned buffers: the row lives in registers between the sweeps.
//
// Forward: one block per row; thread t holds vectors t, t + B, ... (at most LN_FWD_PACKS).
// Backward: one block per run of rows; thread t owns the same vectors of every row, keeps the
// weight and its share of the weight and bias gradients in registers, and writes them as
// per-block partials at the end (summed in a fixed order by `column_sum`).

#define LN_FWD_PACKS 4
#define LN_BWD_PACKS 1

template <class T>
__device__ void layernorm_fwd_cached(const T* x, const T* residual, const T* w, const T* b, T* out, T* sum_out,
                                     float* mean, float* rstd, int /* rows: one block each */, int cols, float eps) {
    // One block per row: gridDim.x is the row count.
    constexpr int P = VecWidth<T>::value;
    __shared__ float scratch[32];
    const i64 base = (i64)blockIdx.x * cols;
    const RowSource<T> src{x + base, residual ? residual + base : nullptr};
    const int packs = cols / P;
    float v[LN_FWD_PACKS][P];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < LN_FWD_PACKS; j++) {
        const int k = threadIdx.x + j * blockDim.x;
        if (k < packs) {
            src.load(k * P, v[j], true);
            if (sum_out) store_pack<T, P>(sum_out + base + k * P, v[j]);
#pragma unroll
            for (int i = 0; i < P; i++) s += v[j][i];
        }
    }
    const float mu = block_sum(s, scratch) / cols;
    float q = 0.0f;
#pragma unroll
    for (int j = 0; j < LN_FWD_PACKS; j++) {
        if (threadIdx.x + j * blockDim.x < packs) {
#pragma unroll
            for (int i = 0; i < P; i++) q += (v[j][i] - mu) * (v[j][i] - mu);
        }
    }
    const float rs = rsqrtf(block_sum(q, scratch) / cols + eps);
#pragma unroll
    for (int j = 0; j < LN_FWD_PACKS; j++) {
        const int k = threadIdx.x + j * blockDim.x;
        if (k < packs) {
            float wv[P], bv[P];
            load_pack<T, P>(w + k * P, wv);
            load_pack<T, P>(b + k * P, bv);
#pragma unroll
            for (int i = 0; i < P; i++) v[j][i] = (v[j][i] - mu) * rs * wv[i] + bv[i];
            store_pack<T, P>(out + base + k * P, v[j]);
        }
    }
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = mu;
        rstd[blockIdx.x] = rs;
    }
}

template <class T>
__device__ void layernorm_bwd_cached(const T* x, const T* w, const float* mean, const float* rstd, const T* dout,
                                     const T* dresidual, T* dx, float* partial, int rows, int cols) {
    constexpr int P = VecWidth<T>::value;
    __shared__ float scratch[64];
    const int packs = cols / P;
    float wv[LN_BWD_PACKS][P], dw[LN_BWD_PACKS][P], db[LN_BWD_PACKS][P];
#pragma unroll
    for (int j = 0; j < LN_BWD_PACKS; j++) {
        const int k = threadIdx.x + j * blockDim.x;
#pragma unroll
        for (int i = 0; i < P; i++) dw[j][i] = db[j][i] = 0.0f;
        if (k < packs) load_pack<T, P>(w + k * P, wv[j]);
    }
    const int per_block = (rows + gridDim.x - 1) / gridDim.x;
    const int r0 = blockIdx.x * per_block;
    const int r1 = min(rows, r0 + per_block);
    // Rows are double-buffered: the next row's x and dout are loaded while this row's
    // reductions wait on the block barrier, hiding the memory latency.
    float xn[LN_BWD_PACKS][P], dn[LN_BWD_PACKS][P];
    auto fetch = [&](int row) {
        const i64 base = (i64)row * cols;
#pragma unroll
        for (int j = 0; j < LN_BWD_PACKS; j++) {
            const int k = threadIdx.x + j * blockDim.x;
            if (k < packs && row < r1) {
                load_pack<T, P>(x + base + k * P, xn[j]);
                load_pack<T, P>(dout + base + k * P, dn[j]);
            }
        }
    };
    fetch(r0);
    for (int row = r0; row < r1; row++) {
        const i64 base = (i64)row * cols;
        const float mu = mean[row], rs = rstd[row];
        float xh[LN_BWD_PACKS][P], d[LN_BWD_PACKS][P];
#pragma unroll
        for (int j = 0; j < LN_BWD_PACKS; j++)
#pragma unroll
            for (int i = 0; i < P; i++) {
                xh[j][i] = xn[j][i];
                d[j][i] = dn[j][i];
            }
        fetch(row + 1);
        float a = 0.0f, bsum = 0.0f;
#pragma unroll
        for (int j = 0; j < LN_BWD_PACKS; j++) {
            if (threadIdx.x + j * blockDim.x < packs) {
#pragma unroll
                for (int i = 0; i < P; i++) {
                    xh[j][i] = (xh[j][i] - mu) * rs;
                    const float g = d[j][i] * wv[j][i];
                    a += g;
                    bsum += g * xh[j][i];
                }
            }
        }
        const float2 sums = block_sum2(a, bsum, scratch);
        const float mg = sums.x / cols, mgx = sums.y / cols;
#pragma unroll
        for (int j = 0; j < LN_BWD_PACKS; j++) {
            const int k = threadIdx.x + j * blockDim.x;
            if (k < packs) {
                float r[P], o[P];
                if (dresidual) load_pack<T, P>(dresidual + base + k * P, r);
#pragma unroll
                for (int i = 0; i < P; i++) {
                    o[i] = rs * (d[j][i] * wv[j][i] - mg - xh[j][i] * mgx) + (dresidual ? r[i] : 0.0f);
                    dw[j][i] += d[j][i] * xh[j][i];
                    db[j][i] += d[j][i];
                }
                store_pack<T, P>(dx + base + k * P, o);
            }
        }
    }
    float* p = partial + (i64)blockIdx.x * 2 * cols;
#pragma unroll
    for (int j = 0; j < LN_BWD_PACKS; j++) {
        const int k = threadIdx.x + j * blockDim.x;
        if (k < packs) {
#pragma unroll
            for (int i = 0; i < P; i++) {
                p[k * P + i] = dw[j][i];
                p[cols + k * P + i] = db[j][i];
            }
        }
    }
}


// The streamed paths, for the same rows as the cached ones: persistent blocks, each taking a
// run of rows LN_ROWS at a time, with the rows' inputs copied into a shared-memory ring
// LN_STAGES steps ahead by `cp.async`. The copies hold the bytes in flight that hide the memory
// latency without holding registers, and one block-wide reduction covers LN_ROWS rows. Thread
// t owns vector t of every row: it copies that vector of each input into the ring and is the
// only thread to read it back, so the ring needs no barrier, only `cp.async.wait_group`. The
// weight and bias (forward) or the weight and the weight and bias gradients (backward) stay in
// registers for the whole run.
//
// Ring layout, per stage: `arrays` inputs × LN_ROWS rows × cols elements.

#define LN_ROWS 2
#define LN_STAGES 3

/// This block's run of rows [r0, r1): the rows split evenly across the grid.
__device__ __forceinline__ int2 ln_block_rows(int rows) {
    const int per_block = (rows + gridDim.x - 1) / gridDim.x;
    const int r0 = min(rows, (int)blockIdx.x * per_block);
    return make_int2(r0, min(rows, r0 + per_block));
}

/// Copies vector `k` of rows `row .. row + LN_ROWS` (those below `r1`) of each input (`in0`,
/// then `in1` and `in2` where not null) into ring slot `slot`, then commits the copies as one
/// group (an empty group past the end, so that every thread commits one group per step).
template <class T>
__device__ __forceinline__ void ln_stage(T* slot, const T* in0, const T* in1, const T* in2, int row, int r1, int cols,
                                         int k, bool active) {
    constexpr int P = VecWidth<T>::value;
    const T* inputs[3] = {in0, in1, in2};
    if (active) {
#pragma unroll
        for (int a = 0; a < 3; a++) {
#pragma unroll
            for (int j = 0; j < LN_ROWS; j++) {
                if (inputs[a] && row + j < r1)
                    cp_async16(smem_u32(slot + (a * LN_ROWS + j) * cols + k * P),
                               inputs[a] + (i64)(row + j) * cols + k * P, 16);
            }
        }
    }
    cp_async_commit();
}

template <class T>
__device__ void layernorm_fwd_streamed(const T* x, const T* residual, const T* w, const T* b, T* out, T* sum_out,
                                       float* mean, float* rstd, int rows, int cols, float eps) {
    constexpr int P = VecWidth<T>::value;
    extern __shared__ __align__(16) unsigned char ln_ring_bytes[];
    __shared__ float scratch[32 * LN_ROWS];
    T* ring = reinterpret_cast<T*>(ln_ring_bytes);
    const int k = threadIdx.x;
    const bool active = k < cols / P;
    const int n = residual ? 2 : 1;
    const i64 stage = (i64)n * LN_ROWS * cols;
    const int2 run = ln_block_rows(rows);
    const int steps = (run.y - run.x + LN_ROWS - 1) / LN_ROWS;
    float wv[P], bv[P];
    if (active) {
        load_pack<T, P>(w + k * P, wv);
        load_pack<T, P>(b + k * P, bv);
    }
#pragma unroll
    for (int s = 0; s < LN_STAGES - 1; s++)
        ln_stage<T>(ring + s * stage, x, residual, nullptr, run.x + s * LN_ROWS, s < steps ? run.y : 0, cols, k, active);
    for (int step = 0; step < steps; step++) {
        const int ahead = step + LN_STAGES - 1;
        ln_stage<T>(ring + (ahead % LN_STAGES) * stage, x, residual, nullptr, run.x + ahead * LN_ROWS, ahead < steps ? run.y : 0,
                    cols, k, active);
        cp_async_wait<LN_STAGES - 1>();
        const T* slot = ring + (step % LN_STAGES) * stage;
        const int row = run.x + step * LN_ROWS;
        float v[LN_ROWS][P], s[LN_ROWS];
#pragma unroll
        for (int j = 0; j < LN_ROWS; j++) {
            s[j] = 0.0f;
            const bool live = active && row + j < run.y;
#pragma unroll
            for (int i = 0; i < P; i++) v[j][i] = 0.0f;
            if (live) {
                load_pack<T, P>(slot + j * cols + k * P, v[j]);
                if (residual) {
                    float r[P];
                    load_pack<T, P>(slot + (LN_ROWS + j) * cols + k * P, r);
#pragma unroll
                    for (int i = 0; i < P; i++) v[j][i] = to_f32(from_f32<T>(v[j][i] + r[i]));
                    store_pack<T, P>(sum_out + (i64)(row + j) * cols + k * P, v[j]);
                }
#pragma unroll
                for (int i = 0; i < P; i++) s[j] += v[j][i];
            }
        }
        block_sum_n<LN_ROWS>(s, scratch);
        float mu[LN_ROWS], q[LN_ROWS];
#pragma unroll
        for (int j = 0; j < LN_ROWS; j++) {
            mu[j] = s[j] / cols;
            q[j] = 0.0f;
            if (active && row + j < run.y) {
#pragma unroll
                for (int i = 0; i < P; i++) q[j] += (v[j][i] - mu[j]) * (v[j][i] - mu[j]);
            }
        }
        block_sum_n<LN_ROWS>(q, scratch);
#pragma unroll
        for (int j = 0; j < LN_ROWS; j++) {
            if (row + j >= run.y) continue;
            const float rs = rsqrtf(q[j] / cols + eps);
            if (active) {
#pragma unroll
                for (int i = 0; i < P; i++) v[j][i] = (v[j][i] - mu[j]) * rs * wv[i] + bv[i];
                store_pack<T, P>(out + (i64)(row + j) * cols + k * P, v[j]);
            }
            if (k == 0) {
                mean[row + j] = mu[j];
                rstd[row + j] = rs;
            }
        }
    }
    cp_async_wait<0>();
}

template <class T>
__device__ void layernorm_bwd_streamed(const T* x, const T* w, const float* mean, const float* rstd, const T* dout,
                                       const T* dresidual, T* dx, float* partial, int rows, int cols) {
    constexpr int P = VecWidth<T>::value;
    extern __shared__ __align__(16) unsigned char ln_ring_bytes[];
    __shared__ float scratch[32 * 2 * LN_ROWS];
    T* ring = reinterpret_cast<T*>(ln_ring_bytes);
    const int k = threadIdx.x;
    const bool active = k < cols / P;
    const int n = dresidual ? 3 : 2;
    const i64 stage = (i64)n * LN_ROWS * cols;
    const int2 run = ln_block_rows(rows);
    const int steps = (run.y - run.x + LN_ROWS - 1) / LN_ROWS;
    float wv[P], dw[P], db[P];
#pragma unroll
    for (int i = 0; i < P; i++) wv[i] = dw[i] = db[i] = 0.0f;
    if (active) load_pack<T, P>(w + k * P, wv);
#pragma unroll
    for (int s = 0; s < LN_STAGES - 1; s++)
        ln_stage<T>(ring + s * stage, x, dout, dresidual, run.x + s * LN_ROWS, s < steps ? run.y : 0, cols, k, active);
    for (int step = 0; step < steps; step++) {
        const int row = run.x + step * LN_ROWS;
        // The statistics load while the ring's copies land.
        float mu[LN_ROWS], rs[LN_ROWS];
#pragma unroll
        for (int j = 0; j < LN_ROWS; j++) {
            const bool here = row + j < run.y;
            mu[j] = here ? mean[row + j] : 0.0f;
            rs[j] = here ? rstd[row + j] : 0.0f;
        }
        const int ahead = step + LN_STAGES - 1;
        ln_stage<T>(ring + (ahead % LN_STAGES) * stage, x, dout, dresidual, run.x + ahead * LN_ROWS, ahead < steps ? run.y : 0,
                    cols, k, active);
        cp_async_wait<LN_STAGES - 1>();
        const T* slot = ring + (step % LN_STAGES) * stage;
        float xh[LN_ROWS][P], d[LN_ROWS][P], sums[2 * LN_ROWS];
#pragma unroll
        for (int j = 0; j < LN_ROWS; j++) {
            sums[2 * j] = sums[2 * j + 1] = 0.0f;
#pragma unroll
            for (int i = 0; i < P; i++) xh[j][i] = d[j][i] = 0.0f;
            if (active && row + j < run.y) {
                load_pack<T, P>(slot + j * cols + k * P, xh[j]);
                load_pack<T, P>(slot + (LN_ROWS + j) * cols + k * P, d[j]);
#pragma unroll
                for (int i = 0; i < P; i++) {
                    xh[j][i] = (xh[j][i] - mu[j]) * rs[j];
                    const float g = d[j][i] * wv[i];
                    sums[2 * j] += g;
                    sums[2 * j + 1] += g * xh[j][i];
                }
            }
        }
        block_sum_n<2 * LN_ROWS>(sums, scratch);
#pragma unroll
        for (int j = 0; j < LN_ROWS; j++) {
            if (!active || row + j >= run.y) continue;
            const float mg = sums[2 * j] / cols, mgx = sums[2 * j + 1] / cols;
            float r[P], o[P];
            if (dresidual) load_pack<T, P>(slot + (2 * LN_ROWS + j) * cols + k * P, r);
#pragma unroll
            for (int i = 0; i < P; i++) {
                o[i] = rs[j] * (d[j][i] * wv[i] - mg - xh[j][i] * mgx) + (dresidual ? r[i] : 0.0f);
                dw[i] += d[j][i] * xh[j][i];
                db[i] += d[j][i];
            }
            store_pack<T, P>(dx + (i64)(row + j) * cols + k * P, o);
        }
    }
    cp_async_wait<0>();
    if (active) {
        float* p = partial + (i64)blockIdx.x * 2 * cols;
#pragma unroll
        for (int i = 0; i < P; i++) {
            p[k * P + i] = dw[i];
            p[cols + k * P + i] = db[i];
        }
    }
}

// ---------------------------------------------------------------- entry points
// One forward and one backward kernel per family (general: no suffix; `_cached`; `_streamed`)
// and storage type, with the same parameters, so the wrapper picks a family by name.

#define LAYERNORM_FAMILY(T, S, V)                                                                   \
    extern "C" __global__ void layernorm_fwd##V##_##S(const T* x, const T* residual, const T* w,    \
                                                      const T* b, T* out, T* sum_out, float* mean,  \
                                                      float* rstd, int rows, int cols, float eps) { \
        layernorm_fwd##V<T>(x, residual, w, b, out, sum_out, mean, rstd, rows, cols, eps);           \
    }                                                                                               \
    extern "C" __global__ void layernorm_bwd##V##_##S(const T* x, const T* w, const float* mean,    \
                                                      const float* rstd, const T* dout,             \
                                                      const T* dresidual, T* dx, float* partial,    \
                                                      int rows, int cols) {                         \
        layernorm_bwd##V<T>(x, w, mean, rstd, dout, dresidual, dx, partial, rows, cols);             \
    }
#define LAYERNORM(T, S) LAYERNORM_FAMILY(T, S, ) LAYERNORM_FAMILY(T, S, _cached) LAYERNORM_FAMILY(T, S, _streamed)
FOR_EACH_DTYPE(LAYERNORM)
