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

#define LAYERNORM(T, S)                                                                          \
    extern "C" __global__ void layernorm_fwd_##S(const T* x, const T* residual, const T* w,      \
                                                 const T* b, T* out, T* sum_out, float* mean,    \
                                                 float* rstd, int rows, int cols, float eps) {   \
        layernorm_fwd<T>(x, residual, w, b, out, sum_out, mean, rstd, rows, cols, eps);           \
    }                                                                                            \
    extern "C" __global__ void layernorm_bwd_##S(const T* x, const T* w, const float* mean,      \
                                                 const float* rstd, const T* dout,               \
                                                 const T* dresidual, T* dx, float* partial,      \
                                                 int rows, int cols) {                           \
        layernorm_bwd<T>(x, w, mean, rstd, dout, dresidual, dx, partial, rows, cols);             \
    }
FOR_EACH_DTYPE(LAYERNORM)

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
                                     float* mean, float* rstd, int cols, float eps) {
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

#define LAYERNORM_CACHED(T, S)                                                                      \
    extern "C" __global__ void layernorm_fwd_cached_##S(const T* x, const T* residual, const T* w,  \
                                                        const T* b, T* out, T* sum_out, float* mean, \
                                                        float* rstd, int rows, int cols, float eps) { \
        layernorm_fwd_cached<T>(x, residual, w, b, out, sum_out, mean, rstd, cols, eps);            \
    }                                                                                               \
    extern "C" __global__ void layernorm_bwd_cached_##S(const T* x, const T* w, const float* mean,  \
                                                        const float* rstd, const T* dout,           \
                                                        const T* dresidual, T* dx, float* partial,  \
                                                        int rows, int cols) {                       \
        layernorm_bwd_cached<T>(x, w, mean, rstd, dout, dresidual, dx, partial, rows, cols);        \
    }
FOR_EACH_DTYPE(LAYERNORM_CACHED)
