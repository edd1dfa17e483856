//! bf16 and f16 paths against f32 on identical (bf16-rounded) inputs, with the tolerances of
//! the narrow type: storage is narrow, arithmetic is f32, so results agree to a few ulps of
//! the output type.

mod common;

use common::{random_values, round_bf16, tensor_of};
use polylm_engine::{DType, Rng, Tensor};
use proptest::prelude::*;

/// Compares `f` on f32 and on `dtype` copies of the same inputs; `rtol` of the output scale.
#[track_caller]
fn check_narrow(
    what: &str,
    inputs: &[(Vec<f64>, Vec<usize>)],
    f: &dyn Fn(&[Tensor]) -> polylm_engine::Result<Tensor>,
) {
    for (dtype, rtol) in [(DType::BF16, 1.6e-2), (DType::F16, 2e-3)] {
        let wide: Vec<Tensor> = inputs.iter().map(|(v, s)| tensor_of(v, s, DType::F32)).collect();
        let narrow: Vec<Tensor> = inputs.iter().map(|(v, s)| tensor_of(v, s, dtype)).collect();
        let want = f(&wide).expect("f32").to_vec_f64();
        let out = f(&narrow).expect("narrow");
        assert_eq!(out.dtype(), dtype, "{what}: result keeps the input dtype");
        let got = out.to_vec_f64();
        let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= rtol * (w.abs() + 0.1 * scale),
                "{what} ({dtype}): element {i}: {g} vs f32 {w}"
            );
        }
    }
}

fn rounded(rng: &mut Rng, shape: &[usize], scale: f64) -> (Vec<f64>, Vec<usize>) {
    (round_bf16(&random_values(rng, shape.iter().product(), scale)), shape.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn narrow_matmul(m in 1usize..40, k in 1usize..70, n in 1usize..40, seed: u64) {
        let mut rng = Rng::new(seed);
        let (a, b) = (rounded(&mut rng, &[m, k], 1.0), rounded(&mut rng, &[n, k], 1.0));
        // B is used transposed, through a view.
        check_narrow("matmul", &[a, b], &|t| t[0].matmul(&t[1].t()?));
    }

    #[test]
    fn narrow_fused_ops(rows in 1usize..9, cols in 1usize..70, seed: u64) {
        let mut rng = Rng::new(seed);
        let x = rounded(&mut rng, &[rows, cols], 3.0);
        let w = rounded(&mut rng, &[cols], 1.0);
        let b = rounded(&mut rng, &[cols], 0.5);
        check_narrow("layer_norm", &[x.clone(), w, b.clone()], &|t| t[0].layer_norm(&t[1], &t[2], 1e-5));
        check_narrow("bias_gelu", &[x.clone(), b], &|t| t[0].bias_gelu(&t[1]));
        check_narrow("softmax", std::slice::from_ref(&x), &|t| t[0].softmax());
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(cols as u64) as u32).collect();
        check_narrow("cross_entropy", &[x], &|t| t[0].cross_entropy(&targets, None));
    }

    #[test]
    fn narrow_attention(heads in 1usize..4, seq in 1usize..40, d in 1usize..17, seed: u64) {
        let mut rng = Rng::new(seed);
        let shape = [heads, seq, d];
        let (q, k, v) = (rounded(&mut rng, &shape, 1.0), rounded(&mut rng, &shape, 1.0), rounded(&mut rng, &shape, 1.0));
        check_narrow("attention", &[q, k, v], &|t| Tensor::causal_attention(&t[0], &t[1], &t[2]));
    }
}

#[test]
fn narrow_gradients_track_f32() {
    // Backward through a small bf16 chain agrees with the f32 chain within bf16 tolerance.
    let mut rng = Rng::new(11);
    let x = round_bf16(&random_values(&mut rng, 6 * 24, 1.0));
    let w = round_bf16(&random_values(&mut rng, 24 * 16, 0.5));
    let mut grads = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        let xt = tensor_of(&x, &[6, 24], dtype);
        let wt = tensor_of(&w, &[24, 16], dtype).requires_grad();
        let loss = xt.matmul(&wt).unwrap().gelu().unwrap().cross_entropy(&[1, 2, 3, 4, 5, 6], None).unwrap();
        loss.backward().unwrap();
        let g = wt.grad().unwrap();
        assert_eq!(g.dtype(), dtype);
        grads.push(g.to_vec_f64());
    }
    let scale = grads[0].iter().fold(0f64, |m, v| m.max(v.abs()));
    for (a, b) in grads[0].iter().zip(&grads[1]) {
        assert!((a - b).abs() <= 2e-2 * (a.abs() + 0.1 * scale), "{a} vs {b}");
    }
}
