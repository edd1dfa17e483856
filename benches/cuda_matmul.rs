//! TFLOP/s of the tensor-core matrix product against cuBLAS (through cudarc,
//! `cublasGemmStridedBatchedEx`, bf16 in, f32 compute; the reference only), side by side on the
//! same buffers in the same run: our portable path (`kernels/cuda/matmul_tc.cu`, mma.sync, the
//! tile `choose_tile` picks), our Hopper path (`kernels/cuda/matmul_wgmma.cu`, TMA + wgmma, the
//! tile `choose_hopper_tile` picks; "-" on a GPU other than sm_90) and cuBLAS.
//!
//! `cargo bench --bench cuda_matmul` (without a GPU it prints that it skipped and exits 0).
//! Shapes: 4096³ and 8192³, and the PolyLM-1.7B training products with 8192 tokens and hidden
//! 2048 against the weights 2048×6144 (QKV), 2048×8192 (MLP up), 8192×2048 (MLP down) and
//! 2048×256000 (LM head), each forward (Y = X·W, bf16 out), input gradient (dX = dY·Wᵀ, bf16
//! out) and weight gradient (dW = Xᵀ·dY, f32 out). Inputs are dense pseudo-random bf16 (low-rank
//! products of random factors, generated on the device), never constants. Each product is
//! timed with CUDA events over several runs after a warm-up. Set `POLYLM_BENCH_OUT=path` to
//! also write the table as Markdown.
//!
//! On sm_90 a second table takes the Hopper path apart at each shape: the other Hopper tile,
//! and the chosen tile with no epilogue at all (`Epilogue::Discard`), so that the difference
//! is what storing the tile costs. (On the H200, 2026-11-30, the Hopper path fell furthest
//! behind cuBLAS where K is short, as if each tile paid a fixed cost of some 16 K slices.)

mod common;

use std::fmt::Write as _;
use std::sync::Arc;

use half::bf16;
use polylm_kernels::cuda::matmul::{GemmDims, MatView};
use polylm_kernels::cuda::matmul_tc::{choose_tile, gemm_tc_with, CublasGemm, Epilogue, Tile};
use polylm_kernels::cuda::matmul_wgmma::{choose_hopper_tile, device_supported};
use polylm_kernels::cuda::{CudaDevice, CudaResult, DeviceBuf, FloatElem};

const TOKENS: usize = 8192;
const HIDDEN: usize = 2048;

/// A dense pseudo-random `rows × cols` bf16 matrix: the product of random `rows × 64` and
/// `64 × cols` factors (uploaded from the host), scaled to values of order 1.
fn random_matrix(dev: &Arc<CudaDevice>, rows: usize, cols: usize, seed: u64) -> CudaResult<DeviceBuf<bf16>> {
    const R: usize = 64;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bf16::from_f64((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
    };
    let f1: Vec<bf16> = (0..rows * R).map(|_| next()).collect();
    let f2: Vec<bf16> = (0..R * cols).map(|_| next()).collect();
    let (d1, d2) = (dev.upload(&f1)?, dev.upload(&f2)?);
    let mut out = dev.alloc::<bf16>(rows * cols)?;
    let dims = GemmDims { m: rows, n: cols, k: R, batch: 1, alpha: 0.25, beta: 0.0 };
    gemm_tc_with(
        None,
        dims,
        MatView::row_major(&d1, rows, R),
        MatView::row_major(&d2, R, cols),
        &mut out,
        Epilogue::None,
    )?;
    Ok(out)
}

struct Bench {
    dev: Arc<CudaDevice>,
    blas: Option<CublasGemm>,
    rows: String,
    /// The Hopper diagnostics table's rows.
    hopper_rows: String,
}

/// Milliseconds and TFLOP/s cells of one timing.
fn cells(result: &Result<f64, String>, flops: f64) -> (String, String) {
    match result {
        Ok(ms) => (format!("{ms:.3}"), format!("{:.1}", flops / ms / 1e9)),
        Err(e) => (format!("error: {e}"), "-".into()),
    }
}

/// cuBLAS's time over ours (1.00: as fast as cuBLAS).
fn ratio(ours: &Result<f64, String>, theirs: &Result<f64, String>) -> String {
    match (ours, theirs) {
        (Ok(o), Ok(t)) => format!("{:.2}", t / o),
        _ => "-".into(),
    }
}

impl Bench {
    /// Times our kernel with `tile`, storing nothing when `discard` (the main loop alone); the
    /// tile that ran is returned with the time.
    #[allow(clippy::too_many_arguments)]
    fn ours<O: FloatElem>(
        &self,
        tile: Tile,
        discard: bool,
        iters: usize,
        dims: GemmDims,
        a: MatView<'_, bf16>,
        b: MatView<'_, bf16>,
        c: &mut DeviceBuf<O>,
    ) -> (Result<f64, String>, String) {
        let mut used = None;
        let ms = self.dev.time_ms(iters, || {
            let epilogue = if discard { Epilogue::Discard } else { Epilogue::None };
            used = Some(gemm_tc_with(Some(tile), dims, a, b, c, epilogue)?);
            Ok(())
        });
        (ms.map_err(|e| e.to_string()), used.map_or("-".to_string(), |t| format!("{t:?}")))
    }

    /// Times our portable path, our Hopper path and cuBLAS on `C = A·B` and adds a table row.
    fn case<O: FloatElem>(
        &mut self,
        label: &str,
        dims: GemmDims,
        a: MatView<'_, bf16>,
        b: MatView<'_, bf16>,
        c: &mut DeviceBuf<O>,
    ) {
        let flops = 2.0 * (dims.m * dims.n * dims.k * dims.batch) as f64;
        // About 0.2 s of work per measurement at 500 TFLOP/s, 3 to 20 runs.
        let iters = ((1e14 / flops) as usize).clamp(3, 20);
        let sms = self.dev.multiprocessors();
        let portable_tile = choose_tile(sms, dims.m, dims.n, dims.batch);
        let (portable, portable_used) = self.ours(portable_tile, false, iters, dims, a, b, c);
        let hopper_tile = choose_hopper_tile(sms, dims.m, dims.n, dims.batch);
        let (hopper, hopper_used) = if device_supported(&self.dev) {
            self.ours(hopper_tile, false, iters, dims, a, b, c)
        } else {
            (Err("not sm_90".to_string()), "-".to_string())
        };
        let theirs = match &self.blas {
            Some(blas) => blas_time(&self.dev, blas, iters, dims, a, b, c),
            None => Err("cuBLAS not loaded".to_string()),
        };
        let shape = format!("{}×{}×{}", dims.m, dims.n, dims.k);
        let (p_ms, p_tf) = cells(&portable, flops);
        let (h_ms, h_tf) = cells(&hopper, flops);
        let (blas_ms, blas_tf) = cells(&theirs, flops);
        let (p_ratio, h_ratio) = (ratio(&portable, &theirs), ratio(&hopper, &theirs));
        let line = format!(
            "| {label} | {shape} | {} | {portable_used} | {p_ms} | {p_tf} | {hopper_used} | {h_ms} | {h_tf} | \
             {blas_ms} | {blas_tf} | {p_ratio} | {h_ratio} |",
            O::NAME
        );
        println!("{line}");
        let _ = writeln!(self.rows, "{line}");
        if device_supported(&self.dev) {
            self.hopper_diagnostics(label, hopper_tile, &hopper, iters, dims, (a, b), c);
        }
    }

    /// The Hopper diagnostics row of one shape: `chosen` (which ran in `chosen_ms`) against the
    /// other Hopper tile and against itself with nothing stored.
    #[allow(clippy::too_many_arguments)]
    fn hopper_diagnostics<O: FloatElem>(
        &mut self,
        label: &str,
        chosen: Tile,
        chosen_ms: &Result<f64, String>,
        iters: usize,
        dims: GemmDims,
        (a, b): (MatView<'_, bf16>, MatView<'_, bf16>),
        c: &mut DeviceBuf<O>,
    ) {
        let flops = 2.0 * (dims.m * dims.n * dims.k * dims.batch) as f64;
        let other = if chosen == Tile::Hopper128x256 { Tile::Hopper128x128 } else { Tile::Hopper128x256 };
        let (other_ms, _) = self.ours(other, false, iters, dims, a, b, c);
        let (bare_ms, _) = self.ours(chosen, true, iters, dims, a, b, c);
        let (c_ms, c_tf) = cells(chosen_ms, flops);
        let (o_ms, o_tf) = cells(&other_ms, flops);
        let (b_ms, b_tf) = cells(&bare_ms, flops);
        let store = match (chosen_ms, &bare_ms) {
            (Ok(with), Ok(without)) => format!("{:.0}%", 100.0 * (with - without) / with),
            _ => "-".into(),
        };
        let line = format!(
            "| {label} | {}×{}×{} | {chosen:?} | {c_ms} | {c_tf} | {other:?} | {o_ms} | {o_tf} | {b_ms} | {b_tf} | {store} |",
            dims.m, dims.n, dims.k
        );
        println!("{line}");
        let _ = writeln!(self.hopper_rows, "{line}");
    }
}

fn blas_time<O: FloatElem>(
    dev: &Arc<CudaDevice>,
    blas: &CublasGemm,
    iters: usize,
    dims: GemmDims,
    a: MatView<'_, bf16>,
    b: MatView<'_, bf16>,
    c: &mut DeviceBuf<O>,
) -> Result<f64, String> {
    dev.time_ms(iters, || blas.gemm(dims, a, b, c)).map_err(|e| e.to_string())
}

fn run(dev: &Arc<CudaDevice>) -> CudaResult<String> {
    let blas = match CublasGemm::new(dev) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("cuBLAS unavailable ({e}): only our kernel is timed");
            None
        }
    };
    let mut bench = Bench { dev: Arc::clone(dev), blas, rows: String::new(), hopper_rows: String::new() };
    let a = dev.arch();
    println!("device: {} (sm_{}{}), {} SMs", dev.name(), a.major, a.minor, dev.multiprocessors());
    let header =
        "| product | M×N×K | out | portable tile | portable ms | portable TFLOP/s | Hopper tile | Hopper ms \
                  | Hopper TFLOP/s | cuBLAS ms | cuBLAS TFLOP/s | portable/cuBLAS | Hopper/cuBLAS |\n\
                  |---|---|---|---|---|---|---|---|---|---|---|---|---|";
    println!("{header}");

    for s in [4096usize, 8192] {
        let x = random_matrix(dev, s, s, 1)?;
        let w = random_matrix(dev, s, s, 2)?;
        let mut y = dev.alloc::<bf16>(s * s)?;
        let dims = GemmDims { m: s, n: s, k: s, batch: 1, alpha: 1.0, beta: 0.0 };
        bench.case(
            &format!("square {s}³"),
            dims,
            MatView::row_major(&x, s, s),
            MatView::row_major(&w, s, s),
            &mut y,
        );
    }

    let weights = [
        ("QKV", HIDDEN, 3 * HIDDEN),
        ("MLP up", HIDDEN, 4 * HIDDEN),
        ("MLP down", 4 * HIDDEN, HIDDEN),
        ("LM head", HIDDEN, 256_000),
    ];
    for (name, k_in, n_out) in weights {
        let x = random_matrix(dev, TOKENS, k_in, 3)?;
        let w = random_matrix(dev, k_in, n_out, 4)?;
        let dy = random_matrix(dev, TOKENS, n_out, 5)?;
        let xv = MatView::row_major(&x, TOKENS, k_in);
        let wv = MatView::row_major(&w, k_in, n_out);
        let dyv = MatView::row_major(&dy, TOKENS, n_out);
        {
            // Forward: Y[T, out] = X[T, in] · W[in, out].
            let mut y = dev.alloc::<bf16>(TOKENS * n_out)?;
            let dims = GemmDims { m: TOKENS, n: n_out, k: k_in, batch: 1, alpha: 1.0, beta: 0.0 };
            bench.case(&format!("{name} forward X·W"), dims, xv, wv, &mut y);
        }
        {
            // Input gradient: dX[T, in] = dY[T, out] · Wᵀ.
            let mut dx = dev.alloc::<bf16>(TOKENS * k_in)?;
            let dims = GemmDims { m: TOKENS, n: k_in, k: n_out, batch: 1, alpha: 1.0, beta: 0.0 };
            bench.case(&format!("{name} dX = dY·Wᵀ"), dims, dyv, wv.t(), &mut dx);
        }
        {
            // Weight gradient: dW[in, out] = Xᵀ · dY, in f32.
            let mut dw = dev.alloc::<f32>(k_in * n_out)?;
            let dims = GemmDims { m: k_in, n: n_out, k: TOKENS, batch: 1, alpha: 1.0, beta: 0.0 };
            bench.case(&format!("{name} dW = Xᵀ·dY"), dims, xv.t(), dyv, &mut dw);
        }
    }
    let mut md = format!("device: {}\n\n{header}\n{}", dev.name(), bench.rows);
    if !bench.hopper_rows.is_empty() {
        let _ = write!(
            md,
            "\nThe Hopper path taken apart (no epilogue: the product computed, nothing stored; \
             store share: the time the stores add):\n\n\
             | product | M×N×K | tile | ms | TFLOP/s | other tile | ms | TFLOP/s | no epilogue ms | TFLOP/s | store share |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n{}",
            bench.hopper_rows
        );
    }
    Ok(md)
}

fn main() {
    common::gpu_bench_main("cuda_matmul", run);
}
