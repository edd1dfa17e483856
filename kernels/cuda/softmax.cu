// Row softmax forward and backward, one block per row.

template <class T>
__device__ void softmax_fwd(const T* x, T* out, int cols) {
    __shared__ float scratch[32];
    const i64 base = (i64)blockIdx.x * cols;
    float m = -POLY_INF, s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = to_f32(x[base + c]);
        if (v > m) {
            s = s * expf(m - v) + 1.0f;
            m = v;
        } else {
            s += expf(v - m);
        }
    }
    const float mx = block_max(m, scratch);
    const float total = block_sum(m == -POLY_INF ? 0.0f : s * expf(m - mx), scratch);
    const float inv = 1.0f / total;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[base + c] = from_f32<T>(expf(to_f32(x[base + c]) - mx) * inv);
}

template <class T>
__device__ void softmax_bwd(const T* y, const T* dy, T* dx, int cols) {
    __shared__ float scratch[32];
    const i64 base = (i64)blockIdx.x * cols;
    float d = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) d += to_f32(y[base + c]) * to_f32(dy[base + c]);
    const float dot = block_sum(d, scratch);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float yv = to_f32(y[base + c]);
        dx[base + c] = from_f32<T>(yv * (to_f32(dy[base + c]) - dot));
    }
}

#define SOFTMAX(T, S)                                                                           \
    extern "C" __global__ void softmax_fwd_##S(const T* x, T* out, int cols) {                  \
        softmax_fwd<T>(x, out, cols);                                                           \
    }                                                                                           \
    extern "C" __global__ void softmax_bwd_##S(const T* y, const T* dy, T* dx, int cols) {      \
        softmax_bwd<T>(y, dy, dx, cols);                                                        \
    }
FOR_EACH_DTYPE(SOFTMAX)
