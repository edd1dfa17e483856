//! The tensor-core matrix product (`kernels/cuda/matmul_tc.cu`) against an f64 CPU reference
//! and against cuBLAS, on a GPU.
//!
//! Inputs are random (never zeros or ones), rounded to bf16/f16 first so that the reference
//! sees exactly what the kernel sees. Shapes include M, N, K that are multiples of no tile
//! (1, 7, 33, 100, 257, 1000), every layout (A·B, A·Bᵀ, Aᵀ·B, Aᵀ·Bᵀ), batches with strides
//! (and a broadcast operand), every epilogue (plain, accumulate with beta = 1 and an alpha
//! scale, bias, bias + GeLU with and without the pre-activation), and every kernel: the two
//! cp.async tiles on operands stored with padded (16-byte aligned) leading dimensions, and the
//! generic kernel on tightly packed, misaligned operands. The unused padding of every operand
//! holds NaN, so a kernel reading outside a matrix fails; outputs are poisoned with NaN before
//! each launch, so an element never written fails.
//!
//! The Hopper path (`kernels/cuda/matmul_wgmma.cu`: TMA + wgmma, sm_90a) runs the same cases,
//! forced with its tiles (128×128 and 128×256) on the padded operands, which TMA can read, and
//! on the tight misaligned ones, which it cannot (they must fall back to the generic kernel);
//! and it is compared with cuBLAS, on products with more tiles than SMs (several tiles per
//! persistent block) and long K (the stage ring wraps many times).
//!
//! Without a GPU every test prints that it skipped and passes; the Hopper tests also skip, with
//! a message, on a GPU other than sm_90.

mod common;

use common::gpu::{device, poisoned, random_exact, read, upload};

use std::sync::Arc;

use common::assert_close;
use half::{bf16, f16};
use polylm_engine::Rng;
use polylm_kernels::cast::Scalar;
use polylm_kernels::cuda::matmul::{GemmDims, MatView};
use polylm_kernels::cuda::matmul_tc::{
    bias_grad, gemm_tc, gemm_tc_with, CublasGemm, Epilogue, TensorCoreElem, Tile,
};
use polylm_kernels::cuda::matmul_wgmma;
use polylm_kernels::cuda::{CudaDevice, DeviceBuf, FloatElem};

/// Input types.
trait In: TensorCoreElem + Scalar {}
impl In for bf16 {}
impl In for f16 {}

/// Output types with their tolerances: relative, and absolute as a fraction of the largest
/// reference magnitude. f32 outputs carry only the f32 accumulation error (the inputs are
/// exact); 16-bit outputs add one rounding.
trait Out: FloatElem + Scalar {
    const RTOL: f64;
    const ATOL: f64;
}
impl Out for f32 {
    const RTOL: f64 = 2e-3;
    const ATOL: f64 = 1e-3;
}
impl Out for bf16 {
    const RTOL: f64 = 1.6e-2;
    const ATOL: f64 = 8e-3;
}
impl Out for f16 {
    const RTOL: f64 = 3e-3;
    const ATOL: f64 = 2e-3;
}

#[track_caller]
fn check<O: Out>(what: &str, got: &[f64], want: &[f64]) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
    assert_close(&format!("{what} -> {}", O::NAME), got, want, O::RTOL, O::ATOL * scale);
}

/// A logical `batch × rows × cols` matrix in device storage, rows-major (`transposed = false`)
/// or stored as its transpose, with a padded (multiple of 8, 16-byte aligned) or tight and
/// misaligned layout; `broadcast` stores one matrix used by every batch entry (stride 0).
struct Stored<T: FloatElem> {
    buf: DeviceBuf<T>,
    offset: usize,
    rs: usize,
    cs: usize,
    bs: usize,
}

impl<T: FloatElem> Stored<T> {
    fn view(&self) -> MatView<'_, T> {
        MatView {
            buf: &self.buf,
            offset: self.offset,
            row_stride: self.rs,
            col_stride: self.cs,
            batch_stride: self.bs,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn store<T: FloatElem + Scalar>(
    dev: &Arc<CudaDevice>,
    values: &[f64],
    batch: usize,
    rows: usize,
    cols: usize,
    transposed: bool,
    padded: bool,
    broadcast: bool,
) -> Stored<T> {
    let (inner, outer) = if transposed { (rows, cols) } else { (cols, rows) };
    let ld = if padded { inner.next_multiple_of(8) } else { inner };
    let stored_batches = if broadcast { 1 } else { batch };
    let mat = outer * ld;
    let bs_stored = if padded { mat.next_multiple_of(8) + 8 } else { mat + 3 };
    let offset = if padded { 8 } else { 1 };
    let len = offset + stored_batches * bs_stored;
    let mut host = vec![f64::NAN; len];
    for b in 0..stored_batches {
        for r in 0..rows {
            for c in 0..cols {
                let at = if transposed { c * ld + r } else { r * ld + c };
                host[offset + b * bs_stored + at] = values[(b * rows + r) * cols + c];
            }
        }
    }
    let (rs, cs) = if transposed { (1, ld) } else { (ld, 1) };
    let bs = if broadcast { 0 } else { bs_stored };
    Stored { buf: upload(dev, &host), offset, rs, cs, bs }
}

/// `alpha·A[b]·B[b]` in f64 (B broadcast when `b_broadcast`).
#[allow(clippy::too_many_arguments)]
fn reference(
    a: &[f64],
    b: &[f64],
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    b_broadcast: bool,
    alpha: f64,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * m * n];
    for bi in 0..batch {
        let bb = if b_broadcast { 0 } else { bi };
        for i in 0..m {
            let row = &mut out[(bi * m + i) * n..(bi * m + i + 1) * n];
            for p in 0..k {
                let av = a[(bi * m + i) * k + p];
                let brow = &b[(bb * k + p) * n..(bb * k + p + 1) * n];
                for (o, &bv) in row.iter_mut().zip(brow) {
                    *o += av * bv;
                }
            }
            for o in row.iter_mut() {
                *o *= alpha;
            }
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Epi {
    Plain,
    Accumulate,
    Bias,
    BiasGeluPre,
    BiasGeluAccumulate,
}

const EPILOGUES: [Epi; 5] =
    [Epi::Plain, Epi::Accumulate, Epi::Bias, Epi::BiasGeluPre, Epi::BiasGeluAccumulate];

/// The kernels of one test: operands padded (16-byte aligned) or tight and misaligned, the tile
/// asked for, and the tile expected to run.
type Kernels = [(bool, Tile, Tile)];

/// The portable kernels: both cp.async tiles on aligned operands, the generic one otherwise.
const PORTABLE: [(bool, Tile, Tile); 3] = [
    (true, Tile::Large128x128, Tile::Large128x128),
    (true, Tile::Small64x64, Tile::Small64x64),
    (false, Tile::Generic64x64, Tile::Generic64x64),
];

/// The Hopper kernels on aligned operands; misaligned ones cannot be read by TMA and fall back
/// to the generic kernel.
const HOPPER: [(bool, Tile, Tile); 3] = [
    (true, Tile::Hopper128x128, Tile::Hopper128x128),
    (true, Tile::Hopper128x256, Tile::Hopper128x256),
    (false, Tile::Hopper128x256, Tile::Generic64x64),
];

/// The first GPU if it is an sm_90 (Hopper) one, else `None` after printing why `test` skips.
fn hopper_device(test: &str) -> Option<Arc<CudaDevice>> {
    let dev = device(test)?;
    if !matmul_wgmma::device_supported(&dev) {
        let arch = dev.arch();
        eprintln!(
            "skipped {test}: the Hopper path needs an sm_90 GPU (H100/H200), this is {} (sm_{}{})",
            dev.name(),
            arch.major,
            arch.minor
        );
        return None;
    }
    Some(dev)
}

/// One shape: every layout × every kernel × every epilogue against the f64 reference.
fn shape_case<T: In, O: Out>(
    dev: &Arc<CudaDevice>,
    seed: u64,
    (m, n, k, batch): (usize, usize, usize, usize),
    kernels: &Kernels,
) {
    let mut rng = Rng::new(seed);
    let b_broadcast = batch > 1 && seed.is_multiple_of(2);
    let b_batches = if b_broadcast { 1 } else { batch };
    let av = random_exact::<T>(&mut rng, batch * m * k, 1.0);
    let bv = random_exact::<T>(&mut rng, b_batches * k * n, 1.0);
    let biasv = random_exact::<O>(&mut rng, n, 1.0);
    let c0 = random_exact::<O>(&mut rng, batch * m * n, 1.0);
    let bias = upload::<O>(dev, &biasv);
    let product1 = reference(&av, &bv, batch, m, n, k, b_broadcast, 1.0);

    for (a_t, b_t) in [(false, false), (false, true), (true, false), (true, true)] {
        for &(padded, tile, expected) in kernels {
            let a = store::<T>(dev, &av, batch, m, k, a_t, padded, false);
            // B is logically k × n; "transposed" storage is [n, k].
            let b = store::<T>(dev, &bv, b_batches, k, n, b_t, padded, b_broadcast);
            for epi in EPILOGUES {
                let what = format!(
                    "gemm_tc<{}> {m}x{n}x{k} batch {batch}{} A{} B{} {tile:?} {epi:?}",
                    T::NAME,
                    if b_broadcast { " (B broadcast)" } else { "" },
                    if a_t { "ᵀ" } else { "" },
                    if b_t { "ᵀ" } else { "" },
                );
                let alpha = match epi {
                    Epi::Accumulate => 0.75,
                    Epi::BiasGeluAccumulate => -0.5,
                    _ => 1.0,
                };
                let beta = if matches!(epi, Epi::Accumulate | Epi::BiasGeluAccumulate) { 1.0 } else { 0.0 };
                let dims = GemmDims { m, n, k, batch, alpha, beta };
                let mut c =
                    if beta != 0.0 { upload::<O>(dev, &c0) } else { poisoned::<O>(dev, batch * m * n) };
                let mut pre = poisoned::<O>(dev, batch * m * n);
                let epilogue = match epi {
                    Epi::Plain | Epi::Accumulate => Epilogue::None,
                    Epi::Bias => Epilogue::Bias(&bias),
                    Epi::BiasGeluPre => Epilogue::BiasGelu { bias: &bias, pre_activation: Some(&mut pre) },
                    Epi::BiasGeluAccumulate => Epilogue::BiasGelu { bias: &bias, pre_activation: None },
                };
                let used = gemm_tc_with(Some(tile), dims, a.view(), b.view(), &mut c, epilogue)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(used, expected, "{what}: ran on another kernel");
                let has_bias = matches!(epi, Epi::Bias | Epi::BiasGeluPre | Epi::BiasGeluAccumulate);
                let gelu = matches!(epi, Epi::BiasGeluPre | Epi::BiasGeluAccumulate);
                let mut want_pre = vec![0.0; batch * m * n];
                let mut want = vec![0.0; batch * m * n];
                for (idx, (wp, w)) in want_pre.iter_mut().zip(want.iter_mut()).enumerate() {
                    let mut v = alpha as f64 * product1[idx];
                    if has_bias {
                        v += biasv[idx % n];
                    }
                    *wp = v;
                    if gelu {
                        v = polylm_kernels::gelu::gelu(v);
                    }
                    *w = v + beta as f64 * c0[idx];
                }
                check::<O>(&what, &read(&what, &c), &want);
                if epi == Epi::BiasGeluPre {
                    check::<O>(&format!("{what} pre-activation"), &read(&what, &pre), &want_pre);
                }
            }
        }
    }
}

const SHAPES: [(usize, usize, usize, usize); 11] = [
    (1, 1, 1, 1),
    (7, 1, 33, 1),
    (1, 100, 7, 1),
    (33, 100, 7, 2),
    (100, 257, 33, 1),
    (64, 128, 32, 1),
    (129, 255, 64, 3),
    (257, 100, 1000, 1),
    (1000, 257, 100, 1),
    (130, 300, 257, 2),
    (256, 256, 96, 1),
];

#[test]
fn bf16_products_match_f64_over_shapes_layouts_kernels_and_epilogues() {
    let Some(dev) = device("gemm_tc bf16") else { return };
    for (i, &shape) in SHAPES.iter().enumerate() {
        shape_case::<bf16, bf16>(&dev, 10 + i as u64, shape, &PORTABLE);
        shape_case::<bf16, f32>(&dev, 30 + i as u64, shape, &PORTABLE);
    }
}

#[test]
fn f16_products_match_f64_over_shapes_layouts_kernels_and_epilogues() {
    let Some(dev) = device("gemm_tc f16") else { return };
    for (i, &shape) in SHAPES.iter().enumerate() {
        shape_case::<f16, f16>(&dev, 50 + i as u64, shape, &PORTABLE);
        shape_case::<f16, f32>(&dev, 70 + i as u64, shape, &PORTABLE);
    }
    // One mixed output type (f16 inputs, bf16 output).
    shape_case::<f16, bf16>(&dev, 99, (100, 257, 33, 2), &PORTABLE);
}

#[test]
fn hopper_bf16_products_match_f64_over_shapes_layouts_and_epilogues() {
    let Some(dev) = hopper_device("gemm_tc Hopper bf16") else { return };
    for (i, &shape) in SHAPES.iter().enumerate() {
        shape_case::<bf16, bf16>(&dev, 110 + i as u64, shape, &HOPPER);
        shape_case::<bf16, f32>(&dev, 130 + i as u64, shape, &HOPPER);
    }
}

#[test]
fn hopper_f16_products_match_f64_over_shapes_layouts_and_epilogues() {
    let Some(dev) = hopper_device("gemm_tc Hopper f16") else { return };
    for (i, &shape) in SHAPES.iter().enumerate() {
        shape_case::<f16, f16>(&dev, 150 + i as u64, shape, &HOPPER);
        shape_case::<f16, f32>(&dev, 170 + i as u64, shape, &HOPPER);
    }
    shape_case::<f16, bf16>(&dev, 199, (100, 257, 33, 2), &HOPPER);
}

#[test]
fn hopper_matches_cublas() {
    let Some(dev) = hopper_device("gemm_tc Hopper vs cuBLAS") else { return };
    let blas = match CublasGemm::new(&dev) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipped gemm_tc Hopper vs cuBLAS: {e}");
            return;
        }
    };
    let mut rng = Rng::new(12);
    // More tiles than SMs (several per persistent block), long K (the ring wraps), ragged edges,
    // many batch entries.
    let shapes = [
        (256, 256, 256, 1),
        (1000, 264, 128, 1),
        (512, 384, 1024, 2),
        (8, 4096, 512, 1),
        (4096, 2048, 256, 1),
        (1100, 1900, 700, 1),
        (256, 256, 128, 160),
    ];
    for &(m, n, k, batch) in &shapes {
        let av = random_exact::<bf16>(&mut rng, batch * m * k, 1.0);
        let bv = random_exact::<bf16>(&mut rng, batch * k * n, 1.0);
        for (a_t, b_t) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = store::<bf16>(&dev, &av, batch, m, k, a_t, true, false);
            let b = store::<bf16>(&dev, &bv, batch, k, n, b_t, true, false);
            let dims = GemmDims { m, n, k, batch, alpha: 1.0, beta: 0.0 };
            let mut theirs = poisoned::<f32>(&dev, batch * m * n);
            blas.gemm(dims, a.view(), b.view(), &mut theirs).expect("cublas");
            let theirs = read("cublas", &theirs);
            for tile in [Tile::Hopper128x128, Tile::Hopper128x256] {
                let mut ours = poisoned::<f32>(&dev, batch * m * n);
                let used = gemm_tc_with(Some(tile), dims, a.view(), b.view(), &mut ours, Epilogue::None)
                    .expect("gemm_tc Hopper");
                let what = format!("{tile:?} vs cuBLAS {m}x{n}x{k} batch {batch} A{a_t} B{b_t}");
                assert_eq!(used, tile, "{what}: ran on another kernel");
                check::<f32>(&what, &read("ours", &ours), &theirs);
            }
        }
    }
}

#[test]
fn the_heuristic_picks_a_kernel_that_matches_the_reference() {
    let Some(dev) = device("gemm_tc heuristic") else { return };
    let mut rng = Rng::new(7);
    for &(m, n, k) in &[(2048, 512, 256), (40, 24, 56), (3, 5, 8)] {
        let av = random_exact::<bf16>(&mut rng, m * k, 1.0);
        let bv = random_exact::<bf16>(&mut rng, k * n, 1.0);
        let a = upload::<bf16>(&dev, &av);
        let b = upload::<bf16>(&dev, &bv);
        let mut c = poisoned::<f32>(&dev, m * n);
        let dims = GemmDims { m, n, k, batch: 1, alpha: 1.0, beta: 0.0 };
        gemm_tc(dims, MatView::row_major(&a, m, k), MatView::row_major(&b, k, n), &mut c, Epilogue::None)
            .expect("gemm_tc");
        let want = reference(&av, &bv, 1, m, n, k, false, 1.0);
        check::<f32>(&format!("gemm_tc {m}x{n}x{k}"), &read("c", &c), &want);
    }
}

#[test]
fn matches_cublas() {
    let Some(dev) = device("gemm_tc vs cuBLAS") else { return };
    let blas = match CublasGemm::new(&dev) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipped gemm_tc vs cuBLAS: {e}");
            return;
        }
    };
    let mut rng = Rng::new(11);
    for &(m, n, k, batch) in
        &[(256, 256, 256, 1), (1000, 264, 128, 1), (512, 384, 1024, 2), (8, 4096, 512, 1)]
    {
        let av = random_exact::<bf16>(&mut rng, batch * m * k, 1.0);
        let bv = random_exact::<bf16>(&mut rng, batch * k * n, 1.0);
        for (a_t, b_t) in [(false, false), (false, true), (true, false)] {
            let a = store::<bf16>(&dev, &av, batch, m, k, a_t, true, false);
            let b = store::<bf16>(&dev, &bv, batch, k, n, b_t, true, false);
            let dims = GemmDims { m, n, k, batch, alpha: 1.0, beta: 0.0 };
            let mut ours = poisoned::<f32>(&dev, batch * m * n);
            let mut theirs = poisoned::<f32>(&dev, batch * m * n);
            gemm_tc(dims, a.view(), b.view(), &mut ours, Epilogue::None).expect("gemm_tc");
            blas.gemm(dims, a.view(), b.view(), &mut theirs).expect("cublas");
            let what = format!("gemm_tc vs cuBLAS {m}x{n}x{k} batch {batch} A{a_t} B{b_t}");
            check::<f32>(&what, &read("ours", &ours), &read("cublas", &theirs));
        }
    }
}

#[test]
fn bias_grad_matches_column_sums() {
    let Some(dev) = device("bias_grad") else { return };
    let mut rng = Rng::new(21);
    for &(rows, cols) in &[(1, 1), (7, 33), (300, 1000), (5000, 257), (20_000, 64)] {
        let ld = cols + 3;
        let dyv = random_exact::<bf16>(&mut rng, rows * ld, 1.0);
        let dy = upload::<bf16>(&dev, &dyv);
        let sums: Vec<f64> = (0..cols).map(|c| (0..rows).map(|r| dyv[r * ld + c]).sum()).collect();
        let mut out = poisoned::<f32>(&dev, cols);
        bias_grad(&dy, rows, cols, ld, &mut out, false).expect("bias_grad");
        check::<f32>(&format!("bias_grad {rows}x{cols}"), &read("db", &out), &sums);
        // Accumulating into an existing bf16 gradient.
        let prev = random_exact::<bf16>(&mut rng, cols, 1.0);
        let mut acc = upload::<bf16>(&dev, &prev);
        bias_grad(&dy, rows, cols, ld, &mut acc, true).expect("bias_grad accumulate");
        let want: Vec<f64> = sums.iter().zip(&prev).map(|(s, p)| s + p).collect();
        check::<bf16>(&format!("bias_grad += {rows}x{cols}"), &read("db", &acc), &want);
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let Some(dev) = device("gemm_tc errors") else { return };
    let a = poisoned::<bf16>(&dev, 6 * 8);
    let b = poisoned::<bf16>(&dev, 8 * 4);
    let bias = poisoned::<f32>(&dev, 3);
    let mut c = poisoned::<f32>(&dev, 6 * 4);
    let dims = GemmDims { m: 6, n: 4, k: 8, batch: 1, alpha: 1.0, beta: 0.0 };
    let (av, bv) = (MatView::row_major(&a, 6, 8), MatView::row_major(&b, 8, 4));
    // A view past its buffer.
    let too_long = GemmDims { k: 9, ..dims };
    assert!(gemm_tc(too_long, av, bv, &mut c, Epilogue::None).is_err());
    // C too small.
    let mut small = poisoned::<f32>(&dev, 23);
    assert!(gemm_tc(dims, av, bv, &mut small, Epilogue::None).is_err());
    // Bias too short.
    assert!(gemm_tc(dims, av, bv, &mut c, Epilogue::Bias(&bias)).is_err());
    // Too many batch entries.
    let huge = GemmDims { batch: 70_000, ..dims };
    let b0 = MatView { batch_stride: 0, ..bv };
    let a0 = MatView { batch_stride: 0, ..av };
    assert!(gemm_tc(huge, a0, b0, &mut c, Epilogue::None).is_err());
    // bias_grad with a row stride below the columns, and a short dY.
    let mut db = poisoned::<f32>(&dev, 8);
    assert!(bias_grad(&a, 6, 8, 7, &mut db, false).is_err());
    assert!(bias_grad(&a, 7, 8, 8, &mut db, false).is_err());
    // Empty products are fine and launch nothing.
    let empty = GemmDims { m: 0, ..dims };
    assert!(gemm_tc(empty, av, bv, &mut c, Epilogue::None).is_ok());
    // The Hopper path is an error on other GPUs, and checks its arguments like the rest.
    let hopper = Some(Tile::Hopper128x128);
    if matmul_wgmma::device_supported(&dev) {
        assert!(gemm_tc_with(hopper, too_long, av, bv, &mut c, Epilogue::None).is_err());
        assert!(gemm_tc_with(hopper, dims, av, bv, &mut c, Epilogue::Bias(&bias)).is_err());
    } else {
        assert!(gemm_tc_with(hopper, dims, av, bv, &mut c, Epilogue::None).is_err());
    }
}

/// `Epilogue::Discard` (the benchmark's main-loop-only timing) computes the product and stores
/// nothing: a poisoned output stays poisoned on every kernel, the Hopper ones included.
#[test]
fn discard_stores_nothing() {
    let Some(dev) = device("gemm_tc discard") else { return };
    let mut rng = Rng::new(23);
    let (m, n, k) = (200, 136, 72);
    let a = upload::<bf16>(&dev, &random_exact::<bf16>(&mut rng, m * k, 1.0));
    let b = upload::<bf16>(&dev, &random_exact::<bf16>(&mut rng, k * n, 1.0));
    let mut tiles = vec![Tile::Large128x128, Tile::Small64x64, Tile::Generic64x64];
    if matmul_wgmma::device_supported(&dev) {
        tiles.extend([Tile::Hopper128x128, Tile::Hopper128x256]);
    }
    for tile in tiles {
        let mut c = poisoned::<bf16>(&dev, m * n);
        let dims = GemmDims { m, n, k, batch: 1, alpha: 1.0, beta: 0.0 };
        let (av, bv) = (MatView::row_major(&a, m, k), MatView::row_major(&b, k, n));
        gemm_tc_with(Some(tile), dims, av, bv, &mut c, Epilogue::Discard).expect("gemm_tc discard");
        let values = dev.download(&c).expect("download");
        assert!(values.iter().all(|v| v.to_bits() == 0xFFFF), "{tile:?} wrote into C");
    }
}
