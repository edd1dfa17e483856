// The optimizer's kernels, fused over all parameters through a table of tensors:
//
// - `sumsq_partial_*` + `norm_finish`: the global gradient norm and the clipping factor
//   `min(1, max_norm / (norm + 1e-6))`, computed on the device in a fixed order.
// - `adamw_g*_c*`: one AdamW step over every tensor in one launch: f32 master weights and
//   moments, gradients of any storage type scaled by the device-side clip factor, decoupled
//   weight decay per tensor (0 for biases and 1-D parameters), and an optional low-precision
//   copy of the new weights for the forward pass. The arithmetic follows PyTorch's AdamW.
//
// Block b works on chunk `b − block_start[t]` of tensor t, found by binary search in the
// prefix `block_start`.

#define OPT_THREADS 256
#define OPT_PER_THREAD 8
#define OPT_CHUNK (OPT_THREADS * OPT_PER_THREAD)

struct AdamTensor {
    u64 param;  // f32 master weights
    u64 grad;   // G
    u64 m;      // f32
    u64 v;      // f32
    u64 copy;   // C, or 0
    i64 n;
    float weight_decay;
    int pad;
};

struct NormTensor {
    u64 ptr;
    i64 n;
};

__device__ __forceinline__ int tensor_of_block(const int* block_start, int tensors) {
    int lo = 0, hi = tensors - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (block_start[mid] <= (int)blockIdx.x) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/// Whether every element of `T` at `p` starts a 4-element vector load (16 bytes for f32,
/// 8 for bf16/f16).
template <class T>
__device__ __forceinline__ bool vec4_aligned(const void* p) {
    return p == nullptr || (reinterpret_cast<u64>(p) & (4 * sizeof(T) - 1)) == 0;
}

// Thread t of a block handles OPT_PER_THREAD / 4 vectors of 4 consecutive elements: vector
// k starts at element `begin + (k·OPT_THREADS + t)·4`; a partial vector at a tensor's end is
// done element by element.
#define OPT_VECTORS (OPT_PER_THREAD / 4)

// The norm's blocks read NORM_VECTORS 16-byte vectors per thread: a chunk of
// NORM_CHUNK_BYTES per block (the host sizes `block_start` with the same constant).
#define NORM_VECTORS 8
#define NORM_CHUNK_BYTES (OPT_THREADS * NORM_VECTORS * 16)

template <class G>
__device__ void sumsq_partial(const NormTensor* tensors, const int* block_start, int count, float* partial) {
    constexpr int P = VecWidth<G>::value;
    __shared__ float scratch[32];
    const int t = tensor_of_block(block_start, count);
    const NormTensor nt = tensors[t];
    const G* g = reinterpret_cast<const G*>(nt.ptr);
    const bool vec = aligned16(g);
    const i64 begin = (i64)(blockIdx.x - block_start[t]) * (NORM_CHUNK_BYTES / sizeof(G));
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_VECTORS; k++) {
        const i64 i = begin + ((i64)k * OPT_THREADS + threadIdx.x) * P;
        float v[P];
        if (vec && i + P <= nt.n) {
            load_pack<G, P>(g + i, v);
        } else {
            for (int e = 0; e < P; e++) v[e] = i + e < nt.n ? to_f32(g[i + e]) : 0.0f;
        }
#pragma unroll
        for (int e = 0; e < P; e++) s += v[e] * v[e];
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// One block: out[0] = the norm, out[1] = the clip factor (1 when max_norm <= 0).
extern "C" __global__ void norm_finish(const float* partial, int parts, float max_norm, float* out) {
    __shared__ float scratch[32];
    float s = 0.0f;
    for (int i = threadIdx.x; i < parts; i += blockDim.x) s += partial[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) {
        const float norm = sqrtf(s);
        out[0] = norm;
        out[1] = max_norm > 0.0f ? fminf(1.0f, max_norm / (norm + 1e-6f)) : 1.0f;
    }
}

template <class G, class C>
__device__ void adamw(const AdamTensor* tensors, const int* block_start, int count, float lr, float beta1,
                      float beta2, float eps, float bias_correction1, float bias_correction2,
                      const float* grad_scale) {
    const int t = tensor_of_block(block_start, count);
    const AdamTensor at = tensors[t];
    float* p = reinterpret_cast<float*>(at.param);
    const G* g = reinterpret_cast<const G*>(at.grad);
    float* m = reinterpret_cast<float*>(at.m);
    float* v = reinterpret_cast<float*>(at.v);
    C* copy = reinterpret_cast<C*>(at.copy);
    const bool vec = vec4_aligned<float>(p) && vec4_aligned<G>(g) && vec4_aligned<float>(m) &&
                     vec4_aligned<float>(v) && vec4_aligned<C>(copy);
    const float gs = grad_scale ? grad_scale[0] : 1.0f;
    const float step_size = lr / bias_correction1;
    const float bc2_sqrt = sqrtf(bias_correction2);
    const float decay = 1.0f - lr * at.weight_decay;
    const i64 begin = (i64)(blockIdx.x - block_start[t]) * OPT_CHUNK;
#pragma unroll
    for (int k = 0; k < OPT_VECTORS; k++) {
        const i64 i = begin + ((i64)k * OPT_THREADS + threadIdx.x) * 4;
        if (i >= at.n) break;
        float pv[4], gv[4], mv[4], vv[4];
        const bool whole = vec && i + 3 < at.n;
        if (whole) {
            load4<float>(p + i, pv);
            load4<G>(g + i, gv);
            load4<float>(m + i, mv);
            load4<float>(v + i, vv);
        } else {
            for (int e = 0; e < 4; e++) {
                const bool in = i + e < at.n;
                pv[e] = in ? p[i + e] : 0.0f;
                gv[e] = in ? to_f32(g[i + e]) : 0.0f;
                mv[e] = in ? m[i + e] : 0.0f;
                vv[e] = in ? v[i + e] : 0.0f;
            }
        }
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float grad = gv[e] * gs;
            mv[e] = beta1 * mv[e] + (1.0f - beta1) * grad;
            vv[e] = beta2 * vv[e] + (1.0f - beta2) * grad * grad;
            const float denom = sqrtf(vv[e]) / bc2_sqrt + eps;
            pv[e] = pv[e] * decay - step_size * (mv[e] / denom);
        }
        if (whole) {
            store4<float>(p + i, pv);
            store4<float>(m + i, mv);
            store4<float>(v + i, vv);
            if (copy) store4<C>(copy + i, pv);
        } else {
            for (int e = 0; e < 4; e++) {
                if (i + e < at.n) {
                    p[i + e] = pv[e];
                    m[i + e] = mv[e];
                    v[i + e] = vv[e];
                    if (copy) copy[i + e] = from_f32<C>(pv[e]);
                }
            }
        }
    }
}

#define SUMSQ(G, S)                                                                                 \
    extern "C" __global__ void sumsq_partial_##S(const NormTensor* tensors, const int* block_start, \
                                                 int count, float* partial) {                       \
        sumsq_partial<G>(tensors, block_start, count, partial);                                     \
    }
FOR_EACH_DTYPE(SUMSQ)

#define ADAMW(G, GN, C, CN)                                                                        \
    extern "C" __global__ void adamw_g##GN##_c##CN(                                                \
        const AdamTensor* tensors, const int* block_start, int count, float lr, float beta1,       \
        float beta2, float eps, float bias_correction1, float bias_correction2,                    \
        const float* grad_scale) {                                                                 \
        adamw<G, C>(tensors, block_start, count, lr, beta1, beta2, eps, bias_correction1,          \
                    bias_correction2, grad_scale);                                                 \
    }
#define ADAMW_GRAD(G, GN) ADAMW(G, GN, float, f32) ADAMW(G, GN, bf16, bf16) ADAMW(G, GN, f16, f16)
FOR_EACH_DTYPE(ADAMW_GRAD)
