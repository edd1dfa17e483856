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


// ---------------------------------------------------------------- one read per row (sm_90)
//
// The kernel above reads each row twice: its statistics, then its gradient. At PolyLM's
// vocabulary a row is 500 KB (bf16) and hundreds of rows are in flight, so the second read
// misses L2 and the kernel moves 1.5× the bytes it must. This one reads each row once: a
// cluster of CE_CLUSTER blocks takes a row at a time, block q holding columns
// [q·chunk, (q+1)·chunk) of it in a shared-memory ring filled by bulk copies (TMA) a row or
// more ahead. Each block reduces its chunk to a partial (max, sum of exp) in log2 units and
// sends it to every block of the cluster with `st.async` (distributed shared memory, completing
// on the receiver's mbarrier, so no cluster-wide barrier per row); once a block has all the
// partials it has the row's log-sum-exp and writes the gradient of its chunk straight from
// shared memory. Rows are dealt to clusters round-robin; the launch has as many clusters as fit
// on the device at once.
//
// Shared memory: the ring (`stages` slots of `chunk` elements, dynamic) with one mbarrier per
// slot, and the cluster's partials for two consecutive rows with one mbarrier each. A block
// sends row i + 2's partials into the slot of row i only after it has received every block's
// partial of row i + 1, which each block sends after it has read its partials of row i.

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

#define CE_CLUSTER 8
#define CE_MAX_STAGES 4

template <class T>
__device__ void cross_entropy_cluster(const T* logits, const u32* targets, T* dlogits, float* loss, float* lse_out,
                                      const float* dloss, float grad_scale, int rows, int vocab, int chunk, int stages,
                                      u32 ignore_index, int has_ignore) {
    constexpr int P = VecWidth<T>::value;
    constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;
    extern __shared__ __align__(128) unsigned char ce_ring_bytes[];
    __shared__ __align__(8) u64 full[CE_MAX_STAGES];
    __shared__ __align__(8) u64 received[2];
    __shared__ __align__(8) float2 partials[2][CE_CLUSTER];
    __shared__ float scratch[32];
    T* ring = reinterpret_cast<T*>(ce_ring_bytes);
    const u32 rank = cluster_rank();
    const int clusters = gridDim.x / CE_CLUSTER, cluster = blockIdx.x / CE_CLUSTER;
    const int c0 = min(vocab, (int)rank * chunk), width = min(vocab, c0 + chunk) - c0;
    const u32 bytes = (u32)width * sizeof(T);
    const int vecs = width / P;
    // Row i of this cluster is cluster + i·clusters.
    const int my_rows = cluster < rows ? (rows - cluster + clusters - 1) / clusters : 0;

    auto fetch = [&](int i) {  // thread 0: row i into slot i % stages
        const int s = i % stages;
        const u32 bar = smem_u32(&full[s]);
        mbar_arrive_expect_tx(bar, bytes);
        if (bytes > 0)
            bulk_load(smem_u32(ring + (i64)s * chunk), logits + (i64)(cluster + i * clusters) * vocab + c0, bytes, bar);
    };
    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; s++) mbar_init(smem_u32(&full[s]), 1);
        for (int b = 0; b < 2; b++) mbar_init(smem_u32(&received[b]), 1);
        mbar_fence_init();
        for (int i = 0; i < min(stages, my_rows); i++) fetch(i);
    }
    __syncthreads();
    // Every block of the cluster is running, its mbarriers initialised, before any block
    // sends into another's shared memory.
    cluster_barrier();

    for (int i = 0; i < my_rows; i++) {
        const int row = cluster + i * clusters, s = i % stages;
        mbar_wait(smem_u32(&full[s]), (u32)(i / stages) & 1u);
        const T* x = ring + (i64)s * chunk;

        // This block's partial: max and sum of 2^(y − max) over y = logit · log2(e).
        float m = -POLY_INF, sum = 0.0f;
        for (int k = threadIdx.x; k < vecs; k += blockDim.x) {
            float v[P];
            load_pack<T, P>(x + k * P, v);
            float vm = v[0];
#pragma unroll
            for (int j = 1; j < P; j++) vm = fmaxf(vm, v[j]);
            vm *= LOG2E;
            if (vm > m) {
                sum *= exp2f(m - vm);
                m = vm;
            }
#pragma unroll
            for (int j = 0; j < P; j++) sum += exp2f(fmaf(v[j], LOG2E, -m));
        }
        const float bm = block_max(m, scratch);
        const float bs = block_sum(m == -POLY_INF ? 0.0f : sum * exp2f(m - bm), scratch);
        const u32 got = smem_u32(&received[i & 1]);
        if (threadIdx.x == 0) mbar_arrive_expect_tx(got, CE_CLUSTER * sizeof(float2));
        if (threadIdx.x < CE_CLUSTER) cluster_send2(smem_u32(&partials[i & 1][rank]), got, threadIdx.x, bm, bs);
        mbar_wait_cluster(got, (u32)(i >> 1) & 1u);
        float gm = -POLY_INF;
#pragma unroll
        for (int p = 0; p < CE_CLUSTER; p++) gm = fmaxf(gm, partials[i & 1][p].x);
        float gs = 0.0f;
#pragma unroll
        for (int p = 0; p < CE_CLUSTER; p++) {
            const float2 part = partials[i & 1][p];
            if (part.x != -POLY_INF) gs += part.y * exp2f(part.x - gm);
        }
        const float lse2 = gm + log2f(gs);  // the log-sum-exp in log2 units

        const u32 t = targets[row];
        const bool ignored = has_ignore && t == ignore_index;
        const bool mine = t >= (u32)c0 && t < (u32)(c0 + width);
        if (threadIdx.x == 0) {
            if (rank == 0) {
                lse_out[row] = lse2 * LN2;
                if (t >= (u32)vocab || ignored) loss[row] = ignored ? 0.0f : __int_as_float(0x7fc00000);
            }
            if (mine && !ignored) loss[row] = lse2 * LN2 - to_f32(x[t - c0]);
        }
        if (dlogits) {
            const float scale = ignored ? 0.0f : (dloss ? dloss[row] : grad_scale);
            T* g = dlogits + (i64)row * vocab + c0;
            for (int k = threadIdx.x; k < vecs; k += blockDim.x) {
                float v[P];
                load_pack<T, P>(x + k * P, v);
                // The target's place in this vector, or -1.
                const int tj = mine && (t - c0) / P == (u32)k ? (int)((t - c0) % P) : -1;
#pragma unroll
                for (int j = 0; j < P; j++) v[j] = exp2f(fmaf(v[j], LOG2E, -lse2)) * scale - (j == tj ? scale : 0.0f);
                store_pack<T, P>(g + k * P, v);
            }
        }
        // Slot s is free once every thread is done with it: refill it with row i + stages.
        __syncthreads();
        if (threadIdx.x == 0 && i + stages < my_rows) fetch(i + stages);
    }
}

#define CROSS_ENTROPY_CLUSTER(T, S)                                                                   \
    extern "C" __global__ void __cluster_dims__(CE_CLUSTER, 1, 1)                                     \
        cross_entropy_cluster_##S(const T* logits, const u32* targets, T* dlogits, float* loss,       \
                                  float* lse, const float* dloss, float grad_scale, int rows,         \
                                  int vocab, int chunk, int stages, u32 ignore_index, int has_ignore) { \
        cross_entropy_cluster<T>(logits, targets, dlogits, loss, lse, dloss, grad_scale, rows, vocab, \
                                 chunk, stages, ignore_index, has_ignore);                            \
    }
FOR_EACH_DTYPE(CROSS_ENTROPY_CLUSTER)

#endif  // __CUDA_ARCH__ >= 900
