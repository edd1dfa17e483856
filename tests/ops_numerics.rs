//! Property tests of every op: forward against the plain f64 reference (`common::reference`),
//! in f64 and in f32; backward against central finite differences in f64; and invariants
//! (softmax rows sum to one, layernorm rows have zero mean and unit variance).
//!
//! Shapes are random and include size-1 axes and sizes that are not multiples of any SIMD
//! width or tile; values are random (never all zeros or ones).

mod common;

use common::{assert_close, gradcheck, max_abs, random_tensor, random_values, reference as r};
use polylm_engine::{DType, Rng, Tensor};
use proptest::prelude::*;

const F64_TOL: f64 = 1e-10;
const F32_TOL: f64 = 2e-5;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, max_shrink_iters: 64, ..ProptestConfig::default() }
}

/// Runs `f` on f64 and f32 copies of `inputs` and compares both with `want`.
#[track_caller]
fn check_forward(
    what: &str,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> polylm_engine::Result<Tensor>,
    want: &[f64],
) {
    let scale = max_abs(want).max(1.0);
    let got64 = f(inputs).expect("f64 forward").to_vec_f64();
    assert_close(&format!("{what} (f64)"), &got64, want, F64_TOL, F64_TOL * scale);
    let inputs32: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(DType::F32).expect("cast")).collect();
    let out32 = f(&inputs32).expect("f32 forward");
    assert_eq!(out32.dtype(), DType::F32, "{what}: f32 inputs give an f32 result");
    assert_close(&format!("{what} (f32)"), &out32.to_vec_f64(), want, F32_TOL, F32_TOL * scale);
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn matmul_2d_with_transposed_operands(m in 1usize..37, k in 1usize..37, n in 1usize..37, ta: bool, tb: bool, seed: u64) {
        let mut rng = Rng::new(seed);
        let av = random_values(&mut rng, m * k, 1.0);
        let bv = random_values(&mut rng, k * n, 1.0);
        let want = r::matmul(&av, &bv, m, k, n);
        // Store A (and B) transposed in memory and take a transposed view, when asked.
        let a = if ta { Tensor::from_vec(r::transpose(&av, m, k), &[k, m]).unwrap().t().unwrap() } else { Tensor::from_vec(av, &[m, k]).unwrap() };
        let b = if tb { Tensor::from_vec(r::transpose(&bv, k, n), &[n, k]).unwrap().t().unwrap() } else { Tensor::from_vec(bv, &[k, n]).unwrap() };
        prop_assert_eq!(a.is_contiguous(), !ta || m == 1 || k == 1);
        let f = |x: &[Tensor]| x[0].matmul(&x[1]);
        check_forward("matmul", &[a.clone(), b.clone()], &f, &want);
        gradcheck("matmul", &[a, b], &f, &mut rng, 12);
    }

    #[test]
    fn matmul_batched_broadcast(batch in 1usize..4, m in 1usize..13, k in 1usize..13, n in 1usize..13, rhs_kind in 0usize..3, seed: u64) {
        let mut rng = Rng::new(seed);
        let a = random_tensor(&mut rng, &[batch, m, k], 1.0);
        let b_shape: Vec<usize> = match rhs_kind { 0 => vec![k, n], 1 => vec![1, k, n], _ => vec![batch, k, n] };
        let b = random_tensor(&mut rng, &b_shape, 1.0);
        let (av, bv) = (a.to_vec_f64(), b.to_vec_f64());
        let mut want = Vec::new();
        for i in 0..batch {
            let bi = if rhs_kind == 2 { &bv[i * k * n..(i + 1) * k * n] } else { &bv[..] };
            want.extend(r::matmul(&av[i * m * k..(i + 1) * m * k], bi, m, k, n));
        }
        let f = |x: &[Tensor]| x[0].matmul(&x[1]);
        check_forward("batched matmul", &[a.clone(), b.clone()], &f, &want);
        gradcheck("batched matmul", &[a, b], &f, &mut rng, 10);
    }

    #[test]
    fn matmul_by_a_transposed_weight(batch in 0usize..3, m in 1usize..13, k in 1usize..13, n in 1usize..13, strided: bool, seed: u64) {
        let mut rng = Rng::new(seed);
        // lhs [m, k] or [batch, m, k]; rhs [n, k], also as a transposed view of a [k, n] matrix.
        let lhs_shape = if batch == 0 { vec![m, k] } else { vec![batch, m, k] };
        let a = random_tensor(&mut rng, &lhs_shape, 1.0);
        let wv = random_values(&mut rng, n * k, 1.0);
        let w = if strided {
            Tensor::from_vec(r::transpose(&wv, n, k), &[k, n]).unwrap().t().unwrap()
        } else {
            Tensor::from_vec(wv.clone(), &[n, k]).unwrap()
        };
        let wt = r::transpose(&wv, n, k);
        let av = a.to_vec_f64();
        let want: Vec<f64> = av.chunks(m * k).flat_map(|am| r::matmul(am, &wt, m, k, n)).collect();
        let f = |x: &[Tensor]| x[0].matmul_t(&x[1]);
        check_forward("matmul_t", &[a.clone(), w.clone()], &f, &want);
        gradcheck("matmul_t", &[a.clone(), w], &f, &mut rng, 12);
        // A right operand that is not 2-D is an error.
        prop_assert!(a.matmul_t(&random_tensor(&mut rng, &[1, n, k], 1.0)).is_err());
    }

    #[test]
    fn binary_ops_broadcast(shape in prop::collection::vec(1usize..6, 1..4), mask in prop::collection::vec(any::<bool>(), 4), drop_leading: bool, op in 0usize..4, seed: u64) {
        let mut rng = Rng::new(seed);
        // b's shape: some axes of a's set to 1, and maybe the leading axis dropped.
        let mut b_shape: Vec<usize> = shape.iter().zip(&mask).map(|(&d, &m)| if m { 1 } else { d }).collect();
        if drop_leading && b_shape.len() > 1 { b_shape.remove(0); }
        let (swap, a_shape) = (seed % 2 == 0, shape.clone());
        let (sa, sb) = if swap { (b_shape.clone(), a_shape) } else { (a_shape, b_shape.clone()) };
        let a = random_tensor(&mut rng, &sa, 2.0);
        // Keep divisors away from zero: magnitudes in [0.5, 2].
        let bvals: Vec<f64> = random_values(&mut rng, sb.iter().product(), 1.0).iter().map(|v| v.signum() * (0.5 + 1.5 * v.abs())).collect();
        let b = Tensor::from_vec(bvals, &sb).unwrap();
        let func: fn(f64, f64) -> f64 = [|x, y| x + y, |x, y| x - y, |x, y| x * y, |x, y| x / y][op];
        let (want, want_shape) = r::broadcast(&a.to_vec_f64(), &sa, &b.to_vec_f64(), &sb, func);
        let f = move |x: &[Tensor]| match op { 0 => x[0].add(&x[1]), 1 => x[0].sub(&x[1]), 2 => x[0].mul(&x[1]), _ => x[0].div(&x[1]) };
        let out = f(&[a.clone(), b.clone()]).unwrap();
        prop_assert_eq!(out.shape(), &want_shape[..]);
        check_forward("binary", &[a.clone(), b.clone()], &f, &want);
        gradcheck("binary", &[a, b], &f, &mut rng, 12);
    }

    #[test]
    fn scalar_ops(shape in prop::collection::vec(1usize..7, 1..4), scale in -3.0f64..3.0, shift in -3.0f64..3.0, p in 0.5f64..3.0, seed: u64) {
        let mut rng = Rng::new(seed);
        let n: usize = shape.iter().product();
        // Positive bases for the power.
        let x = Tensor::from_vec(random_values(&mut rng, n, 1.0).iter().map(|v| 0.5 + v.abs()).collect(), &shape).unwrap();
        let xv = x.to_vec_f64();
        let want: Vec<f64> = xv.iter().map(|v| (scale * v + shift).powf(1.0) * 1.0).collect();
        let f_aff = move |t: &[Tensor]| t[0].affine(scale, shift);
        check_forward("affine", std::slice::from_ref(&x), &f_aff, &want);
        gradcheck("affine", std::slice::from_ref(&x), &f_aff, &mut rng, 8);
        let want_pow: Vec<f64> = xv.iter().map(|v| v.powf(p)).collect();
        let f_pow = move |t: &[Tensor]| t[0].powf(p);
        check_forward("powf", std::slice::from_ref(&x), &f_pow, &want_pow);
        gradcheck("powf", std::slice::from_ref(&x), &f_pow, &mut rng, 8);
        let f_mix = move |t: &[Tensor]| t[0].neg()?.add_scalar(shift)?.mul_scalar(scale)?.div_scalar(2.0)?.sub_scalar(1.0);
        let want_mix: Vec<f64> = xv.iter().map(|v| (-v + shift) * scale / 2.0 - 1.0).collect();
        check_forward("scalar chain", std::slice::from_ref(&x), &f_mix, &want_mix);
        gradcheck("scalar chain", &[x], &f_mix, &mut rng, 8);
    }

    #[test]
    fn sum_and_mean_over_axes(shape in prop::collection::vec(1usize..7, 1..5), axes_mask in prop::collection::vec(any::<bool>(), 5), keepdim: bool, seed: u64) {
        let mut rng = Rng::new(seed);
        let x = random_tensor(&mut rng, &shape, 2.0);
        let axes: Vec<usize> = (0..shape.len()).filter(|&i| axes_mask[i]).collect();
        let (want, keep_shape) = r::sum_axes(&x.to_vec_f64(), &shape, &axes);
        let count: usize = axes.iter().map(|&a| shape[a]).product();
        let axes2 = axes.clone();
        let f_sum = move |t: &[Tensor]| t[0].sum(&axes2, keepdim);
        let out = f_sum(std::slice::from_ref(&x)).unwrap();
        let want_shape: Vec<usize> = if keepdim { keep_shape } else { shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect() };
        prop_assert_eq!(out.shape(), &want_shape[..]);
        check_forward("sum", std::slice::from_ref(&x), &f_sum, &want);
        gradcheck("sum", std::slice::from_ref(&x), &f_sum, &mut rng, 10);
        let axes3 = axes.clone();
        let f_mean = move |t: &[Tensor]| t[0].mean(&axes3, keepdim);
        let want_mean: Vec<f64> = want.iter().map(|v| v / count as f64).collect();
        check_forward("mean", std::slice::from_ref(&x), &f_mean, &want_mean);
        gradcheck("mean", &[x], &f_mean, &mut rng, 10);
    }

    #[test]
    fn embedding_gather_and_scatter_add(rows in 1usize..20, dim in 1usize..19, n in 1usize..30, seed: u64) {
        let mut rng = Rng::new(seed);
        let table = random_tensor(&mut rng, &[rows, dim], 1.0);
        // Repeated ids make the scatter-add accumulate.
        let ids: Vec<u32> = (0..n).map(|_| rng.below(rows as u64) as u32).collect();
        let want = r::embedding(&table.to_vec_f64(), dim, &ids);
        let ids2 = ids.clone();
        let f = move |t: &[Tensor]| t[0].embedding(&ids2, &[1, ids2.len()]);
        check_forward("embedding", std::slice::from_ref(&table), &f, &want);
        gradcheck("embedding", &[table], &f, &mut rng, 20);
    }

    #[test]
    fn layer_norm(rows in 1usize..9, cols in 1usize..40, eps in prop::sample::select(vec![1e-5f64, 1e-3]), seed: u64) {
        let mut rng = Rng::new(seed);
        let x = random_tensor(&mut rng, &[rows, cols], 3.0).add_scalar(0.7).unwrap();
        let w = random_tensor(&mut rng, &[cols], 1.5);
        let b = random_tensor(&mut rng, &[cols], 1.0);
        let (xv, wv) = (x.to_vec_f64(), w.to_vec_f64());
        let want = r::layer_norm(&xv, &wv, &b.to_vec_f64(), cols, eps);
        let f = move |t: &[Tensor]| t[0].layer_norm(&t[1], &t[2], eps);
        let scale = max_abs(&want).max(1.0);
        let got64 = f(&[x.clone(), w.clone(), b.clone()]).unwrap().to_vec_f64();
        assert_close("layer_norm (f64)", &got64, &want, F64_TOL, F64_TOL * scale);
        // In f32 a row's rounding (of its inputs and of x − mean, a few ulps of max|x|) is
        // multiplied by 1/√(var + eps), large when the row's values lie close together.
        let amplified = xv
            .chunks(cols)
            .map(|row| {
                let mean = row.iter().sum::<f64>() / cols as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
                max_abs(row) / (var + eps).sqrt()
            })
            .fold(0.0, f64::max);
        let f32_atol = F32_TOL * scale + 8.0 * f64::from(f32::EPSILON) * amplified * max_abs(&wv);
        let in32: Vec<Tensor> = [&x, &w, &b].iter().map(|t| t.to_dtype(DType::F32).unwrap()).collect();
        assert_close("layer_norm (f32)", &f(&in32).unwrap().to_vec_f64(), &want, F32_TOL, f32_atol);
        if cols > 1 {
            gradcheck("layer_norm", &[x, w, b], &f, &mut rng, 16);
        }
    }

    #[test]
    fn add_layer_norm(rows in 1usize..7, cols in 2usize..30, seed: u64) {
        let mut rng = Rng::new(seed);
        let x = random_tensor(&mut rng, &[rows, cols], 2.0).add_scalar(0.3).unwrap();
        let delta = random_tensor(&mut rng, &[rows, cols], 1.5);
        let w = random_tensor(&mut rng, &[cols], 1.5);
        let b = random_tensor(&mut rng, &[cols], 1.0);
        let sum: Vec<f64> = x.to_vec_f64().iter().zip(delta.to_vec_f64()).map(|(a, d)| a + d).collect();
        let normed = r::layer_norm(&sum, &w.to_vec_f64(), &b.to_vec_f64(), cols, 1e-5);
        // Both outputs, as a block uses them: the stream goes on, the norm feeds the branch.
        let f = |t: &[Tensor]| {
            let (s, n) = t[0].add_layer_norm(&t[1], &t[2], &t[3], 1e-5)?;
            Tensor::concat(&[s, n], 0)
        };
        let inputs = [x, delta, w, b];
        check_forward("add_layer_norm", &inputs, &f, &[sum, normed].concat());
        gradcheck("add_layer_norm", &inputs, &f, &mut rng, 16);
        // A stream that also feeds a later op (the gradient reaching it from two consumers).
        let g = |t: &[Tensor]| {
            let (s, n) = t[0].add_layer_norm(&t[1], &t[2], &t[3], 1e-5)?;
            s.mul(&n)
        };
        gradcheck("add_layer_norm (stream reused)", &inputs, &g, &mut rng, 16);
        let short = random_tensor(&mut rng, &[rows, cols + 1], 1.0);
        prop_assert!(inputs[0].add_layer_norm(&short, &inputs[2], &inputs[3], 1e-5).is_err());
    }

    #[test]
    fn layer_norm_rows_have_zero_mean_unit_variance(rows in 1usize..9, cols in 2usize..200, seed: u64) {
        let mut rng = Rng::new(seed);
        let x = random_tensor(&mut rng, &[rows, cols], 5.0).add_scalar(3.0).unwrap().to_dtype(DType::F32).unwrap();
        let w = Tensor::ones(&[cols], DType::F32).unwrap();
        let b = Tensor::zeros(&[cols], DType::F32).unwrap();
        let eps = 1e-5;
        let y = x.layer_norm(&w, &b, eps).unwrap().to_vec_f64();
        let stats = |row: &[f64]| {
            let mean = row.iter().sum::<f64>() / cols as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
            (mean, var)
        };
        for (out_row, in_row) in y.chunks(cols).zip(x.to_vec_f64().chunks(cols)) {
            let (mean, var) = stats(out_row);
            // With eps in the denominator the output variance is var_x / (var_x + eps), which
            // falls visibly below one when a row's inputs happen to lie close together.
            let (in_mean, in_var) = stats(in_row);
            let want_var = in_var / (in_var + eps);
            // The output mean is the f32 rounding of the row mean (a few ulps of |mean|) times
            // 1/√(var + eps), which is large when the row's values lie close together.
            let mean_tol = 1e-5 + 4.0 * f64::from(f32::EPSILON) * in_mean.abs() / (in_var + eps).sqrt();
            prop_assert!(mean.abs() < mean_tol, "mean {} (tolerance {})", mean, mean_tol);
            prop_assert!((var - want_var).abs() < 1e-3 * want_var.max(1e-3), "variance {} want {}", var, want_var);
        }
    }

    #[test]
    fn bias_gelu_and_gelu(rows in 1usize..7, cols in 1usize..45, seed: u64) {
        let mut rng = Rng::new(seed);
        let x = random_tensor(&mut rng, &[rows, cols], 4.0);
        let bias = random_tensor(&mut rng, &[cols], 1.0);
        let (xv, bv) = (x.to_vec_f64(), bias.to_vec_f64());
        let want: Vec<f64> = xv.iter().enumerate().map(|(i, v)| r::gelu(v + bv[i % cols])).collect();
        let f = |t: &[Tensor]| t[0].bias_gelu(&t[1]);
        check_forward("bias_gelu", &[x.clone(), bias.clone()], &f, &want);
        gradcheck("bias_gelu", &[x.clone(), bias], &f, &mut rng, 16);
        let want_plain: Vec<f64> = xv.iter().map(|&v| r::gelu(v)).collect();
        let g = |t: &[Tensor]| t[0].gelu();
        check_forward("gelu", std::slice::from_ref(&x), &g, &want_plain);
        gradcheck("gelu", &[x], &g, &mut rng, 16);
    }

    #[test]
    fn linear_layers_match_the_reference(batch in 1usize..3, rows in 1usize..5, k in 1usize..9, n in 1usize..9, seed: u64) {
        let mut rng = Rng::new(seed);
        let x = random_tensor(&mut rng, &[batch, rows, k], 1.5);
        let w = random_tensor(&mut rng, &[k, n], 1.0);
        let b = random_tensor(&mut rng, &[n], 1.0);
        let (xv, wv, bv) = (x.to_vec_f64(), w.to_vec_f64(), b.to_vec_f64());
        let pre: Vec<f64> = (0..batch * rows * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                (0..k).map(|j| xv[r * k + j] * wv[j * n + c]).sum::<f64>() + bv[c]
            })
            .collect();
        let lin = |t: &[Tensor]| t[0].linear(&t[1], &t[2]);
        check_forward("linear", &[x.clone(), w.clone(), b.clone()], &lin, &pre);
        gradcheck("linear", &[x.clone(), w.clone(), b.clone()], &lin, &mut rng, 16);
        let act: Vec<f64> = pre.iter().map(|&v| r::gelu(v)).collect();
        let lin_gelu = |t: &[Tensor]| t[0].linear_gelu(&t[1], &t[2]);
        check_forward("linear_gelu", &[x.clone(), w.clone(), b.clone()], &lin_gelu, &act);
        gradcheck("linear_gelu", &[x.clone(), w.clone(), b.clone()], &lin_gelu, &mut rng, 16);
        // A bias of the wrong width, or a weight whose rows are not x's last axis, is an error.
        prop_assert!(x.linear(&w, &random_tensor(&mut rng, &[n + 1], 1.0)).is_err());
        prop_assert!(x.linear_gelu(&random_tensor(&mut rng, &[k + 1, n], 1.0), &b).is_err());
    }

    #[test]
    fn softmax_matches_reference_and_sums_to_one(shape in prop::collection::vec(1usize..9, 1..4), big in prop::sample::select(vec![1.0f64, 30.0]), seed: u64) {
        let mut rng = Rng::new(seed);
        let x = random_tensor(&mut rng, &shape, big);
        let cols = *shape.last().unwrap();
        let want = r::softmax(&x.to_vec_f64(), cols);
        let f = |t: &[Tensor]| t[0].softmax();
        check_forward("softmax", std::slice::from_ref(&x), &f, &want);
        let y32 = x.to_dtype(DType::F32).unwrap().softmax().unwrap().to_vec_f64();
        for row in y32.chunks(cols) {
            prop_assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5);
            prop_assert!(row.iter().all(|&p| (0.0..=1.0).contains(&p)));
        }
        if big == 1.0 {
            gradcheck("softmax", &[x], &f, &mut rng, 16);
        }
    }

    #[test]
    fn causal_attention(batch in 1usize..3, heads in 1usize..3, seq in 1usize..24, d in 1usize..10, seed: u64) {
        let mut rng = Rng::new(seed);
        let shape = [batch, heads, seq, d];
        let q = random_tensor(&mut rng, &shape, 1.5);
        let k = random_tensor(&mut rng, &shape, 1.5);
        let v = random_tensor(&mut rng, &shape, 1.0);
        let want = r::causal_attention(&q.to_vec_f64(), &k.to_vec_f64(), &v.to_vec_f64(), batch * heads, seq, d);
        let f = |t: &[Tensor]| Tensor::causal_attention(&t[0], &t[1], &t[2]);
        check_forward("attention", &[q.clone(), k.clone(), v.clone()], &f, &want);
        gradcheck("attention", &[q.clone(), k.clone(), v.clone()], &f, &mut rng, 16);
        // Packed [3, ...]: the same values, and one gradient for the stack.
        let stack = |t: &Tensor| t.reshape(&[&[1], t.shape()].concat()).unwrap();
        let qkv = Tensor::concat(&[stack(&q), stack(&k), stack(&v)], 0).unwrap();
        let packed = |t: &[Tensor]| Tensor::causal_attention_packed(&t[0]);
        check_forward("attention (packed)", std::slice::from_ref(&qkv), &packed, &want);
        gradcheck("attention (packed)", std::slice::from_ref(&qkv), &packed, &mut rng, 16);
        // As the model passes it: a permuted view of a [batch, seq, 3, heads, d] projection.
        let projection = qkv.permute(&[1, 3, 0, 2, 4]).unwrap().contiguous().unwrap();
        let model = |t: &[Tensor]| Tensor::causal_attention_packed(&t[0].permute(&[2, 0, 3, 1, 4])?);
        check_forward("attention (packed view)", std::slice::from_ref(&projection), &model, &want);
        gradcheck("attention (packed view)", &[projection], &model, &mut rng, 16);
        // q's first axis is the batch (1 or 2), not the stack of three.
        prop_assert!(Tensor::causal_attention_packed(&q).is_err(), "a [B, ...] tensor is not [3, ...]");
    }

    #[test]
    fn cross_entropy_with_ignore_index(rows in 1usize..12, vocab in 1usize..60, ignore_some: bool, seed: u64) {
        let mut rng = Rng::new(seed);
        let logits = random_tensor(&mut rng, &[rows, vocab], 4.0);
        let ignore = 9999u32;
        let targets: Vec<u32> = (0..rows).map(|i| if ignore_some && i % 3 == 1 { ignore } else { rng.below(vocab as u64) as u32 }).collect();
        let want = r::cross_entropy(&logits.to_vec_f64(), &targets, vocab, Some(ignore));
        let t2 = targets.clone();
        let f = move |t: &[Tensor]| t[0].cross_entropy(&t2, Some(ignore));
        check_forward("cross_entropy", std::slice::from_ref(&logits), &f, &[want]);
        gradcheck("cross_entropy", &[logits], &f, &mut rng, 20);
    }

    #[test]
    fn views_permute_narrow_concat(shape in prop::collection::vec(1usize..6, 3..4), seed: u64) {
        let mut rng = Rng::new(seed);
        let x = random_tensor(&mut rng, &shape, 1.0);
        let order = [2usize, 0, 1];
        let want = r::permute(&x.to_vec_f64(), &shape, &order);
        // A permuted view feeds an op that reads it strided, then is made contiguous.
        let f = move |t: &[Tensor]| t[0].permute(&order)?.mul_scalar(1.5)?.contiguous();
        let want15: Vec<f64> = want.iter().map(|v| v * 1.5).collect();
        check_forward("permute", std::slice::from_ref(&x), &f, &want15);
        gradcheck("permute", std::slice::from_ref(&x), &f, &mut rng, 10);
        let len = shape[1].div_ceil(2);
        let g = move |t: &[Tensor]| {
            let a = t[0].narrow(1, 0, len)?;
            let b = t[0].narrow(1, shape[1] - len, len)?.mul_scalar(2.0)?;
            Tensor::concat(&[a, b], 1)
        };
        let out = g(std::slice::from_ref(&x)).unwrap();
        prop_assert_eq!(out.shape()[1], 2 * len);
        gradcheck("narrow+concat", &[x], &g, &mut rng, 10);
    }
}

#[test]
fn cross_entropy_crosses_vocabulary_chunks() {
    // A vocabulary larger than one chunk (4096), with the target in the second chunk and the
    // row maximum in the first, so the running max must rescale the running sum.
    let mut rng = Rng::new(7);
    let (rows, vocab) = (3, 9001);
    let mut v = random_values(&mut rng, rows * vocab, 3.0);
    v[17] = 25.0;
    v[vocab + 8000] = 30.0;
    let logits = Tensor::from_vec(v.clone(), &[rows, vocab]).unwrap();
    let targets = [5000u32, 8000, 4095];
    let want = r::cross_entropy(&v, &targets, vocab, None);
    let f = |t: &[Tensor]| t[0].cross_entropy(&targets, None);
    check_forward("cross_entropy (chunks)", std::slice::from_ref(&logits), &f, &[want]);
    gradcheck("cross_entropy (chunks)", &[logits], &f, &mut rng, 30);
}

#[test]
fn casts_round_trip_and_pass_gradients() {
    let mut rng = Rng::new(3);
    let x = random_tensor(&mut rng, &[5, 7], 10.0);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let y = x.to_dtype(dtype).unwrap();
        assert_eq!(y.dtype(), dtype);
        let back = y.to_dtype(DType::F64).unwrap().to_vec_f64();
        let tol = match dtype {
            DType::F32 => 1e-7,
            DType::F16 => 1e-3,
            _ => 8e-3,
        };
        assert_close(&format!("round trip via {dtype}"), &back, &x.to_vec_f64(), tol, 0.0);
    }
    let f = |t: &[Tensor]| t[0].to_dtype(DType::F32)?.to_dtype(DType::F64)?.mul_scalar(2.0);
    // The cast is the identity for the gradient; finite differences through f32 are too
    // coarse at h = 1e-6, so check the analytic gradient directly.
    let leaf = x.detach().requires_grad();
    f(std::slice::from_ref(&leaf)).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close("cast gradient", &leaf.grad().unwrap().to_vec_f64(), &vec![2.0; 35], 0.0, 0.0);
}
