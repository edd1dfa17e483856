//! Shared helpers of the integration tests: the plain f64 reference of every op
//! ([`reference`]), random data, tolerance checks and the finite-difference gradient check.

#![allow(dead_code)]

pub mod gpu;
pub mod reference;

use polylm_engine::{DType, Rng, Tensor};

/// `n` values uniform in `[-scale, scale)`, away from 0 and 1 by construction of the range.
pub fn random_values(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) * scale).collect()
}

/// `n` values with magnitudes in `[lo, hi)` and random signs (never 0).
pub fn nonzero(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let x = lo + (hi - lo) * rng.uniform();
            if rng.below(2) == 0 {
                x
            } else {
                -x
            }
        })
        .collect()
}

/// An f64 tensor of random values.
pub fn random_tensor(rng: &mut Rng, shape: &[usize], scale: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(random_values(rng, n, scale), shape).expect("shape matches")
}

/// Asserts `|got − want| ≤ atol + rtol·|want|` element by element, naming the first failure.
#[track_caller]
pub fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs();
        assert!(
            ok,
            "{what}: element {i}: got {g}, want {w} (|diff| {:.3e}, rtol {rtol:e}, atol {atol:e})",
            (g - w).abs()
        );
    }
}

/// Largest absolute value, for scaling tolerances.
pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Checks the gradients of `f` at `inputs` (f64 tensors) against central finite differences.
///
/// The scalar checked is `Σ f(inputs) ⊙ R` for a fixed random `R`, so every output element
/// contributes with a different weight. At most `max_probes` elements of each input are
/// perturbed (chosen at random), with step `h`.
///
/// The backward pass runs twice: from no gradient, and again into random gradients the leaves
/// already hold (as a weight holds its earlier micro-batches'), which rules that accumulate
/// into an earlier gradient in place take; the second must add exactly the first's.
#[track_caller]
pub fn gradcheck(
    what: &str,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> polylm_engine::Result<Tensor>,
    rng: &mut Rng,
    max_probes: usize,
) {
    let h = 1e-6;
    let leaves: Vec<Tensor> = inputs.iter().map(|t| t.detach().requires_grad()).collect();
    let out = f(&leaves).expect("forward");
    let weights = random_tensor(rng, out.shape(), 1.0);
    let loss = out.mul(&weights).expect("mul").sum_all().expect("sum");
    loss.backward().expect("backward");
    let first: Vec<Vec<f64>> =
        leaves.iter().map(|l| l.grad().expect("leaf has a gradient").to_vec_f64()).collect();
    let priors: Vec<Vec<f64>> = leaves
        .iter()
        .map(|l| {
            let prior = random_tensor(rng, l.shape(), 1.0).to_dtype(l.dtype()).expect("cast");
            // The leaf's gradient is then the only holder of the prior's values.
            l.set_grad(&prior).expect("set_grad");
            prior.to_vec_f64()
        })
        .collect();
    let out = f(&leaves).expect("forward");
    out.mul(&weights)
        .expect("mul")
        .sum_all()
        .expect("sum")
        .backward()
        .expect("backward into earlier gradients");
    for (idx, leaf) in leaves.iter().enumerate() {
        let got = leaf.grad().expect("leaf has a gradient").to_vec_f64();
        let added: Vec<f64> = got.iter().zip(&priors[idx]).map(|(g, p)| g - p).collect();
        assert_close(
            &format!("{what}: input{idx}'s gradient added to an earlier one"),
            &added,
            &first[idx],
            1e-9,
            1e-9,
        );
    }
    let eval = |xs: &[Tensor]| -> f64 {
        let _g = polylm_engine::no_grad();
        f(xs)
            .expect("forward")
            .mul(&weights)
            .expect("mul")
            .sum_all()
            .expect("sum")
            .to_scalar()
            .expect("scalar")
    };
    for (idx, leaf) in leaves.iter().enumerate() {
        let analytic = &first[idx];
        let base = leaf.to_vec_f64();
        let n = base.len();
        let probes: Vec<usize> = if n <= max_probes {
            (0..n).collect()
        } else {
            (0..max_probes).map(|_| rng.below(n as u64) as usize).collect()
        };
        for &p in &probes {
            let mut plus = base.clone();
            plus[p] += h;
            let mut minus = base.clone();
            minus[p] -= h;
            let with = |v: Vec<f64>| -> Vec<Tensor> {
                let mut xs: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
                xs[idx] = Tensor::from_vec(v, leaf.shape()).expect("shape");
                xs
            };
            let numeric = (eval(&with(plus)) - eval(&with(minus))) / (2.0 * h);
            let a = analytic[p];
            let tol = 1e-5 * (1.0 + numeric.abs().max(a.abs()));
            assert!(
                (a - numeric).abs() <= tol,
                "{what}: d/d input{idx}[{p}] (shape {:?}): backward {a}, finite difference {numeric}",
                leaf.shape()
            );
        }
    }
}

/// Rounds f64 values through bf16, so bf16 and f32 runs see identical inputs.
pub fn round_bf16(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| half::bf16::from_f64(x).to_f64()).collect()
}

/// A tensor of `dtype` holding `values`.
pub fn tensor_of(values: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape).expect("shape").to_dtype(dtype).expect("cast")
}
