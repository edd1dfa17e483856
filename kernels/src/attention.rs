//! Causal scaled-dot-product attention: a CPU flash attention.
//!
//! `out_i = Σ_{j ≤ i} softmax_j(scale · q_i·k_j) · v_j` for every head. Queries are taken in
//! blocks of `BLOCK` (64) rows and keys in blocks of the same size; for each (query block, key
//! block) pair the `BLOCK × BLOCK` score tile is produced by a small register-blocked matrix
//! product, folded into a per-row online softmax (running max and sum) and multiplied into the
//! output accumulator. Key blocks past the diagonal are skipped and the diagonal block is masked
//! inside, so memory is O(BLOCK·(BLOCK + head_dim)) per task: no T×T score or probability matrix
//! is ever held. The forward pass saves one log-sum-exp per query row.
//!
//! The backward pass is the flash backward: the probabilities `P` are recomputed from the saved
//! log-sum-exp, `D_i = dout_i·out_i`, `dS = P ⊙ (dout·Vᵀ − D)`, and
//! `dV = Pᵀ·dout`, `dK = scale·dSᵀ·Q`, `dQ = scale·dS·K` are accumulated tile by tile. With
//! enough heads to feed every thread, each head is one task that walks its key blocks and
//! accumulates dQ in a head-local buffer (5 tile products per tile pair); otherwise it runs in
//! two race-free passes, (head × key block) tasks for dK/dV and (head × query block) tasks for
//! dQ (7 tile products per pair, but parallel within a head).
//!
//! The tile products and row loops are written so that they vectorise and are compiled for the
//! best instruction set found at run time (AVX-512, AVX2+FMA or portable); f32 tile products
//! run on explicit AVX-512 (4×32) or AVX2 (4×16) kernels, f32 uses the fast polynomial
//! exponential, f64 libm's.
//!
//! Layout: `q`, `k`, `v`, `out` and their gradients are contiguous `[heads, seq, head_dim]`
//! (batch and heads flattened together); `lse` is `[heads, seq]`.

use rayon::prelude::*;

use crate::fastmath::{self, simd_dispatch, Real};
use crate::float::Float;
use crate::simd::SimdLevel;

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Batch × heads: independent attention problems.
    pub heads: usize,
    /// Sequence length (queries and keys).
    pub seq: usize,
    /// Size of one head.
    pub head_dim: usize,
}

impl AttentionDims {
    /// Elements of one `[heads, seq, head_dim]` tensor.
    pub fn qkv_len(&self) -> usize {
        self.heads * self.seq * self.head_dim
    }
    /// Elements of the `[heads, seq]` log-sum-exp.
    pub fn lse_len(&self) -> usize {
        self.heads * self.seq
    }
}

/// Query and key block size (rows per tile) used by the public functions.
const BLOCK: usize = 64;
/// Rows of the register tile of [`gemm`].
const MR: usize = 4;
/// Columns of the register tile of [`gemm`]; tile widths are padded to a multiple of it.
const NR: usize = 32;

/// Geometry of one call: sequence, head size, padded head size, block size, block count.
#[derive(Clone, Copy)]
struct Geo {
    seq: usize,
    d: usize,
    /// `d` rounded up to a multiple of [`NR`] (zero columns pad the tiles).
    dp: usize,
    b: usize,
    nb: usize,
    /// The kernel of the f32 tile products.
    tile: TileKernel,
}

/// Which kernel runs [`gemm`] on f32 tiles (other types always take the generic loops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TileKernel {
    /// The generic register-tiled loops, vectorised by the compiler.
    Generic,
    /// Explicit AVX2+FMA intrinsics in 4×16 tiles (the generic 4×32 tile needs all sixteen
    /// ymm registers for its accumulators alone and spills).
    Avx2,
    /// Explicit AVX-512 intrinsics in 4×32 tiles.
    Avx512,
}

impl TileKernel {
    /// The best kernel for `level`, if the CPU supports it.
    fn for_level(level: SimdLevel) -> TileKernel {
        match level {
            _ if !cfg!(target_arch = "x86_64") || !level.is_supported() => TileKernel::Generic,
            SimdLevel::Avx512 => TileKernel::Avx512,
            SimdLevel::Avx2Fma => TileKernel::Avx2,
            SimdLevel::Portable => TileKernel::Generic,
        }
    }
}

impl Geo {
    fn new(seq: usize, d: usize, b: usize, level: SimdLevel) -> Geo {
        assert!(
            b > 0 && b.rem_euclid(NR) == 0 && NR.rem_euclid(MR) == 0,
            "attention block must be a multiple of {NR}"
        );
        Geo { seq, d, dp: d.div_ceil(NR) * NR, b, nb: seq.div_ceil(b), tile: TileKernel::for_level(level) }
    }
    /// First row and number of valid rows of block `blk`.
    fn rows(&self, blk: usize) -> (usize, usize) {
        let r0 = blk * self.b;
        (r0, self.b.min(self.seq - r0))
    }
}

/// `C[m×n] = (accumulate ? C : 0) + A[m×k]·B[k×n]`, with `A(i, p) = a[i·ars + p·acs]`,
/// `B(p, j) = b[p·ldb + j]`, `C(i, j) = c[i·ldc + j]`; `m % MR == 0`, `n % NR == 0`.
///
/// An `MR × NR` register tile is kept in a local array across the whole `k` loop, so the
/// compiler keeps it in vector registers and emits broadcast-multiply-adds.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm<T: Real, const FMA: bool>(
    tile: TileKernel,
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    ars: usize,
    acs: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
) {
    debug_assert!(m.rem_euclid(MR) == 0 && n.rem_euclid(NR) == 0);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].iter_mut().for_each(|x| *x = T::ZERO);
            }
        }
        return;
    }
    // Every A index below is (i0 + r)·ars + p·acs with i0 + r < m and p < k.
    assert!((m - 1) * ars + (k - 1) * acs < a.len(), "gemm: A out of bounds");
    assert!((k - 1) * ldb + n <= b.len(), "gemm: B out of bounds");
    assert!((m - 1) * ldc + n <= c.len(), "gemm: C out of bounds");
    #[cfg(target_arch = "x86_64")]
    if let (Some(a), Some(b), Some(c)) = (as_f32(a), as_f32(b), as_f32_mut(c)) {
        // SAFETY: `TileKernel::for_level` picks Avx512 / Avx2 only when the CPU supports that
        // level, and the asserts above bound every index the kernels read or write.
        match tile {
            TileKernel::Avx512 => {
                return unsafe { x86::gemm_avx512(accumulate, m, n, k, a, ars, acs, b, ldb, c, ldc) }
            }
            TileKernel::Avx2 => {
                return unsafe { x86::gemm_avx2(accumulate, m, n, k, a, ars, acs, b, ldb, c, ldc) }
            }
            TileKernel::Generic => {}
        }
    }
    let _ = tile;
    for i0 in (0..m).step_by(MR) {
        for j0 in (0..n).step_by(NR) {
            let mut acc = [[T::ZERO; NR]; MR];
            if accumulate {
                for (r, row) in acc.iter_mut().enumerate() {
                    row.copy_from_slice(&c[(i0 + r) * ldc + j0..][..NR]);
                }
            }
            for p in 0..k {
                let brow: &[T; NR] = b[p * ldb + j0..][..NR].try_into().unwrap();
                for (r, row) in acc.iter_mut().enumerate() {
                    // SAFETY: (i0 + r) < m and p < k, so the index is at most
                    // (m − 1)·ars + (k − 1)·acs, which the assert above bounds by a.len().
                    let av = unsafe { *a.get_unchecked((i0 + r) * ars + p * acs) };
                    for j in 0..NR {
                        row[j] = av.madd::<FMA>(brow[j], row[j]);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                c[(i0 + r) * ldc + j0..][..NR].copy_from_slice(row);
            }
        }
    }
}

/// `x` as `&[f32]` when `T` is `f32`.
#[inline(always)]
fn as_f32<T: 'static>(x: &[T]) -> Option<&[f32]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: `T` is `f32`, so the slice's layout and values are those of `[f32]`.
        Some(unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) })
    } else {
        None
    }
}

/// `x` as `&mut [f32]` when `T` is `f32`.
#[inline(always)]
fn as_f32_mut<T: 'static>(x: &mut [T]) -> Option<&mut [f32]> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: `T` is `f32`, so the slice's layout and values are those of `[f32]`; the
        // exclusive borrow is moved into the result.
        Some(unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) })
    } else {
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The f32 tile products with explicit intrinsics, in tiles of 4 rows × 2 vectors: 4×32 on
    //! AVX-512, 4×16 on AVX2+FMA (the generic 4×32 tile's sixteen 8-wide accumulators would take
    //! every ymm register and spill).
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// Defines `$name`, the f32 tile product for vectors of `$w` lanes, with the contract of
    /// [`super::gemm`] (`m % 4 == 0`, `n % 32 == 0`).
    macro_rules! tile_product {
        ($name:ident, $feature:literal, $w:literal, $zero:ident, $load:ident, $set1:ident, $fma:ident, $store:ident) => {
            /// # Safety
            /// The CPU must support the instruction sets of the `target_feature` attribute,
            /// and for every `i < m`, `p < k`, `j < n`: `i·ars + p·acs < a.len()`,
            /// `p·ldb + j < b.len()` and `i·ldc + j < c.len()`.
            #[target_feature(enable = $feature)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $name(
                accumulate: bool,
                m: usize,
                n: usize,
                k: usize,
                a: &[f32],
                ars: usize,
                acs: usize,
                b: &[f32],
                ldb: usize,
                c: &mut [f32],
                ldc: usize,
            ) {
                const _: () = assert!(MR == 4 && NR.is_multiple_of(2 * $w));
                let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
                for i0 in (0..m).step_by(4) {
                    // SAFETY (all pointer arithmetic below): rows i0..i0+4 < m, columns
                    // j0..j0+2w ≤ n and p < k, which the caller's contract bounds by the slices.
                    let a0 = ap.add(i0 * ars);
                    let (a1, a2, a3) = (a0.add(ars), a0.add(2 * ars), a0.add(3 * ars));
                    for j0 in (0..n).step_by(2 * $w) {
                        let c0 = cp.add(i0 * ldc + j0);
                        let (c1, c2, c3) = (c0.add(ldc), c0.add(2 * ldc), c0.add(3 * ldc));
                        let z = $zero();
                        let (mut x00, mut x01, mut x10, mut x11, mut x20, mut x21, mut x30, mut x31) =
                            (z, z, z, z, z, z, z, z);
                        if accumulate {
                            x00 = $load(c0);
                            x01 = $load(c0.add($w));
                            x10 = $load(c1);
                            x11 = $load(c1.add($w));
                            x20 = $load(c2);
                            x21 = $load(c2.add($w));
                            x30 = $load(c3);
                            x31 = $load(c3.add($w));
                        }
                        let mut brow = bp.add(j0);
                        let mut off = 0;
                        for _ in 0..k {
                            let b0 = $load(brow);
                            let b1 = $load(brow.add($w));
                            let v0 = $set1(*a0.add(off));
                            x00 = $fma(v0, b0, x00);
                            x01 = $fma(v0, b1, x01);
                            let v1 = $set1(*a1.add(off));
                            x10 = $fma(v1, b0, x10);
                            x11 = $fma(v1, b1, x11);
                            let v2 = $set1(*a2.add(off));
                            x20 = $fma(v2, b0, x20);
                            x21 = $fma(v2, b1, x21);
                            let v3 = $set1(*a3.add(off));
                            x30 = $fma(v3, b0, x30);
                            x31 = $fma(v3, b1, x31);
                            brow = brow.add(ldb);
                            off += acs;
                        }
                        $store(c0, x00);
                        $store(c0.add($w), x01);
                        $store(c1, x10);
                        $store(c1.add($w), x11);
                        $store(c2, x20);
                        $store(c2.add($w), x21);
                        $store(c3, x30);
                        $store(c3.add($w), x31);
                    }
                }
            }
        };
    }

    tile_product!(
        gemm_avx512,
        "avx512f,avx2,fma",
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    );
    tile_product!(
        gemm_avx2,
        "avx2,fma",
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps
    );
}

/// Copies `nrows` rows of `d` values starting at row `r0` of `src` (row stride `d`) into the
/// `[b, dp]` tile `dst`, multiplied by `mul`; rows past `nrows` are zeroed, pad columns stay 0.
#[inline(always)]
fn load_rows<T: Real>(src: &[T], r0: usize, nrows: usize, g: &Geo, mul: T, dst: &mut [T]) {
    for (j, row) in dst.chunks_exact_mut(g.dp).take(g.b).enumerate() {
        if j < nrows {
            for (o, &v) in row.iter_mut().zip(&src[(r0 + j) * g.d..][..g.d]) {
                *o = v * mul;
            }
        } else {
            row.iter_mut().for_each(|x| *x = T::ZERO);
        }
    }
}

/// Copies `nrows` rows starting at `r0` of `src` transposed into the `[d, b]` tile `dst`
/// (`dst[c·b + j] = src[(r0 + j)·d + c]`); columns past `nrows` are zeroed.
#[inline(always)]
fn load_transposed<T: Real>(src: &[T], r0: usize, nrows: usize, g: &Geo, dst: &mut [T]) {
    for j in 0..g.b {
        if j < nrows {
            for (c, &v) in src[(r0 + j) * g.d..][..g.d].iter().enumerate() {
                dst[c * g.b + j] = v;
            }
        } else {
            for c in 0..g.d {
                dst[c * g.b + j] = T::ZERO;
            }
        }
    }
}

/// Forward pass: writes `out` and the per-row log-sum-exp of the scaled scores `lse`.
pub fn causal_attention_forward<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: AttentionDims,
    scale: T,
    out: &mut [T],
    lse: &mut [T],
) {
    forward_with(q, k, v, dims, scale, out, lse, BLOCK, SimdLevel::detect());
}

#[allow(clippy::too_many_arguments)]
fn forward_with<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: AttentionDims,
    scale: T,
    out: &mut [T],
    lse: &mut [T],
    block: usize,
    level: SimdLevel,
) {
    let AttentionDims { heads, seq, head_dim: d } = dims;
    if seq == 0 || d == 0 || heads == 0 {
        return;
    }
    let g = Geo::new(seq, d, block, level);
    let head = seq * d;
    let (q, k, v) = (&q[..heads * head], &k[..heads * head], &v[..heads * head]);
    out[..heads * head]
        .par_chunks_mut(head)
        .zip(lse[..heads * seq].par_chunks_mut(seq))
        .enumerate()
        .for_each(|(h, (oh, lh))| {
            let (qh, kh, vh) = (&q[h * head..][..head], &k[h * head..][..head], &v[h * head..][..head]);
            oh.par_chunks_mut(g.b * d).zip(lh.par_chunks_mut(g.b)).enumerate().for_each(|(qb, (ob, lb))| {
                simd_dispatch!(level, FMA => forward_block::<T, FMA>(&g, qh, kh, vh, scale, qb, ob, lb))
            });
        });
}

/// One query block of one head: online softmax over key blocks `0..=qb`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_block<T: Real, const FMA: bool>(
    g: &Geo,
    qh: &[T],
    kh: &[T],
    vh: &[T],
    scale: T,
    qb: usize,
    out: &mut [T],
    lse: &mut [T],
) {
    let (b, d, dp) = (g.b, g.d, g.dp);
    let (q0, rows) = g.rows(qb);
    let mut qs = vec![T::ZERO; b * dp];
    let mut acc = vec![T::ZERO; b * dp];
    let mut kt = vec![T::ZERO; d * b];
    let mut vb = vec![T::ZERO; b * dp];
    let mut s = vec![T::ZERO; b * b];
    let mut m = vec![T::NEG_INFINITY; b];
    let mut l = vec![T::ZERO; b];
    load_rows(qh, q0, rows, g, scale, &mut qs);
    for kb in 0..=qb {
        let (k0, krows) = g.rows(kb);
        load_transposed(kh, k0, krows, g, &mut kt);
        load_rows(vh, k0, krows, g, T::ONE, &mut vb);
        // S = (scale·Q)·Kᵀ
        gemm::<T, FMA>(g.tile, false, b, b, d, &qs, dp, 1, &kt, b, &mut s, b);
        for (i, srow) in s.chunks_exact_mut(b).enumerate() {
            if i >= rows {
                srow.iter_mut().for_each(|x| *x = T::ZERO);
                continue;
            }
            if kb == qb {
                srow[i + 1..].iter_mut().for_each(|x| *x = T::NEG_INFINITY);
            }
            let m_new = m[i].vmax(fastmath::max(srow));
            let corr = (m[i] - m_new).fexp::<FMA>();
            let sum = fastmath::exp_shift_sum_inplace::<T, FMA>(srow, m_new);
            l[i] = l[i] * corr + sum;
            if corr != T::ONE {
                acc[i * dp..][..dp].iter_mut().for_each(|x| *x *= corr);
            }
            m[i] = m_new;
        }
        // acc += P·V
        gemm::<T, FMA>(g.tile, true, b, dp, krows, &s, b, 1, &vb, dp, &mut acc, dp);
    }
    for (i, (orow, lrow)) in out.chunks_exact_mut(d).zip(lse.iter_mut()).enumerate().take(rows) {
        let inv = T::ONE / l[i];
        for (o, &a) in orow.iter_mut().zip(&acc[i * dp..][..d]) {
            *o = a * inv;
        }
        *lrow = m[i] + l[i].ln();
    }
}

/// How the backward pass is scheduled.
#[cfg_attr(not(test), allow(dead_code))] // tests force each schedule
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BwdMode {
    /// Fused when there are at least two heads per thread, two passes otherwise.
    Auto,
    /// One task per head; dQ accumulated in a head-local buffer.
    Fused,
    /// (head × key block) tasks for dK/dV, then (head × query block) tasks for dQ.
    TwoPass,
}

/// Backward pass: writes `dq`, `dk` and `dv` from the saved `out` and `lse`.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_backward<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: &[T],
    dout: &[T],
    dims: AttentionDims,
    scale: T,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    backward_with(
        q,
        k,
        v,
        out,
        lse,
        dout,
        dims,
        scale,
        dq,
        dk,
        dv,
        BLOCK,
        SimdLevel::detect(),
        BwdMode::Auto,
    );
}

/// Read-only inputs of one head for the backward pass.
struct HeadIn<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    dout: &'a [T],
    lse: &'a [T],
    delta: &'a [T],
}

/// Per-task scratch tiles of the backward pass.
struct Scratch<T> {
    /// Query block `[b, dp]` (unscaled).
    qb: Vec<T>,
    /// Output-gradient block `[b, dp]`.
    dob: Vec<T>,
    /// Kᵀ and Vᵀ of a key block, `[d, b]`.
    kt: Vec<T>,
    vt: Vec<T>,
    /// Key block rows `[b, dp]` (for dQ).
    kr: Vec<T>,
    /// Probability and score-gradient tiles `[b, b]`.
    p: Vec<T>,
    ds: Vec<T>,
    /// Accumulators `[b, dp]`.
    acc1: Vec<T>,
    acc2: Vec<T>,
}

impl<T: Float> Scratch<T> {
    fn new(g: &Geo) -> Self {
        let tile = g.b * g.dp;
        Scratch {
            qb: vec![T::ZERO; tile],
            dob: vec![T::ZERO; tile],
            kt: vec![T::ZERO; g.d * g.b],
            vt: vec![T::ZERO; g.d * g.b],
            kr: vec![T::ZERO; tile],
            p: vec![T::ZERO; g.b * g.b],
            ds: vec![T::ZERO; g.b * g.b],
            acc1: vec![T::ZERO; tile],
            acc2: vec![T::ZERO; tile],
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn backward_with<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: &[T],
    dout: &[T],
    dims: AttentionDims,
    scale: T,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    block: usize,
    level: SimdLevel,
    mode: BwdMode,
) {
    let AttentionDims { heads, seq, head_dim: d } = dims;
    if seq == 0 || d == 0 || heads == 0 {
        return;
    }
    let g = Geo::new(seq, d, block, level);
    let head = seq * d;
    let n = heads * head;
    let (q, k, v, out, dout) = (&q[..n], &k[..n], &v[..n], &out[..n], &dout[..n]);
    let (dq, dk, dv) = (&mut dq[..n], &mut dk[..n], &mut dv[..n]);
    let lse = &lse[..heads * seq];
    // D_i = dout_i · out_i.
    let mut delta = vec![T::ZERO; heads * seq];
    delta.par_iter_mut().enumerate().with_min_len(64).for_each(|(r, x)| {
        *x = simd_dispatch!(level, FMA => fastmath::dot::<T, FMA>(&dout[r * d..][..d], &out[r * d..][..d]));
    });
    let delta = &delta[..];
    let head_in = |h: usize| HeadIn {
        q: &q[h * head..][..head],
        k: &k[h * head..][..head],
        v: &v[h * head..][..head],
        dout: &dout[h * head..][..head],
        lse: &lse[h * seq..][..seq],
        delta: &delta[h * seq..][..seq],
    };
    let fused = match mode {
        BwdMode::Fused => true,
        BwdMode::TwoPass => false,
        BwdMode::Auto => heads >= 2 * rayon::current_num_threads(),
    };
    if fused {
        dq.par_chunks_mut(head)
            .zip(dk.par_chunks_mut(head).zip(dv.par_chunks_mut(head)))
            .enumerate()
            .for_each(|(h, (dqh, (dkh, dvh)))| {
                let hin = head_in(h);
                simd_dispatch!(level, FMA => backward_head_fused::<T, FMA>(&g, &hin, scale, dqh, dkh, dvh))
            });
    } else {
        dk.par_chunks_mut(head).zip(dv.par_chunks_mut(head)).enumerate().for_each(|(h, (dkh, dvh))| {
            let hin = head_in(h);
            dkh.par_chunks_mut(g.b * d).zip(dvh.par_chunks_mut(g.b * d)).enumerate().for_each(|(kb, (dkb, dvb))| {
                let mut sc = Scratch::new(&g);
                simd_dispatch!(level, FMA => key_block::<T, FMA>(&g, &hin, scale, kb, dkb, dvb, None, &mut sc))
            });
        });
        dq.par_chunks_mut(head).enumerate().for_each(|(h, dqh)| {
            let hin = head_in(h);
            dqh.par_chunks_mut(g.b * d).enumerate().for_each(|(qb, dqb)| {
                let mut sc = Scratch::new(&g);
                simd_dispatch!(level, FMA => query_block_dq::<T, FMA>(&g, &hin, scale, qb, dqb, &mut sc))
            });
        });
    }
}

/// Loads query block `qb` (Q and dout rows) into the scratch tiles; returns (first row, rows).
#[inline(always)]
fn load_query_block<T: Real>(g: &Geo, hin: &HeadIn<T>, qb: usize, sc: &mut Scratch<T>) -> (usize, usize) {
    let (q0, rows) = g.rows(qb);
    load_rows(hin.q, q0, rows, g, T::ONE, &mut sc.qb);
    load_rows(hin.dout, q0, rows, g, T::ONE, &mut sc.dob);
    (q0, rows)
}

/// Recomputes `P` and `dS = P ⊙ (dout·Vᵀ − D)` for the loaded query block (rows from `q0`,
/// `rows` valid) against the loaded key block (`kt`, `vt`); `diag` masks keys past the query.
#[inline(always)]
fn probs_and_dscores<T: Real, const FMA: bool>(
    g: &Geo,
    hin: &HeadIn<T>,
    scale: T,
    q0: usize,
    rows: usize,
    diag: bool,
    sc: &mut Scratch<T>,
) {
    let (b, d, dp) = (g.b, g.d, g.dp);
    gemm::<T, FMA>(g.tile, false, b, b, d, &sc.qb, dp, 1, &sc.kt, b, &mut sc.p, b);
    gemm::<T, FMA>(g.tile, false, b, b, d, &sc.dob, dp, 1, &sc.vt, b, &mut sc.ds, b);
    for (i, (prow, dsrow)) in sc.p.chunks_exact_mut(b).zip(sc.ds.chunks_exact_mut(b)).enumerate() {
        if i >= rows {
            prow.iter_mut().for_each(|x| *x = T::ZERO);
            dsrow.iter_mut().for_each(|x| *x = T::ZERO);
            continue;
        }
        let (l, dlt) = (hin.lse[q0 + i], hin.delta[q0 + i]);
        for (p, ds) in prow.iter_mut().zip(dsrow.iter_mut()) {
            let pv = (scale * *p - l).fexp::<FMA>();
            *p = pv;
            *ds = pv * (*ds - dlt);
        }
        if diag {
            prow[i + 1..].iter_mut().for_each(|x| *x = T::ZERO);
            dsrow[i + 1..].iter_mut().for_each(|x| *x = T::ZERO);
        }
    }
}

/// Writes `dst` rows (`nrows × d`) from the padded accumulator `acc` times `mul`.
#[inline(always)]
fn store_rows<T: Real>(g: &Geo, acc: &[T], mul: T, nrows: usize, dst: &mut [T]) {
    for (drow, arow) in dst.chunks_exact_mut(g.d).zip(acc.chunks_exact(g.dp)).take(nrows) {
        for (o, &a) in drow.iter_mut().zip(arow) {
            *o = a * mul;
        }
    }
}

/// dK and dV of key block `kb` (over query blocks `kb..nb`); with `dq_acc` (the head's padded
/// `[nb·b, dp]` dQ accumulator, unscaled) also accumulates `dS·K` into it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn key_block<T: Real, const FMA: bool>(
    g: &Geo,
    hin: &HeadIn<T>,
    scale: T,
    kb: usize,
    dk: &mut [T],
    dv: &mut [T],
    mut dq_acc: Option<&mut [T]>,
    sc: &mut Scratch<T>,
) {
    let (b, dp) = (g.b, g.dp);
    let (k0, krows) = g.rows(kb);
    load_transposed(hin.k, k0, krows, g, &mut sc.kt);
    load_transposed(hin.v, k0, krows, g, &mut sc.vt);
    if dq_acc.is_some() {
        load_rows(hin.k, k0, krows, g, T::ONE, &mut sc.kr);
    }
    sc.acc1.iter_mut().for_each(|x| *x = T::ZERO); // dK
    sc.acc2.iter_mut().for_each(|x| *x = T::ZERO); // dV
    for qb in kb..g.nb {
        let (q0, rows) = load_query_block(g, hin, qb, sc);
        probs_and_dscores::<T, FMA>(g, hin, scale, q0, rows, qb == kb, sc);
        // dV += Pᵀ·dout, dK += dSᵀ·Q (the transposes are read through the A strides).
        gemm::<T, FMA>(g.tile, true, b, dp, rows, &sc.p, 1, b, &sc.dob, dp, &mut sc.acc2, dp);
        gemm::<T, FMA>(g.tile, true, b, dp, rows, &sc.ds, 1, b, &sc.qb, dp, &mut sc.acc1, dp);
        if let Some(dq_acc) = dq_acc.as_deref_mut() {
            let tile = &mut dq_acc[qb * b * dp..][..b * dp];
            gemm::<T, FMA>(g.tile, true, b, dp, krows, &sc.ds, b, 1, &sc.kr, dp, tile, dp);
        }
    }
    store_rows(g, &sc.acc1, scale, krows, dk);
    store_rows(g, &sc.acc2, T::ONE, krows, dv);
}

/// The whole backward of one head, serially over key blocks, dQ in a head-local buffer.
#[inline(always)]
fn backward_head_fused<T: Real, const FMA: bool>(
    g: &Geo,
    hin: &HeadIn<T>,
    scale: T,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    let mut sc = Scratch::new(g);
    let mut dq_acc = vec![T::ZERO; g.nb * g.b * g.dp];
    for (kb, (dkb, dvb)) in dk.chunks_mut(g.b * g.d).zip(dv.chunks_mut(g.b * g.d)).enumerate() {
        key_block::<T, FMA>(g, hin, scale, kb, dkb, dvb, Some(&mut dq_acc), &mut sc);
    }
    store_rows(g, &dq_acc, scale, g.seq, dq);
}

/// dQ of query block `qb` (over key blocks `0..=qb`).
#[inline(always)]
fn query_block_dq<T: Real, const FMA: bool>(
    g: &Geo,
    hin: &HeadIn<T>,
    scale: T,
    qb: usize,
    dq: &mut [T],
    sc: &mut Scratch<T>,
) {
    let (b, dp) = (g.b, g.dp);
    let (q0, rows) = load_query_block(g, hin, qb, sc);
    sc.acc1.iter_mut().for_each(|x| *x = T::ZERO);
    for kb in 0..=qb {
        let (k0, krows) = g.rows(kb);
        load_transposed(hin.k, k0, krows, g, &mut sc.kt);
        load_transposed(hin.v, k0, krows, g, &mut sc.vt);
        load_rows(hin.k, k0, krows, g, T::ONE, &mut sc.kr);
        probs_and_dscores::<T, FMA>(g, hin, scale, q0, rows, qb == kb, sc);
        gemm::<T, FMA>(g.tile, true, b, dp, krows, &sc.ds, b, 1, &sc.kr, dp, &mut sc.acc1, dp);
    }
    store_rows(g, &sc.acc1, scale, rows, dq);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::softmax::test_util::*;

    struct Ref {
        out: Vec<f64>,
        lse: Vec<f64>,
        dq: Vec<f64>,
        dk: Vec<f64>,
        dv: Vec<f64>,
    }

    /// Explicit full-softmax attention and its analytic gradient (no flash identities).
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    fn reference(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        dout: &[f64],
        heads: usize,
        t: usize,
        d: usize,
        scale: f64,
    ) -> Ref {
        let n = heads * t * d;
        let mut r = Ref {
            out: vec![0.0; n],
            lse: vec![0.0; heads * t],
            dq: vec![0.0; n],
            dk: vec![0.0; n],
            dv: vec![0.0; n],
        };
        for h in 0..heads {
            let at = |x: &[f64], i: usize, c: usize| x[(h * t + i) * d + c];
            let mut p = vec![vec![0.0; t]; t];
            for i in 0..t {
                let s: Vec<f64> =
                    (0..=i).map(|j| scale * (0..d).map(|c| at(q, i, c) * at(k, j, c)).sum::<f64>()).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                r.lse[h * t + i] = m + z.ln();
                for j in 0..=i {
                    p[i][j] = (s[j] - m).exp() / z;
                }
                for c in 0..d {
                    r.out[(h * t + i) * d + c] = (0..=i).map(|j| p[i][j] * at(v, j, c)).sum();
                }
            }
            for i in 0..t {
                let dp: Vec<f64> =
                    (0..=i).map(|j| (0..d).map(|c| at(dout, i, c) * at(v, j, c)).sum()).collect();
                let pdp: f64 = (0..=i).map(|j| p[i][j] * dp[j]).sum();
                for j in 0..=i {
                    let ds = p[i][j] * (dp[j] - pdp);
                    for c in 0..d {
                        r.dq[(h * t + i) * d + c] += scale * ds * at(k, j, c);
                        r.dk[(h * t + j) * d + c] += scale * ds * at(q, i, c);
                        r.dv[(h * t + j) * d + c] += p[i][j] * at(dout, i, c);
                    }
                }
            }
        }
        r
    }

    fn max_abs(x: &[f64]) -> f64 {
        x.iter().fold(0.0, |a, &b| a.max(b.abs()))
    }

    #[allow(clippy::too_many_arguments)]
    fn run<T: Float>(
        q: &[T],
        k: &[T],
        v: &[T],
        dout: &[T],
        dims: AttentionDims,
        scale: f64,
        block: usize,
        level: SimdLevel,
        mode: BwdMode,
    ) -> [Vec<T>; 5] {
        let n = dims.qkv_len();
        let s = T::from_f64(scale);
        let (mut out, mut lse) = (vec![T::from_f64(7.0); n], vec![T::from_f64(7.0); dims.lse_len()]);
        forward_with(q, k, v, dims, s, &mut out, &mut lse, block, level);
        let (mut dq, mut dk, mut dv) =
            (vec![T::from_f64(7.0); n], vec![T::from_f64(7.0); n], vec![T::from_f64(7.0); n]);
        backward_with(q, k, v, &out, &lse, dout, dims, s, &mut dq, &mut dk, &mut dv, block, level, mode);
        [out, lse, dq, dk, dv]
    }

    fn check_case(rng: &mut Rng, heads: usize, seq: usize, d: usize, blocks: &[usize], levels: &[SimdLevel]) {
        let n = heads * seq * d;
        let scale = 1.0 / (d as f64).sqrt() * rng.uniform(0.5, 2.0);
        let q = rng.vec(n, -2.0, 2.0);
        let k = rng.vec(n, -2.0, 2.0);
        let v = rng.vec(n, -1.0, 1.0);
        let dout = rng.vec(n, -1.0, 1.0);
        let dims = AttentionDims { heads, seq, head_dim: d };
        let up = |x: &[f32]| x.iter().map(|&a| a as f64).collect::<Vec<_>>();
        let (q32, k32, v32, g32) = (to_f32(&q), to_f32(&k), to_f32(&v), to_f32(&dout));
        let want = reference(&q, &k, &v, &dout, heads, seq, d, scale);
        let want32 =
            reference(&up(&q32), &up(&k32), &up(&v32), &up(&g32), heads, seq, d, scale as f32 as f64);
        let names = ["out", "lse", "dq", "dk", "dv"];
        for &block in blocks {
            for &level in levels {
                for mode in [BwdMode::Fused, BwdMode::TwoPass] {
                    let what = |name: &str, ty: &str| {
                        format!("{name} {ty} heads={heads} seq={seq} d={d} block={block} {level:?} {mode:?}")
                    };
                    let got = run(&q, &k, &v, &dout, dims, scale, block, level, mode);
                    let w = [&want.out, &want.lse, &want.dq, &want.dk, &want.dv];
                    for ((got, want), name) in got.iter().zip(w).zip(names) {
                        let atol = 1e-12 * max_abs(want).max(1.0);
                        assert_close(got, want, 1e-12, atol, &what(name, "f64"));
                    }
                    let got = run(&q32, &k32, &v32, &g32, dims, scale, block, level, mode);
                    let w = [&want32.out, &want32.lse, &want32.dq, &want32.dk, &want32.dv];
                    for ((got, want), name) in got.iter().zip(w).zip(names) {
                        let atol = 2e-6 * max_abs(want).max(1.0);
                        assert_close(got, want, 1e-5, atol, &what(name, "f32"));
                    }
                }
            }
        }
    }

    #[test]
    fn matches_reference_ragged_shapes() {
        let mut rng = Rng::new(23);
        let levels = SimdLevel::all_supported();
        for &(seq, d) in &[(1, 1), (1, 8), (2, 1), (7, 3), (32, 16), (33, 5), (64, 64), (65, 40), (70, 33)] {
            check_case(&mut rng, 2, seq, d, &[32, 64], &levels);
        }
        for _ in 0..12 {
            let (heads, seq, d) = (rng.range(1, 3), rng.range(1, 70), rng.range(1, 40));
            check_case(&mut rng, heads, seq, d, &[32], &[SimdLevel::detect()]);
        }
    }

    #[test]
    fn public_entry_points_and_auto_mode() {
        let mut rng = Rng::new(29);
        let (heads, seq, d) = (5, 70, 24);
        let n = heads * seq * d;
        let (q, k, v, dout) =
            (rng.vec(n, -2.0, 2.0), rng.vec(n, -2.0, 2.0), rng.vec(n, -1.0, 1.0), rng.vec(n, -1.0, 1.0));
        let dims = AttentionDims { heads, seq, head_dim: d };
        let scale = 0.2;
        let want = reference(&q, &k, &v, &dout, heads, seq, d, scale);
        let (mut out, mut lse) = (vec![0.0; n], vec![0.0; heads * seq]);
        causal_attention_forward(&q, &k, &v, dims, scale, &mut out, &mut lse);
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        causal_attention_backward(&q, &k, &v, &out, &lse, &dout, dims, scale, &mut dq, &mut dk, &mut dv);
        assert_close(&out, &want.out, 1e-12, 1e-12, "out");
        assert_close(&lse, &want.lse, 1e-12, 1e-12, "lse");
        assert_close(&dq, &want.dq, 1e-11, 1e-12, "dq");
        assert_close(&dk, &want.dk, 1e-11, 1e-12, "dk");
        assert_close(&dv, &want.dv, 1e-11, 1e-12, "dv");
    }
}
