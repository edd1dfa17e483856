// Embedding lookup and its scatter-add backward.
//
// The backward is deterministic and atomic-free: the host groups token positions by id
// (`unique_ids`, `starts`, `positions`, a CSR layout), and block (u, column tile) sums the
// rows of `dout` for id `unique_ids[u]` in position order, then adds the sum to the weight
// gradient.

// Block per token (grid-stride over the tokens): the block copies row ids[t] of the table,
// 16-byte vectors when the rows are whole vectors and both pointers are aligned.
template <class T>
__device__ void embedding_fwd(const T* weight, const u32* ids, T* out, i64 n, int dim) {
    constexpr int P = VecWidth<T>::value;
    const i64 tokens = n / dim;
    const bool vector = dim % P == 0 && aligned16(weight) && aligned16(out);
    for (i64 t = blockIdx.x; t < tokens; t += gridDim.x) {
        const T* src = weight + (i64)ids[t] * dim;
        T* dst = out + t * dim;
        if (vector) {
            for (int k = threadIdx.x; k < dim / P; k += blockDim.x)
                *reinterpret_cast<uint4*>(dst + k * P) = *reinterpret_cast<const uint4*>(src + k * P);
        } else {
            for (int c = threadIdx.x; c < dim; c += blockDim.x) dst[c] = src[c];
        }
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
