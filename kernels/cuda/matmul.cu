// A simple, correct tiled matrix product for every GPU product until the tensor-core kernel
// lands: C[b] = alpha · A[b]·B[b] + beta · C[b] (+ bias per column), with A and B given by
// arbitrary row, column and batch strides (so transposed operands are read in place), f32
// accumulation, any M, N, K.
//
// Block tile 64×64, K step 16, 256 threads each computing a 4×4 sub-tile.

#define TM 64
#define TN 64
#define TK 16

struct GemmShape {
    i64 m, n, k;
    i64 a_rs, a_cs, a_bs;
    i64 b_rs, b_cs, b_bs;
    i64 c_rs, c_bs;
    float alpha, beta;
};

template <class T>
__device__ void gemm_tiled(GemmShape g, const T* A, const T* B, T* C, const T* bias) {
    __shared__ float As[TK][TM + 4];
    __shared__ float Bs[TK][TN + 4];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const i64 row0 = (i64)blockIdx.y * TM, col0 = (i64)blockIdx.x * TN;
    A += blockIdx.z * g.a_bs;
    B += blockIdx.z * g.b_bs;
    C += blockIdx.z * g.c_bs;
    float acc[4][4] = {};
    for (i64 k0 = 0; k0 < g.k; k0 += TK) {
#pragma unroll
        for (int i = 0; i < (TM * TK) / 256; i++) {
            const int idx = tid + i * 256;
            const int r = idx / TK, kk = idx % TK;
            const i64 gr = row0 + r, gk = k0 + kk;
            As[kk][r] = (gr < g.m && gk < g.k) ? to_f32(A[gr * g.a_rs + gk * g.a_cs]) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < (TN * TK) / 256; i++) {
            const int idx = tid + i * 256;
            const int kk = idx / TN, c = idx % TN;
            const i64 gk = k0 + kk, gc = col0 + c;
            Bs[kk][c] = (gk < g.k && gc < g.n) ? to_f32(B[gk * g.b_rs + gc * g.b_cs]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const i64 r = row0 + ty + 16 * i;
        if (r >= g.m) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const i64 c = col0 + tx + 16 * j;
            if (c >= g.n) continue;
            float v = g.alpha * acc[i][j];
            if (g.beta != 0.0f) v += g.beta * to_f32(C[r * g.c_rs + c]);
            if (bias) v += to_f32(bias[c]);
            C[r * g.c_rs + c] = from_f32<T>(v);
        }
    }
}

#define GEMM(T, S)                                                                                 \
    extern "C" __global__ void gemm_tiled_##S(GemmShape g, const T* A, const T* B, T* C,           \
                                              const T* bias) {                                     \
        gemm_tiled<T>(g, A, B, C, bias);                                                           \
    }
FOR_EACH_DTYPE(GEMM)
