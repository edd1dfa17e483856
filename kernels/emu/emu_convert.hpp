// Host emulation, included after common.cuh (it needs the bf16 and f16 types): the conversions
// common.cuh writes in PTX (`cvt.rn`), here as round-to-nearest-even on the host, and the
// warp-wide mma.sync m16n8k16. See emu.hpp.
#pragma once

inline float to_f32(f16 v) { return emu::widen_f16(v.bits); }
template <>
inline bf16 from_f32<bf16>(float v) {
    return bf16{emu::round_bf16(v)};
}
template <>
inline f16 from_f32<f16>(float v) {
    return f16{emu::round_f16(v)};
}

template <class T> inline uint32_t pack2(float lo, float hi);
template <>
inline uint32_t pack2<bf16>(float lo, float hi) {
    return (uint32_t)emu::round_bf16(lo) | ((uint32_t)emu::round_bf16(hi) << 16);
}
template <>
inline uint32_t pack2<f16>(float lo, float hi) {
    return (uint32_t)emu::round_f16(lo) | ((uint32_t)emu::round_f16(hi) << 16);
}

namespace emu {
template <class T>
inline float half_value(uint32_t word, int high) {
    T v{(unsigned short)(high ? word >> 16 : word & 0xffffu)};
    return to_f32(v);
}
}  // namespace emu

/// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: D (16×8) += A (16×16) · B (16×8) over the
/// warp, in the PTX ISA's fragment layouts (g = lane/4, t = lane%4):
///   A register j, half h: row g + 8(j&1), column 2t + h + 8(j>>1);
///   B register j, half h: row (k) 2t + h + 8j, column g;
///   D element i: row g + 8(i>>1), column 2t + (i&1).
template <class T>
inline void mma_m16n8k16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    emu::warp_exchange(
        [&](uint32_t* w) {
            for (int j = 0; j < 4; j++) w[j] = a[j];
            w[4] = b0;
            w[5] = b1;
        },
        [&](uint32_t (*all)[10], unsigned lane) {
            float A[16][16], B[16][8];
            for (int l = 0; l < 32; l++) {
                const int g = l / 4, t = l % 4;
                for (int j = 0; j < 4; j++)
                    for (int h = 0; h < 2; h++) A[g + 8 * (j & 1)][2 * t + h + 8 * (j >> 1)] = emu::half_value<T>(all[l][j], h);
                for (int j = 0; j < 2; j++)
                    for (int h = 0; h < 2; h++) B[2 * t + h + 8 * j][g] = emu::half_value<T>(all[l][4 + j], h);
            }
            const int g = lane / 4, t = lane % 4;
            for (int i = 0; i < 4; i++) {
                const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
                float acc = 0.0f;
                for (int k = 0; k < 16; k++) acc += A[row][k] * B[k][col];
                d[i] += acc;
            }
        });
}
