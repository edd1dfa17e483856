//! Products on every supported SIMD level against an f64 triple loop on the widened inputs.

use half::{bf16, f16};

use super::*;

/// xorshift64*: a tiny deterministic generator.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn vec<T: Elem>(&mut self, len: usize) -> Vec<T> {
        (0..len).map(|_| T::from_f32(self.f32())).collect()
    }
}

/// An `rows×cols` operand stored row-major, or column-major (then viewed through `t()`), with
/// some padding between rows/columns.
fn operand<T: Elem>(rng: &mut Rng, rows: usize, cols: usize, transposed: bool) -> (Vec<T>, usize, usize) {
    let pad = rng.below(3);
    if transposed {
        let ld = rows + pad;
        (rng.vec(ld * cols.max(1)), 1, ld)
    } else {
        let ld = cols + pad;
        (rng.vec(ld * rows.max(1)), ld, 1)
    }
}

fn view<T: Elem>(
    data: &[T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
    transposed: bool,
) -> MatRef<'_, T> {
    if transposed {
        // Build the stored (cols×rows, row-major) view and transpose it.
        MatRef::new(data, cols, rows, cs, rs).unwrap().t()
    } else {
        MatRef::new(data, rows, cols, rs, cs).unwrap()
    }
}

#[allow(clippy::too_many_arguments)]
fn reference<A: Elem, B: Elem>(
    alpha: f32,
    a: &MatRef<'_, A>,
    b: &MatRef<'_, B>,
    beta: f32,
    c: &[f32],
    ldc: usize,
) -> Vec<f64> {
    let (m, n, k) = (a.rows(), b.cols(), a.cols());
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                s += a.at(i, p).to_f32() as f64 * b.at(p, j).to_f32() as f64;
            }
            let old = if beta == 0.0 { 0.0 } else { beta as f64 * c[i * ldc + j] as f64 };
            out[i * n + j] = alpha as f64 * s + old;
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn check_case<A: Elem, B: Elem>(
    rng: &mut Rng,
    level: SimdLevel,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    alpha: f32,
    beta: f32,
) {
    let (adata, ars, acs) = operand::<A>(rng, m, k, ta);
    let (bdata, brs, bcs) = operand::<B>(rng, k, n, tb);
    let a = view(&adata, m, k, ars, acs, ta);
    let b = view(&bdata, k, n, brs, bcs, tb);
    let ldc = n + rng.below(4);
    let mut c: Vec<f32> = rng.vec(ldc * m);
    if beta == 0.0 {
        for (i, v) in c.iter_mut().enumerate() {
            if i % 3 != 1 {
                *v = f32::NAN;
            }
        }
    }
    let want = reference(alpha, &a, &b, beta, &c, ldc);
    let before = c.clone();
    gemm_with(level, alpha, a, b, beta, MatMut::new(&mut c, m, n, ldc).unwrap());
    let tol = 1e-5 * (k.max(1) as f64).sqrt() * (alpha.abs() as f64 + beta.abs() as f64 + 1.0);
    for i in 0..m {
        for j in 0..ldc {
            let got = c[i * ldc + j];
            if j >= n {
                assert!(got.to_bits() == before[i * ldc + j].to_bits(), "padding of C was written");
                continue;
            }
            let w = want[i * n + j];
            assert!(
                (got as f64 - w).abs() <= tol * (1.0 + w.abs()),
                "{level:?} m={m} n={n} k={k} ta={ta} tb={tb} alpha={alpha} beta={beta}: C[{i},{j}] = {got}, want {w}"
            );
        }
    }
}

fn random_shapes(rng: &mut Rng, count: usize, max: usize) -> Vec<(usize, usize, usize)> {
    let mut shapes = vec![(1, 1, 1), (1, 37, 5), (29, 1, 64), (13, 33, 1), (14, 32, 256), (28, 64, 257)];
    for _ in 0..count {
        shapes.push((1 + rng.below(max), 1 + rng.below(max), 1 + rng.below(max)));
    }
    shapes
}

#[test]
fn f32_all_levels_small_shapes() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let shapes = random_shapes(&mut rng, 40, 150);
    for level in SimdLevel::all_supported() {
        for (idx, &(m, n, k)) in shapes.iter().enumerate() {
            let (ta, tb) = (idx % 2 == 1, (idx / 2) % 2 == 1);
            let (alpha, beta) = match idx % 4 {
                0 => (1.0, 0.0),
                1 => (0.75, 1.0),
                2 => (-1.5, 0.5),
                _ => (2.0, 0.0),
            };
            check_case::<f32, f32>(&mut rng, level, m, n, k, ta, tb, alpha, beta);
        }
    }
}

#[test]
fn f32_all_levels_cross_block_boundaries() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let shapes = [(300, 530, 700), (613, 290, 260), (2, 1100, 513), (1000, 3, 300), (97, 700, 257)];
    for level in SimdLevel::all_supported() {
        for (idx, &(m, n, k)) in shapes.iter().enumerate() {
            let (ta, tb) = (idx % 2 == 0, idx % 3 == 0);
            check_case::<f32, f32>(
                &mut rng,
                level,
                m,
                n,
                k,
                ta,
                tb,
                1.25,
                if idx % 2 == 0 { 0.0 } else { -0.5 },
            );
        }
    }
}

#[test]
fn all_transpose_combinations() {
    let mut rng = Rng(42);
    for level in SimdLevel::all_supported() {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for &(m, n, k) in &[(31, 45, 70), (1, 50, 33), (50, 1, 33), (64, 64, 64)] {
                check_case::<f32, f32>(&mut rng, level, m, n, k, ta, tb, 1.0, 0.0);
                check_case::<f32, f32>(&mut rng, level, m, n, k, ta, tb, -0.5, 2.0);
            }
        }
    }
}

#[test]
fn half_precision_inputs() {
    let mut rng = Rng(7);
    for level in SimdLevel::all_supported() {
        for &(m, n, k, ta, tb) in
            &[(37, 70, 129, false, false), (64, 33, 80, true, false), (20, 90, 300, false, true)]
        {
            check_case::<bf16, bf16>(&mut rng, level, m, n, k, ta, tb, 1.0, 0.0);
            check_case::<f16, f16>(&mut rng, level, m, n, k, ta, tb, 0.5, 1.0);
            check_case::<bf16, f32>(&mut rng, level, m, n, k, ta, tb, 1.0, 0.25);
            check_case::<f32, f16>(&mut rng, level, m, n, k, tb, ta, -1.0, 0.0);
        }
        check_case::<bf16, f16>(&mut rng, level, 1, 200, 50, false, true, 1.0, 0.0);
    }
}

#[test]
fn k_zero_scales_c() {
    let mut c = vec![f32::NAN, 2.0, 3.0, 4.0];
    let a: [f32; 0] = [];
    let av = MatRef::new(&a, 2, 0, 0, 1).unwrap();
    let bv = MatRef::new(&a, 0, 2, 2, 1).unwrap();
    gemm(1.0, av, bv, 0.0, MatMut::row_major(&mut c, 2, 2).unwrap());
    assert_eq!(c, vec![0.0; 4]);
    let mut c = vec![1.0, 2.0, 3.0, 4.0];
    gemm(1.0, av, bv, 0.5, MatMut::row_major(&mut c, 2, 2).unwrap());
    assert_eq!(c, vec![0.5, 1.0, 1.5, 2.0]);
}

#[test]
fn threaded_matches_serial() {
    // Large enough to be parallel; compare a 1-thread and a 2-thread pool bit for bit (each
    // tile is computed by one thread in the same order, so results are identical).
    let mut rng = Rng(99);
    let (m, n, k) = (200, 300, 260);
    let a: Vec<f32> = rng.vec(m * k);
    let b: Vec<f32> = rng.vec(k * n);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut c = vec![0f32; m * n];
        pool.install(|| {
            gemm(
                1.0,
                MatRef::row_major(&a, m, k).unwrap(),
                MatRef::row_major(&b, k, n).unwrap(),
                0.0,
                MatMut::row_major(&mut c, m, n).unwrap(),
            )
        });
        c
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn f64_matches_reference() {
    let mut rng = Rng(5);
    for &(m, n, k, ta, tb) in &[
        (1, 1, 1, false, false),
        (7, 300, 9, true, false),
        (33, 17, 65, false, true),
        (70, 270, 40, true, true),
    ] {
        let (ad, ars, acs) = operand::<f32>(&mut rng, m, k, ta);
        let (bd, brs, bcs) = operand::<f32>(&mut rng, k, n, tb);
        let ad: Vec<f64> = ad.iter().map(|&v| v as f64).collect();
        let bd: Vec<f64> = bd.iter().map(|&v| v as f64).collect();
        let a = if ta {
            MatRef::new(&ad, k, m, acs, ars).unwrap().t()
        } else {
            MatRef::new(&ad, m, k, ars, acs).unwrap()
        };
        let b = if tb {
            MatRef::new(&bd, n, k, bcs, brs).unwrap().t()
        } else {
            MatRef::new(&bd, k, n, brs, bcs).unwrap()
        };
        for &(alpha, beta) in &[(1.0, 0.0), (0.5, -2.0)] {
            let ldc = n + 2;
            let mut c: Vec<f64> =
                (0..m * ldc).map(|i| if beta == 0.0 { f64::NAN } else { (i % 7) as f64 * 0.1 }).collect();
            let mut want = c.clone();
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k).map(|p| a.at(i, p) * b.at(p, j)).sum();
                    want[i * ldc + j] = alpha * s + if beta == 0.0 { 0.0 } else { beta * c[i * ldc + j] };
                }
            }
            gemm_f64(alpha, a, b, beta, MatMut::new(&mut c, m, n, ldc).unwrap());
            for i in 0..m {
                for j in 0..n {
                    let (g, w) = (c[i * ldc + j], want[i * ldc + j]);
                    assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "f64 C[{i},{j}] = {g}, want {w}");
                }
            }
        }
    }
}

#[test]
fn unsupported_level_falls_back() {
    // Asking for the top level must work on any CPU (lowered when unsupported).
    let mut rng = Rng(3);
    check_case::<f32, f32>(&mut rng, SimdLevel::Avx512, 20, 40, 30, false, false, 1.0, 0.0);
}

#[test]
fn batched_matches_single_products() {
    let mut rng = Rng(11);
    let (m, n, k, count) = (9, 21, 17, 5);
    let a: Vec<f32> = rng.vec(count * m * k);
    // B stored as n×k per element and used transposed; element 1 and 3 share B (broadcast).
    let b: Vec<bf16> = rng.vec(3 * n * k);
    let ldc = n + 3;
    let stride = m * ldc + 2;
    let mut c: Vec<f32> = rng.vec(count * stride);
    let mut want = c.clone();
    let a_off: Vec<usize> = (0..count).map(|i| i * m * k).collect();
    let b_off = vec![0, n * k, 2 * n * k, n * k, 0];
    let at = MatRef::row_major(&a, m, k).unwrap();
    let bt = MatRef::row_major(&b, n, k).unwrap().t();
    for i in 0..count {
        let av = MatRef::row_major(&a[a_off[i]..], m, k).unwrap();
        let bv = MatRef::row_major(&b[b_off[i]..], n, k).unwrap().t();
        gemm(0.5, av, bv, 2.0, MatMut::new(&mut want[i * stride..], m, n, ldc).unwrap());
    }
    for level in SimdLevel::all_supported() {
        let mut got = c.clone();
        let out = BatchMut { data: &mut got, count, ldc, batch_stride: stride };
        gemm_batched(level, 0.5, at, &a_off, bt, &b_off, 2.0, out).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }
    // Errors: offsets past the end, overlapping outputs, count mismatch.
    let out = BatchMut { data: &mut c, count, ldc, batch_stride: stride };
    let bad = vec![0, 0, 0, 0, count * m * k];
    assert_eq!(
        gemm_batched(SimdLevel::Portable, 1.0, at, &bad, bt, &b_off, 0.0, out),
        Err(BatchError::OutOfBounds { operand: 'A', index: 4 })
    );
    let out = BatchMut { data: &mut c, count, ldc, batch_stride: ldc };
    assert!(matches!(
        gemm_batched(SimdLevel::Portable, 1.0, at, &a_off, bt, &b_off, 0.0, out),
        Err(BatchError::OutOfBounds { operand: 'C', .. })
    ));
    let out = BatchMut { data: &mut c, count: 4, ldc, batch_stride: stride };
    assert_eq!(
        gemm_batched(SimdLevel::Portable, 1.0, at, &a_off, bt, &b_off, 0.0, out),
        Err(BatchError::CountMismatch)
    );
}

/// The portable kernel with tiny blocks, so that small products cross every block boundary
/// (several `k`, `m` and `n` blocks, more tasks than threads).
struct TinyBlocks;

impl microkernel::MicroKernel for TinyBlocks {
    const MR: usize = <microkernel::portable::Portable as microkernel::MicroKernel>::MR;
    const NR: usize = <microkernel::portable::Portable as microkernel::MicroKernel>::NR;
    const BLOCKS: blocking::BlockSizes = blocking::BlockSizes { kc: 7, mc: 8, nc: 16 };

    unsafe fn run(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, alpha: f32, beta: f32) {
        // SAFETY: forwarded contract.
        unsafe {
            <microkernel::portable::Portable as microkernel::MicroKernel>::run(kc, a, b, c, ldc, alpha, beta)
        }
    }
}

#[test]
fn driver_crosses_all_block_boundaries() {
    let mut rng = Rng(77);
    for &(m, n, k, ta, tb, beta) in &[(37, 45, 30, false, false, 0.0), (130, 70, 129, true, true, 0.5)] {
        let (ad, ars, acs) = operand::<f32>(&mut rng, m, k, ta);
        let (bd, brs, bcs) = operand::<bf16>(&mut rng, k, n, tb);
        let a = view(&ad, m, k, ars, acs, ta);
        let b = view(&bd, k, n, brs, bcs, tb);
        let ldc = n + 1;
        let c: Vec<f32> = rng.vec(m * ldc);
        let want = reference(1.5, &a, &b, beta, &c, ldc);
        for threads in [1, 2] {
            let mut got = c.clone();
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut cv = MatMut::new(&mut got, m, n, ldc).unwrap();
                gemm_packed::<TinyBlocks, f32, bf16>(1.5, &a, &b, beta, &mut cv)
            });
            for i in 0..m {
                for j in 0..n {
                    let (g, w) = (got[i * ldc + j] as f64, want[i * n + j]);
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "C[{i},{j}] = {g}, want {w}");
                }
            }
        }
    }
}
