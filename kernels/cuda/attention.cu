// A simple, correct attention for running the whole model on the GPU until the flash
// attention kernel lands. One warp per row; each lane holds head_dim/32 (at most 8) values.
// Layout: q, k, v, out and their gradients are contiguous [heads, seq, head_dim] (batch and
// heads flattened); lse and the backward's row dots are [heads, seq] in f32.
//
// Forward: an online softmax over the keys (only j <= i when causal), saving the row's
// log-sum-exp of the scaled scores. Backward: `D_i = dO_i·O_i` in a pre-pass, then dQ with one
// warp per query row and dK, dV with one warp per key row, recomputing the probabilities from
// the saved log-sum-exp; no seq×seq buffer exists anywhere.

#define ATT_MAX_PER_LANE 8
#define ATT_WARPS 4

struct AttnDims {
    int heads;
    int seq;
    int head_dim;
    int causal;
    float scale;
};

template <class T>
__device__ __forceinline__ void load_row(const T* p, int d, float* out) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < ATT_MAX_PER_LANE; j++) {
        const int c = lane + 32 * j;
        out[j] = c < d ? to_f32(p[c]) : 0.0f;
    }
}

__device__ __forceinline__ float dot_row(const float* a, const float* b) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < ATT_MAX_PER_LANE; j++) s = fmaf(a[j], b[j], s);
    return warp_sum(s);
}

template <class T>
__device__ void attn_fwd(AttnDims a, const T* q, const T* k, const T* v, T* out, float* lse) {
    const int i = blockIdx.x * ATT_WARPS + (threadIdx.x >> 5);
    const int h = blockIdx.y;
    if (i >= a.seq) return;
    const int lane = threadIdx.x & 31;
    const i64 head = (i64)h * a.seq * a.head_dim;
    float qi[ATT_MAX_PER_LANE], o[ATT_MAX_PER_LANE] = {}, kj[ATT_MAX_PER_LANE], vj[ATT_MAX_PER_LANE];
    load_row(q + head + (i64)i * a.head_dim, a.head_dim, qi);
    float m = -POLY_INF, l = 0.0f;
    const int last = a.causal ? i : a.seq - 1;
    for (int j = 0; j <= last; j++) {
        load_row(k + head + (i64)j * a.head_dim, a.head_dim, kj);
        load_row(v + head + (i64)j * a.head_dim, a.head_dim, vj);
        const float s = dot_row(qi, kj) * a.scale;
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new);
        const float p = expf(s - m_new);
        l = l * corr + p;
#pragma unroll
        for (int c = 0; c < ATT_MAX_PER_LANE; c++) o[c] = o[c] * corr + p * vj[c];
        m = m_new;
    }
    const float inv = 1.0f / l;
    T* orow = out + head + (i64)i * a.head_dim;
#pragma unroll
    for (int c = 0; c < ATT_MAX_PER_LANE; c++) {
        const int col = lane + 32 * c;
        if (col < a.head_dim) orow[col] = from_f32<T>(o[c] * inv);
    }
    if (lane == 0) lse[(i64)h * a.seq + i] = m + logf(l);
}

template <class T>
__device__ void attn_bwd_dot(AttnDims a, const T* out, const T* dout, float* dot) {
    const int i = blockIdx.x * ATT_WARPS + (threadIdx.x >> 5);
    const int h = blockIdx.y;
    if (i >= a.seq) return;
    const i64 row = ((i64)h * a.seq + i) * a.head_dim;
    float o[ATT_MAX_PER_LANE], d[ATT_MAX_PER_LANE];
    load_row(out + row, a.head_dim, o);
    load_row(dout + row, a.head_dim, d);
    const float s = dot_row(o, d);
    if ((threadIdx.x & 31) == 0) dot[(i64)h * a.seq + i] = s;
}

template <class T>
__device__ void attn_bwd_dq(AttnDims a, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                            const float* dot, T* dq) {
    const int i = blockIdx.x * ATT_WARPS + (threadIdx.x >> 5);
    const int h = blockIdx.y;
    if (i >= a.seq) return;
    const int lane = threadIdx.x & 31;
    const i64 head = (i64)h * a.seq * a.head_dim;
    float qi[ATT_MAX_PER_LANE], doi[ATT_MAX_PER_LANE], acc[ATT_MAX_PER_LANE] = {};
    float kj[ATT_MAX_PER_LANE], vj[ATT_MAX_PER_LANE];
    load_row(q + head + (i64)i * a.head_dim, a.head_dim, qi);
    load_row(dout + head + (i64)i * a.head_dim, a.head_dim, doi);
    const float li = lse[(i64)h * a.seq + i], di = dot[(i64)h * a.seq + i];
    const int last = a.causal ? i : a.seq - 1;
    for (int j = 0; j <= last; j++) {
        load_row(k + head + (i64)j * a.head_dim, a.head_dim, kj);
        load_row(v + head + (i64)j * a.head_dim, a.head_dim, vj);
        const float p = expf(dot_row(qi, kj) * a.scale - li);
        const float ds = p * (dot_row(doi, vj) - di) * a.scale;
#pragma unroll
        for (int c = 0; c < ATT_MAX_PER_LANE; c++) acc[c] = fmaf(ds, kj[c], acc[c]);
    }
    T* row = dq + head + (i64)i * a.head_dim;
#pragma unroll
    for (int c = 0; c < ATT_MAX_PER_LANE; c++) {
        const int col = lane + 32 * c;
        if (col < a.head_dim) row[col] = from_f32<T>(acc[c]);
    }
}

template <class T>
__device__ void attn_bwd_dkdv(AttnDims a, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                              const float* dot, T* dk, T* dv) {
    const int j = blockIdx.x * ATT_WARPS + (threadIdx.x >> 5);
    const int h = blockIdx.y;
    if (j >= a.seq) return;
    const int lane = threadIdx.x & 31;
    const i64 head = (i64)h * a.seq * a.head_dim;
    float kj[ATT_MAX_PER_LANE], vj[ATT_MAX_PER_LANE], qi[ATT_MAX_PER_LANE], doi[ATT_MAX_PER_LANE];
    float dkj[ATT_MAX_PER_LANE] = {}, dvj[ATT_MAX_PER_LANE] = {};
    load_row(k + head + (i64)j * a.head_dim, a.head_dim, kj);
    load_row(v + head + (i64)j * a.head_dim, a.head_dim, vj);
    for (int i = a.causal ? j : 0; i < a.seq; i++) {
        load_row(q + head + (i64)i * a.head_dim, a.head_dim, qi);
        load_row(dout + head + (i64)i * a.head_dim, a.head_dim, doi);
        const float p = expf(dot_row(qi, kj) * a.scale - lse[(i64)h * a.seq + i]);
        const float ds = p * (dot_row(doi, vj) - dot[(i64)h * a.seq + i]) * a.scale;
#pragma unroll
        for (int c = 0; c < ATT_MAX_PER_LANE; c++) {
            dvj[c] = fmaf(p, doi[c], dvj[c]);
            dkj[c] = fmaf(ds, qi[c], dkj[c]);
        }
    }
    T* dkr = dk + head + (i64)j * a.head_dim;
    T* dvr = dv + head + (i64)j * a.head_dim;
#pragma unroll
    for (int c = 0; c < ATT_MAX_PER_LANE; c++) {
        const int col = lane + 32 * c;
        if (col < a.head_dim) {
            dkr[col] = from_f32<T>(dkj[c]);
            dvr[col] = from_f32<T>(dvj[c]);
        }
    }
}

#define ATTENTION(T, S)                                                                             \
    extern "C" __global__ void attn_fwd_##S(AttnDims a, const T* q, const T* k, const T* v, T* out, \
                                            float* lse) {                                           \
        attn_fwd<T>(a, q, k, v, out, lse);                                                          \
    }                                                                                               \
    extern "C" __global__ void attn_bwd_dot_##S(AttnDims a, const T* out, const T* dout,            \
                                                float* dot) {                                       \
        attn_bwd_dot<T>(a, out, dout, dot);                                                         \
    }                                                                                               \
    extern "C" __global__ void attn_bwd_dq_##S(AttnDims a, const T* q, const T* k, const T* v,      \
                                               const T* dout, const float* lse, const float* dot,   \
                                               T* dq) {                                             \
        attn_bwd_dq<T>(a, q, k, v, dout, lse, dot, dq);                                             \
    }                                                                                               \
    extern "C" __global__ void attn_bwd_dkdv_##S(AttnDims a, const T* q, const T* k, const T* v,    \
                                                 const T* dout, const float* lse, const float* dot, \
                                                 T* dk, T* dv) {                                    \
        attn_bwd_dkdv<T>(a, q, k, v, dout, lse, dot, dk, dv);                                       \
    }
FOR_EACH_DTYPE(ATTENTION)
