// Bias + GeLU (tanh form), forward and backward. The backward writes dx and per-split column
// partial sums of dx (the bias gradient), reduced in a fixed order by `column_sum`.

template <class T>
__device__ void bias_gelu_fwd(const T* x, const T* bias, T* out, i64 n, int cols) {
    constexpr int P = VecWidth<T>::value;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    // 16-byte vectors when rows are whole vectors (a vector never straddles two rows).
    if (cols % P == 0 && aligned16(x) && aligned16(out) && (!bias || aligned16(bias))) {
        for (i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x; k < n / P; k += stride) {
            float v[P], b[P];
            load_pack<T, P>(x + k * P, v);
            if (bias) load_pack<T, P>(bias + (k * P) % cols, b);
#pragma unroll
            for (int e = 0; e < P; e++) v[e] = gelu_tanh(v[e] + (bias ? b[e] : 0.0f));
            store_pack<T, P>(out + k * P, v);
        }
        return;
    }
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) {
        float u = to_f32(x[i]);
        if (bias) u += to_f32(bias[i % cols]);
        out[i] = from_f32<T>(gelu_tanh(u));
    }
}

// Block (32, 8): 32 columns by 8 row lanes; blockIdx.y is the row split.
template <class T>
__device__ void bias_gelu_bwd(const T* x, const T* bias, const T* dout, T* dx, float* partial, int rows,
                              int cols) {
    __shared__ float sums[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int per_split = (rows + gridDim.y - 1) / gridDim.y;
    const int r0 = blockIdx.y * per_split, r1 = min(rows, r0 + per_split);
    float acc = 0.0f;
    if (c < cols) {
        const float bc = bias ? to_f32(bias[c]) : 0.0f;
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            const i64 i = (i64)r * cols + c;
            float g = to_f32(dout[i]) * gelu_tanh_grad(to_f32(x[i]) + bc);
            dx[i] = from_f32<T>(g);
            acc += g;
        }
    }
    if (!partial) return;
    sums[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; k++) s += sums[k][threadIdx.x];
        partial[(i64)blockIdx.y * cols + c] = s;
    }
}

#define BIAS_GELU(T, S)                                                                           \
    extern "C" __global__ void bias_gelu_fwd_##S(const T* x, const T* bias, T* out, i64 n,        \
                                                 int cols) {                                      \
        bias_gelu_fwd<T>(x, bias, out, n, cols);                                                  \
    }                                                                                             \
    extern "C" __global__ void bias_gelu_bwd_##S(const T* x, const T* bias, const T* dout, T* dx, \
                                                 float* partial, int rows, int cols) {            \
        bias_gelu_bwd<T>(x, bias, dout, dx, partial, rows, cols);                                 \
    }
FOR_EACH_DTYPE(BIAS_GELU)
