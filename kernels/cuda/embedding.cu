// Embedding lookup and its scatter-add backward.
//
// The backward is deterministic and atomic-free: the host groups token positions by id
// (`unique_ids`, `starts`, `positions`, a CSR layout), and block (u, column tile) sums the
// rows of `dout` for id `unique_ids[u]` in position order, then adds the sum to the weight
// gradient.

template <class T>
__device__ void embedding_fwd(const T* weight, const u32* ids, T* out, i64 n, int dim) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const i64 token = i / dim;
        const int c = (int)(i - token * dim);
        out[i] = weight[(i64)ids[token] * dim + c];
    }
}

template <class T>
__device__ void embedding_bwd(const T* dout, const u32* unique_ids, const u32* starts, const u32* positions,
                              T* dweight, int dim) {
    const int u = blockIdx.x;
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    float s = 0.0f;
    for (u32 k = starts[u]; k < starts[u + 1]; k++) s += to_f32(dout[(i64)positions[k] * dim + c]);
    T* dst = dweight + (i64)unique_ids[u] * dim + c;
    *dst = from_f32<T>(to_f32(*dst) + s);
}

#define EMBEDDING(T, S)                                                                             \
    extern "C" __global__ void embedding_fwd_##S(const T* weight, const u32* ids, T* out, i64 n,    \
                                                 int dim) {                                         \
        embedding_fwd<T>(weight, ids, out, n, dim);                                                 \
    }                                                                                               \
    extern "C" __global__ void embedding_bwd_##S(const T* dout, const u32* unique_ids,              \
                                                 const u32* starts, const u32* positions,           \
                                                 T* dweight, int dim) {                             \
        embedding_bwd<T>(dout, unique_ids, starts, positions, dweight, dim);                        \
    }
FOR_EACH_DTYPE(EMBEDDING)
