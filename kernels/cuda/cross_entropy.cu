// Fused softmax cross-entropy over the vocabulary: one block per row computes the row's
// log-sum-exp with an online (max, sum) in one sweep, the loss `lse − logit[target]`, and, when
// asked, the gradient `(softmax − onehot) · scale` in a second sweep. The second sweep runs
// from the end of the row backwards, so it starts on the part of the row most recently read
// and most likely still in L2. No probability matrix is ever stored; `dlogits` may alias
// `logits` (in-place gradient).

template <class T>
__device__ void cross_entropy(const T* logits, const u32* targets, T* dlogits, float* loss, float* lse_out,
                              const float* dloss, float grad_scale, int vocab, u32 ignore_index,
                              int has_ignore) {
    __shared__ float scratch[32];
    constexpr int P = VecWidth<T>::value;
    const i64 base = (i64)blockIdx.x * vocab;
    const T* x = logits + base;
    const bool vec = vocab % P == 0 && aligned16(x) && (!dlogits || aligned16(dlogits + base));
    const int width = vec ? P : 1;
    const int chunks = vocab / width;

    float m = -POLY_INF, s = 0.0f;
    for (int k = threadIdx.x; k < chunks; k += blockDim.x) {
        float v[P];
        if (vec) load_pack<T, P>(x + (i64)k * P, v);
        else v[0] = to_f32(x[k]);
        for (int i = 0; i < width; i++) {
            if (v[i] > m) {
                s = s * expf(m - v[i]) + 1.0f;
                m = v[i];
            } else {
                s += expf(v[i] - m);
            }
        }
    }
    const float mx = block_max(m, scratch);
    const float total = block_sum(m == -POLY_INF ? 0.0f : s * expf(m - mx), scratch);
    const float lse = mx + logf(total);
    const u32 t = targets[blockIdx.x];
    const bool ignored = has_ignore && t == ignore_index;
    if (threadIdx.x == 0) {
        lse_out[blockIdx.x] = lse;
        float target_logit = t < (u32)vocab ? to_f32(x[t]) : __int_as_float(0x7fc00000);
        loss[blockIdx.x] = ignored ? 0.0f : lse - target_logit;
    }
    if (!dlogits) return;
    __syncthreads();  // the target logit is read before an in-place gradient overwrites it
    const float scale = ignored ? 0.0f : (dloss ? dloss[blockIdx.x] : grad_scale);
    T* g = dlogits + base;
    const int first = chunks - 1 - (int)threadIdx.x;
    for (int k = first; k >= 0; k -= blockDim.x) {
        float v[P];
        if (vec) load_pack<T, P>(x + (i64)k * P, v);
        else v[0] = to_f32(x[k]);
        for (int i = 0; i < width; i++) {
            const u32 col = (u32)(k * width + i);
            v[i] = (expf(v[i] - lse) - (col == t ? 1.0f : 0.0f)) * scale;
        }
        if (vec) store_pack<T, P>(g + (i64)k * P, v);
        else g[k] = from_f32<T>(v[0]);
    }
}

#define CROSS_ENTROPY(T, S)                                                                        \
    extern "C" __global__ void cross_entropy_##S(const T* logits, const u32* targets, T* dlogits,  \
                                                 float* loss, float* lse, const float* dloss,      \
                                                 float grad_scale, int vocab, u32 ignore_index,    \
                                                 int has_ignore) {                                 \
        cross_entropy<T>(logits, targets, dlogits, loss, lse, dloss, grad_scale, vocab,            \
                         ignore_index, has_ignore);                                                \
    }
FOR_EACH_DTYPE(CROSS_ENTROPY)

