// Bias + GeLU (tanh form), forward and backward. The backward writes dx and per-split column
// partial sums of dx (the bias gradient), reduced in a fixed order by `column_sum`.

template <class T>
__device__ void bias_gelu_fwd(const T* x, const T* bias, T* out, i64 n, int cols) {
    constexpr int P = VecWidth<T>::value;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    // The bias column of an element: a 32-bit remainder when the indices fit (a 64-bit one
    // costs dozens of instructions per vector).
    const bool small = n <= 0x7fffffff;
    auto column = [&](i64 i) -> int { return small ? (int)((u32)i % (u32)cols) : (int)(i % cols); };
    // 16-byte vectors when rows are whole vectors (a vector never straddles two rows).
    if (cols % P == 0 && aligned16(x) && aligned16(out) && (!bias || aligned16(bias))) {
        for (i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x; k < n / P; k += stride) {
            float v[P], b[P];
            load_pack<T, P>(x + k * P, v);
            if (bias) load_pack<T, P>(bias + column(k * P), b);
#pragma unroll
            for (int e = 0; e < P; e++) v[e] = gelu_tanh(v[e] + (bias ? b[e] : 0.0f));
            store_pack<T, P>(out + k * P, v);
        }
        return;
    }
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) {
        float u = to_f32(x[i]);
        if (bias) u += to_f32(bias[column(i)]);
        out[i] = from_f32<T>(gelu_tanh(u));
    }
}

// dx = dout · gelu'(x + bias) for `N` columns of one row, from loaded x (`v`, overwritten
// with dx) and dout (`d`), added into `acc`.
template <int N>
__device__ __forceinline__ void gelu_bwd_values(float (&v)[N], const float (&d)[N], const float (&bc)[N],
                                                float (&acc)[N]) {
#pragma unroll
    for (int e = 0; e < N; e++) {
        v[e] = d[e] * gelu_tanh_grad(v[e] + bc[e]);
        acc[e] += v[e];
    }
}

// A block of 256 threads: 32 column lanes by 8 row lanes (see COLUMN_SUMS_ROW in common.cuh);
// blockIdx.y is the row split. A column lane takes `N` adjacent columns: a 16-byte vector (the
// rows are whole vectors and every pointer is aligned) or one column, so a block covers 32·N
// columns and a warp reads 32·N contiguous elements of a row. Two rows per iteration, both
// loaded before either is stored, keep four loads in flight per thread. The column partial
// sums go through shared memory in a fixed order.
template <class T, int N>
__device__ void bias_gelu_bwd_lanes(const T* x, const T* bias, const T* dout, T* dx, float* partial, int rows,
                                    int cols, float (*sums)[COLUMN_SUMS_ROW]) {
    const int lane = threadIdx.x & 31, row_lane = threadIdx.x >> 5;
    const int c0 = (blockIdx.x * 32 + lane) * N;
    const int per_split = (rows + gridDim.y - 1) / gridDim.y;
    const int r0 = blockIdx.y * per_split, r1 = min(rows, r0 + per_split);
    float acc[N], bc[N];
#pragma unroll
    for (int e = 0; e < N; e++) acc[e] = bc[e] = 0.0f;
    if (c0 < cols) {
        if (bias) load_pack<T, N>(bias + c0, bc);
        int r = r0 + row_lane;
        for (; r + 8 < r1; r += 16) {
            const i64 i = (i64)r * cols + c0, j = i + 8 * (i64)cols;
            float va[N], da[N], vb[N], db[N];
            load_pack<T, N>(x + i, va);
            load_pack<T, N>(dout + i, da);
            load_pack<T, N>(x + j, vb);
            load_pack<T, N>(dout + j, db);
            gelu_bwd_values<N>(va, da, bc, acc);
            gelu_bwd_values<N>(vb, db, bc, acc);
            store_pack<T, N>(dx + i, va);
            store_pack<T, N>(dx + j, vb);
        }
        if (r < r1) {
            const i64 i = (i64)r * cols + c0;
            float v[N], d[N];
            load_pack<T, N>(x + i, v);
            load_pack<T, N>(dout + i, d);
            gelu_bwd_values<N>(v, d, bc, acc);
            store_pack<T, N>(dx + i, v);
        }
    }
    if (!partial) return;
    write_column_partials<N>(acc, sums, partial + (i64)blockIdx.y * cols, (i64)blockIdx.x * 32 * N, cols);
}

// The wrapper passes `vector` when the 16-byte path applies (see bias_gelu_bwd_lanes).
template <class T>
__device__ void bias_gelu_bwd(const T* x, const T* bias, const T* dout, T* dx, float* partial, int rows,
                              int cols, int vector) {
    __shared__ float sums[8][COLUMN_SUMS_ROW];
    if (vector)
        bias_gelu_bwd_lanes<T, VecWidth<T>::value>(x, bias, dout, dx, partial, rows, cols, sums);
    else
        bias_gelu_bwd_lanes<T, 1>(x, bias, dout, dx, partial, rows, cols, sums);
}

#define BIAS_GELU(T, S)                                                                           \
    extern "C" __global__ void bias_gelu_fwd_##S(const T* x, const T* bias, T* out, i64 n,        \
                                                 int cols) {                                      \
        bias_gelu_fwd<T>(x, bias, out, n, cols);                                                  \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        bias_gelu_bwd_##S(const T* x, const T* bias, const T* dout, T* dx, float* partial, int rows, \
                          int cols, int vector) {                                                 \
        bias_gelu_bwd<T>(x, bias, dout, dx, partial, rows, cols, vector);                         \
    }
FOR_EACH_DTYPE(BIAS_GELU)
