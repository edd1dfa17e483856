// Elementwise kernels: broadcasting binary ops over strided operands, unary maps, casts,
// strided gathers (making a view contiguous), accumulation and fill.
//
// Every kernel but the column reductions (sum_rows_partial, column_sum) is a grid-stride loop
// over the contiguous output, so any grid size is correct.

#define MAX_DIMS 6

// Shape of the output and the strides (in elements) of up to two operands over it; a stride
// of 0 broadcasts that axis. When `small` (fewer than 2^31 elements), the index is split into
// coordinates with 32-bit division by multiplication: q = umulhi(i, div_mul[d]) >> div_shr[d]
// (div_mul 0 for an axis of 1: q = i), exact for i < 2^31; a 64-bit division per axis and
// element would cost dozens of instructions.
struct StridedShape {
    int ndim;
    int small;
    i64 shape[MAX_DIMS];
    i64 a_stride[MAX_DIMS];
    i64 b_stride[MAX_DIMS];
    u32 div_mul[MAX_DIMS];
    u32 div_shr[MAX_DIMS];
};

__device__ __forceinline__ void strided_offsets(const StridedShape& s, i64 i, i64& oa, i64& ob) {
    if (s.ndim == 1) {
        oa = i * s.a_stride[0];
        ob = i * s.b_stride[0];
        return;
    }
    oa = 0;
    ob = 0;
    if (s.small) {
        u32 j = (u32)i;
#pragma unroll
        for (int d = MAX_DIMS - 1; d >= 0; d--) {
            if (d < s.ndim) {
                const u32 q = s.div_mul[d] ? __umulhi(j, s.div_mul[d]) >> s.div_shr[d] : j;
                const u32 c = j - q * (u32)s.shape[d];
                j = q;
                oa += (i64)c * s.a_stride[d];
                ob += (i64)c * s.b_stride[d];
            }
        }
        return;
    }
#pragma unroll
    for (int d = MAX_DIMS - 1; d >= 0; d--) {
        if (d < s.ndim) {
            i64 c = i % s.shape[d];
            i /= s.shape[d];
            oa += c * s.a_stride[d];
            ob += c * s.b_stride[d];
        }
    }
}

#define GRID_STRIDE_LOOP(i, n) \
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// The elementwise kernels below read and write 16-byte vectors when their pointers allow it
// (every device buffer starts aligned), then finish the last partial vector element by element.
#define VECTOR_LOOP(k, n, P) GRID_STRIDE_LOOP(k, (n) / (P))
#define TAIL_LOOP(i, n, P) \
    for (i64 i = (n) / (P) * (P) + blockIdx.x * (i64)blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// op: 0 add, 1 sub, 2 mul, 3 div.
__device__ __forceinline__ float apply_binary(int op, float x, float y) {
    switch (op) {
        case 0: return x + y;
        case 1: return x - y;
        case 2: return x * y;
        default: return x / y;
    }
}

// Dense operands of the output's shape (a residual add) take 16-byte vectors; see VECTOR_LOOP.
template <class T>
__device__ void binary(const StridedShape& s, const T* a, const T* b, T* out, i64 n, int op) {
    constexpr int P = VecWidth<T>::value;
    if (s.ndim == 1 && s.a_stride[0] == 1 && s.b_stride[0] == 1 && aligned16(a) && aligned16(b) && aligned16(out)) {
        VECTOR_LOOP(k, n, P) {
            float x[P], y[P];
            load_pack<T, P>(a + k * P, x);
            load_pack<T, P>(b + k * P, y);
#pragma unroll
            for (int e = 0; e < P; e++) x[e] = apply_binary(op, x[e], y[e]);
            store_pack<T, P>(out + k * P, x);
        }
        TAIL_LOOP(i, n, P) { out[i] = from_f32<T>(apply_binary(op, to_f32(a[i]), to_f32(b[i]))); }
        return;
    }
    GRID_STRIDE_LOOP(i, n) {
        i64 oa, ob;
        strided_offsets(s, i, oa, ob);
        out[i] = from_f32<T>(apply_binary(op, to_f32(a[oa]), to_f32(b[ob])));
    }
}

// op: 0 affine (alpha·x + beta), 1 square, 2 power alpha, 3 GeLU (tanh form).
__device__ __forceinline__ float apply_map(int op, float alpha, float beta, float v) {
    switch (op) {
        case 0: return fmaf(alpha, v, beta);
        case 1: return v * v;
        case 2: return powf(v, alpha);
        default: return gelu_tanh(v);
    }
}

// op: 0 affine (alpha·x + beta), 1 square, 2 power alpha, 3 GeLU (tanh form).
template <class T>
__device__ void map(const T* x, T* out, i64 n, int op, float alpha, float beta) {
    constexpr int P = VecWidth<T>::value;
    if (aligned16(x) && aligned16(out)) {
        VECTOR_LOOP(k, n, P) {
            float v[P];
            load_pack<T, P>(x + k * P, v);
#pragma unroll
            for (int e = 0; e < P; e++) v[e] = apply_map(op, alpha, beta, v[e]);
            store_pack<T, P>(out + k * P, v);
        }
        TAIL_LOOP(i, n, P) { out[i] = from_f32<T>(apply_map(op, alpha, beta, to_f32(x[i]))); }
        return;
    }
    GRID_STRIDE_LOOP(i, n) { out[i] = from_f32<T>(apply_map(op, alpha, beta, to_f32(x[i]))); }
}

// Whether the strided side (strides `stride`) of a gather or scatter moves whole 16-byte vectors
// of `P` elements: its last axis is contiguous and a whole number of vectors, and every other
// stride too, so each vector of the dense side is one aligned vector there.
__device__ __forceinline__ bool vector_view(const StridedShape& s, const i64* stride, int P) {
    if (s.ndim == 0 || stride[s.ndim - 1] != 1 || s.shape[s.ndim - 1] % P != 0) return false;
    for (int d = 0; d < s.ndim - 1; d++)
        if (stride[d] % P != 0) return false;
    return true;
}

// A copy between a dense buffer and a strided view: a gather (the view `a` into the dense `to`)
// or, with `Scatter`, its inverse (the dense `from` into the view `b` of `to`, used to write into
// a slice of a larger tensor). 16-byte vectors when vector_view allows (the length is then a
// whole number of vectors).
template <class T, bool Scatter>
__device__ void strided_copy(const StridedShape& s, const T* from, T* to, i64 n) {
    constexpr int P = VecWidth<T>::value;
    if (aligned16(from) && aligned16(to) && vector_view(s, Scatter ? s.b_stride : s.a_stride, P)) {
        VECTOR_LOOP(k, n, P) {
            i64 oa, ob;
            strided_offsets(s, k * P, oa, ob);
            const i64 src = Scatter ? k * P : oa, dst = Scatter ? ob : k * P;
            *reinterpret_cast<uint4*>(to + dst) = *reinterpret_cast<const uint4*>(from + src);
        }
        return;
    }
    GRID_STRIDE_LOOP(i, n) {
        i64 oa, ob;
        strided_offsets(s, i, oa, ob);
        to[Scatter ? ob : i] = from[Scatter ? i : oa];
    }
}

template <class T>
__device__ void gather(const StridedShape& s, const T* a, T* out, i64 n) {
    strided_copy<T, false>(s, a, out, n);
}

template <class T>
__device__ void scatter(const StridedShape& s, const T* src, T* out, i64 n) {
    strided_copy<T, true>(s, src, out, n);
}

// out[o, i] = Σ_l x[o, l, i] over a dense [outer, len, inner] tensor, summed in f32 in order, one
// thread per output: for short axes (the wrapper takes sum_rows_partial over long ones).
template <class T>
__device__ void sum_axis(const T* x, T* out, i64 outer, i64 len, i64 inner) {
    GRID_STRIDE_LOOP(j, outer * inner) {
        const i64 o = j / inner, i = j - o * inner;
        const T* p = x + o * len * inner + i;
        float s = 0.0f;
        for (i64 l = 0; l < len; l++) s += to_f32(p[l * inner]);
        out[j] = from_f32<T>(s);
    }
}

// The first pass of sum_axis over a long axis: x is [outer, len, inner]; a block of 256 threads
// is 32 column lanes of `N` columns (a 16-byte vector or one column) by 8 row lanes (see
// COLUMN_SUMS_ROW in common.cuh); blockIdx.x covers 32·N columns of `inner`, blockIdx.y is the
// row split of `len`, blockIdx.z the outer index. Each row lane adds every 8th row of the split,
// four at a time (four loads in flight), and the block writes the split's column sums to
// partial[(split · outer + o) · inner + column]; column_sum then adds the splits in order.
template <class T, int N>
__device__ void sum_rows_partial_lanes(const T* x, float* partial, i64 len, i64 inner,
                                       float (*sums)[COLUMN_SUMS_ROW]) {
    const int lane = threadIdx.x & 31, row_lane = threadIdx.x >> 5;
    const i64 c0 = ((i64)blockIdx.x * 32 + lane) * N;
    const i64 o = blockIdx.z, outer = gridDim.z;
    const i64 per_split = (len + gridDim.y - 1) / gridDim.y;
    const i64 r0 = blockIdx.y * per_split, r1 = min(len, r0 + per_split);
    float acc[N];
#pragma unroll
    for (int e = 0; e < N; e++) acc[e] = 0.0f;
    if (c0 < inner) {
        const T* base = x + o * len * inner + c0;
        i64 r = r0 + row_lane;
        for (; r + 24 < r1; r += 32) {
            float a[N], b[N], c[N], d[N];
            load_pack<T, N>(base + r * inner, a);
            load_pack<T, N>(base + (r + 8) * inner, b);
            load_pack<T, N>(base + (r + 16) * inner, c);
            load_pack<T, N>(base + (r + 24) * inner, d);
#pragma unroll
            for (int e = 0; e < N; e++) acc[e] += (a[e] + b[e]) + (c[e] + d[e]);
        }
        for (; r < r1; r += 8) {
            float a[N];
            load_pack<T, N>(base + r * inner, a);
#pragma unroll
            for (int e = 0; e < N; e++) acc[e] += a[e];
        }
    }
    write_column_partials<N>(acc, sums, partial + ((i64)blockIdx.y * outer + o) * inner,
                             (i64)blockIdx.x * 32 * N, inner);
}

template <class T>
__device__ void sum_rows_partial(const T* x, float* partial, i64 len, i64 inner, int vector) {
    __shared__ float sums[8][COLUMN_SUMS_ROW];
    if (vector)
        sum_rows_partial_lanes<T, VecWidth<T>::value>(x, partial, len, inner, sums);
    else
        sum_rows_partial_lanes<T, 1>(x, partial, len, inner, sums);
}

template <class T>
__device__ void add_assign(T* acc, const T* x, i64 n) {
    constexpr int P = VecWidth<T>::value;
    if (aligned16(acc) && aligned16(x)) {
        VECTOR_LOOP(k, n, P) {
            float a[P], v[P];
            load_pack<T, P>(acc + k * P, a);
            load_pack<T, P>(x + k * P, v);
#pragma unroll
            for (int e = 0; e < P; e++) a[e] += v[e];
            store_pack<T, P>(acc + k * P, a);
        }
        TAIL_LOOP(i, n, P) { acc[i] = from_f32<T>(to_f32(acc[i]) + to_f32(x[i])); }
        return;
    }
    GRID_STRIDE_LOOP(i, n) { acc[i] = from_f32<T>(to_f32(acc[i]) + to_f32(x[i])); }
}

template <class T>
__device__ void fill(T* out, i64 n, float v) {
    GRID_STRIDE_LOOP(i, n) { out[i] = from_f32<T>(v); }
}

#define ELEMENTWISE(T, S)                                                                       \
    extern "C" __global__ void binary_##S(StridedShape s, const T* a, const T* b, T* out, i64 n, \
                                          int op) {                                             \
        binary<T>(s, a, b, out, n, op);                                                         \
    }                                                                                           \
    extern "C" __global__ void map_##S(const T* x, T* out, i64 n, int op, float alpha,          \
                                       float beta) {                                            \
        map<T>(x, out, n, op, alpha, beta);                                                     \
    }                                                                                           \
    extern "C" __global__ void gather_##S(StridedShape s, const T* a, T* out, i64 n) {          \
        gather<T>(s, a, out, n);                                                                \
    }                                                                                           \
    extern "C" __global__ void scatter_##S(StridedShape s, const T* src, T* out, i64 n) {        \
        scatter<T>(s, src, out, n);                                                             \
    }                                                                                           \
    extern "C" __global__ void sum_axis_##S(const T* x, T* out, i64 outer, i64 len, i64 inner) { \
        sum_axis<T>(x, out, outer, len, inner);                                                 \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(256)                                           \
        sum_rows_partial_##S(const T* x, float* partial, i64 len, i64 inner, int vector) {      \
        sum_rows_partial<T>(x, partial, len, inner, vector);                                    \
    }                                                                                           \
    extern "C" __global__ void add_assign_##S(T* acc, const T* x, i64 n) { add_assign<T>(acc, x, n); } \
    extern "C" __global__ void fill_##S(T* out, i64 n, float v) { fill<T>(out, n, v); }
FOR_EACH_DTYPE(ELEMENTWISE)

// Eight consecutive elements as f32 (one 16-byte load of a 2-byte type, two of f32), and back.
template <class T>
__device__ __forceinline__ void load8(const T* p, float* v) {
    if constexpr (sizeof(T) == 2) {
        load_pack<T, 8>(p, v);
    } else {
        load_pack<T, 4>(p, v);
        load_pack<T, 4>(p + 4, v + 4);
    }
}
template <class T>
__device__ __forceinline__ void store8(T* p, const float* v) {
    if constexpr (sizeof(T) == 2) {
        store_pack<T, 8>(p, v);
    } else {
        store_pack<T, 4>(p, v);
        store_pack<T, 4>(p + 4, v + 4);
    }
}

// Groups of eight elements through 16-byte accesses when both pointers are aligned.
template <class S, class D>
__device__ void cast(const S* x, D* out, i64 n) {
    if (aligned16(x) && aligned16(out)) {
        VECTOR_LOOP(k, n, 8) {
            float v[8];
            load8<S>(x + k * 8, v);
            store8<D>(out + k * 8, v);
        }
        TAIL_LOOP(i, n, 8) { out[i] = from_f32<D>(to_f32(x[i])); }
        return;
    }
    GRID_STRIDE_LOOP(i, n) { out[i] = from_f32<D>(to_f32(x[i])); }
}
#define CAST(S, SN, D, DN) \
    extern "C" __global__ void cast_##SN##_to_##DN(const S* x, D* out, i64 n) { cast<S, D>(x, out, n); }
#define CAST_FROM(S, SN) CAST(S, SN, float, f32) CAST(S, SN, bf16, bf16) CAST(S, SN, f16, f16)
FOR_EACH_DTYPE(CAST_FROM)

// Sums `splits` rows of f32 partial results (row `s` starts at `partial + s·row_stride`) in a
// fixed order, so that reductions are deterministic: column c < cols goes to out_a[c], column
// cols + c (when out_b is given) to out_b[c]; `accumulate` adds to the outputs instead of
// overwriting them. Block (32, 32): 32 columns, 32 row lanes each summing every 32nd row,
// then a fixed-order sum over the lanes.
template <class T>
__device__ void column_sum(const float* partial, i64 row_stride, int splits, int cols, T* out_a, T* out_b,
                           int accumulate) {
    __shared__ float lanes[32][33];
    const int total = out_b ? 2 * cols : cols;
    const int c = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (c < total)
        for (int i = threadIdx.y; i < splits; i += 32) s += partial[i * row_stride + c];
    lanes[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y != 0 || c >= total) return;
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < 32; k++) sum += lanes[k][threadIdx.x];
    T* dst = c < cols ? out_a + c : out_b + (c - cols);
    if (accumulate) sum += to_f32(*dst);
    *dst = from_f32<T>(sum);
}
#define COLUMN_SUM(T, S)                                                                         \
    extern "C" __global__ void column_sum_##S(const float* partial, i64 row_stride, int splits, \
                                              int cols, T* out_a, T* out_b, int accumulate) {   \
        column_sum<T>(partial, row_stride, splits, cols, out_a, out_b, accumulate);             \
    }
FOR_EACH_DTYPE(COLUMN_SUM)
