//! The optimizer on the CPU: several AdamW steps against a plain f64 transcription of PyTorch's
//! AdamW (random shapes, values, weight decays, learning rates, clip factors, missing
//! gradients), f32 master weights under bf16/f16/f64 parameters, the global gradient norm,
//! checkpoint state round trips that continue bit-identically, and misuse as errors.

mod common;

use common::{assert_close, nonzero};
use half::{bf16, f16};
use polylm_engine::{global_grad_norm, AdamW, AdamWHyper, DType, Error, Rng, Tensor};
use proptest::prelude::*;

/// PyTorch's `torch.optim.AdamW` (non-amsgrad) in f64. The hyper-parameters, learning rate,
/// weight decays and clip factor are first rounded to f32, the precision the optimizer is
/// documented to take them in (otherwise β2 = 0.999 alone would differ in `1 − β2` by 3e-5).
struct Reference {
    p: Vec<Vec<f64>>,
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    wd: Vec<f64>,
    hyper: AdamWHyper,
    t: u64,
}

impl Reference {
    fn new(p: Vec<Vec<f64>>, wd: Vec<f64>, hyper: AdamWHyper) -> Reference {
        let zeros: Vec<Vec<f64>> = p.iter().map(|x| vec![0.0; x.len()]).collect();
        Reference { m: zeros.clone(), v: zeros, p, wd, hyper, t: 0 }
    }

    /// One step; `None` gradients are zeros.
    fn step(&mut self, grads: &[Option<Vec<f64>>], lr: f64, scale: f64) {
        self.t += 1;
        let r = |x: f64| f64::from(x as f32);
        let (beta1, beta2, eps) = (r(self.hyper.beta1), r(self.hyper.beta2), r(self.hyper.eps));
        let (lr, scale) = (r(lr), r(scale));
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        for (i, g) in grads.iter().enumerate() {
            for j in 0..self.p[i].len() {
                let g = g.as_ref().map_or(0.0, |g| g[j]) * scale;
                let p = self.p[i][j] * (1.0 - lr * r(self.wd[i]));
                let m = beta1 * self.m[i][j] + (1.0 - beta1) * g;
                let v = beta2 * self.v[i][j] + (1.0 - beta2) * g * g;
                let denom = v.sqrt() / bc2.sqrt() + eps;
                self.p[i][j] = p - lr / bc1 * m / denom;
                self.m[i][j] = m;
                self.v[i][j] = v;
            }
        }
    }
}

/// Shapes from proptest: `(rows, cols, two_d)`: 2-D `[rows, cols]` or 1-D `[rows·cols]`.
fn shapes_of(spec: &[(usize, usize, bool)]) -> Vec<Vec<usize>> {
    spec.iter().map(|&(r, c, two_d)| if two_d { vec![r, c] } else { vec![r * c] }).collect()
}

fn param(values: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_slice(values, shape).unwrap().to_dtype(dtype).unwrap().requires_grad()
}

/// Gives each parameter with `Some(g)` the gradient `g` (rounded to its dtype) by back-propagating
/// `Σ p ⊙ g`, and returns the gradients the parameters actually hold, widened.
fn set_grads(params: &[Tensor], grads: &[Option<Vec<f64>>]) -> Vec<Option<Vec<f64>>> {
    for (p, g) in params.iter().zip(grads) {
        if let Some(g) = g {
            let gt = Tensor::from_slice(g, p.shape()).unwrap().to_dtype(p.dtype()).unwrap();
            p.mul(&gt).unwrap().sum_all().unwrap().backward().unwrap();
        }
    }
    params.iter().map(|p| p.grad().map(|g| g.to_vec_f64())).collect()
}

/// Random gradients for one step: about one in five parameters gets none.
fn random_grads(rng: &mut Rng, shapes: &[Vec<usize>]) -> Vec<Option<Vec<f64>>> {
    shapes.iter().map(|s| (rng.below(5) != 0).then(|| nonzero(rng, s.iter().product(), 0.05, 3.0))).collect()
}

/// The f32 value `x` rounded to `dtype`, widened.
fn rounded_to(x: f32, dtype: DType) -> f64 {
    match dtype {
        DType::F32 | DType::F64 => f64::from(x),
        DType::BF16 => bf16::from_f32(x).to_f64(),
        DType::F16 => f16::from_f32(x).to_f64(),
    }
}

fn random_hyper(rng: &mut Rng) -> AdamWHyper {
    AdamWHyper {
        beta1: 0.8 + 0.15 * rng.uniform(),
        beta2: 0.9 + 0.099 * rng.uniform(),
        eps: 1e-8 * (1.0 + 99.0 * rng.uniform()),
    }
}

fn refs(params: &mut [Tensor]) -> Vec<&mut Tensor> {
    params.iter_mut().collect()
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_vec_f64().iter().map(|x| x.to_bits()).collect()
}

const DTYPES: [DType; 4] = [DType::F32, DType::BF16, DType::F16, DType::F64];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 64, ..ProptestConfig::default() })]

    /// Several steps on parameters of one dtype against the f64 reference: the master
    /// weights and moments follow it to f32 precision, and every parameter is exactly its
    /// master weights rounded to its dtype, as a fresh leaf.
    #[test]
    fn adamw_steps_follow_pytorch_reference(
        spec in prop::collection::vec((1usize..13, 1usize..13, any::<bool>()), 1..5),
        dtype_index in 0usize..4,
        steps in 1usize..7,
        seed: u64,
    ) {
        let dtype = DTYPES[dtype_index];
        let mut rng = Rng::new(seed);
        let shapes = shapes_of(&spec);
        let hyper = random_hyper(&mut rng);
        // Decay for 2-D parameters only, as the trainer does, at a random strength.
        let wd: Vec<f64> = shapes.iter().map(|s| if s.len() == 2 { 0.01 + 0.2 * rng.uniform() } else { 0.0 }).collect();
        let mut params: Vec<Tensor> =
            shapes.iter().map(|s| param(&nonzero(&mut rng, s.iter().product(), 0.1, 2.0), s, dtype)).collect();
        // The master weights start as the parameters' values in f32.
        let start: Vec<Vec<f64>> = params
            .iter()
            .map(|p| p.to_vec_f64().iter().map(|&x| f64::from(x as f32)).collect())
            .collect();
        let mut reference = Reference::new(start, wd.clone(), hyper);
        let mut opt = AdamW::new(&params.iter().collect::<Vec<_>>(), &wd, hyper).unwrap();
        prop_assert_eq!(opt.steps(), 0);
        for step in 1..=steps {
            let grads = set_grads(&params, &random_grads(&mut rng, &shapes));
            let lr = 1e-4 + 1e-2 * rng.uniform();
            let scale = 0.05 + 0.9 * rng.uniform();
            opt.step(&mut refs(&mut params), lr, scale).unwrap();
            reference.step(&grads, lr, scale);
            prop_assert_eq!(opt.steps(), step as u64);
            let state = opt.state();
            for (i, p) in params.iter().enumerate() {
                let what = format!("step {step}, param {i} {:?} {dtype}", p.shape());
                prop_assert!(p.requires_grad_flag() && p.is_leaf() && p.grad().is_none(), "{}: fresh leaf", what);
                prop_assert_eq!(p.dtype(), dtype);
                let [master, m, v] = &state[i];
                prop_assert_eq!(master.dtype(), DType::F32);
                let master = master.to_vec::<f32>().unwrap();
                let master64: Vec<f64> = master.iter().map(|&x| f64::from(x)).collect();
                assert_close(&format!("{what}: master"), &master64, &reference.p[i], 1e-5, 1e-7);
                let gmax = grads[i].as_ref().map_or(0.0, |g| g.iter().fold(0.0f64, |a, x| a.max(x.abs())));
                assert_close(&format!("{what}: m"), &m.to_vec_f64(), &reference.m[i], 1e-5, 1e-6 * (gmax + 1.0));
                assert_close(&format!("{what}: v"), &v.to_vec_f64(), &reference.v[i], 1e-5, 1e-9);
                let want: Vec<f64> = master.iter().map(|&x| rounded_to(x, dtype)).collect();
                prop_assert_eq!(p.to_vec_f64(), want, "{}: parameter = master rounded to its dtype", what);
            }
        }
    }

    /// The norm against the f64 sum over every gradient of every dtype (missing ones add 0).
    #[test]
    fn global_grad_norm_matches_f64_reference(
        spec in prop::collection::vec((1usize..40, 1usize..40, any::<bool>(), 0usize..4), 1..6),
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let mut params = Vec::new();
        let mut want = 0.0f64;
        for &(r, c, has_grad, dtype_index) in &spec {
            let p = param(&nonzero(&mut rng, r * c, 0.1, 2.0), &[r, c], DTYPES[dtype_index]);
            if has_grad {
                let g = set_grads(std::slice::from_ref(&p), &[Some(nonzero(&mut rng, r * c, 1e-3, 5.0))]);
                want += g[0].as_ref().unwrap().iter().map(|x| x * x).sum::<f64>();
            }
            params.push(p);
        }
        let got = global_grad_norm(&params.iter().collect::<Vec<_>>()).unwrap();
        let want = want.sqrt();
        prop_assert!((got - want).abs() <= 1e-12 * want, "norm {} vs {}", got, want);
    }

    /// A checkpoint after `k` steps, moved to the CPU and loaded into a new optimizer, continues
    /// bit-identically to the optimizer that never stopped; the snapshot itself does not change
    /// when the original optimizer keeps stepping.
    #[test]
    fn state_round_trip_continues_bit_identically(
        spec in prop::collection::vec((1usize..9, 1usize..9, any::<bool>()), 1..4),
        dtype_index in 0usize..3,
        before in 1usize..4,
        after in 1usize..4,
        seed: u64,
    ) {
        let dtype = DTYPES[dtype_index];
        let mut rng = Rng::new(seed);
        let shapes = shapes_of(&spec);
        let hyper = random_hyper(&mut rng);
        let wd: Vec<f64> = shapes.iter().map(|_| 0.3 * rng.uniform()).collect();
        let mut params: Vec<Tensor> =
            shapes.iter().map(|s| param(&nonzero(&mut rng, s.iter().product(), 0.1, 2.0), s, dtype)).collect();
        let mut opt = AdamW::new(&params.iter().collect::<Vec<_>>(), &wd, hyper).unwrap();
        for _ in 0..before {
            set_grads(&params, &random_grads(&mut rng, &shapes));
            opt.step(&mut refs(&mut params), 1e-3 + 1e-2 * rng.uniform(), 0.1 + 0.9 * rng.uniform()).unwrap();
        }
        let snapshot: Vec<[Tensor; 3]> = opt
            .state()
            .iter()
            .map(|s| s.clone().map(|t| t.to_device(polylm_engine::Device::Cpu).unwrap()))
            .collect();
        let snapshot_bits: Vec<Vec<u64>> = snapshot.iter().flatten().map(bits).collect();
        let mut resumed_params: Vec<Tensor> = params.iter().map(|p| p.detach().requires_grad()).collect();
        let mut resumed = AdamW::from_state(
            &resumed_params.iter().collect::<Vec<_>>(),
            opt.weight_decays(),
            opt.hyper(),
            opt.steps(),
            snapshot.clone(),
        )
        .unwrap();
        prop_assert_eq!(resumed.steps(), before as u64);
        for _ in 0..after {
            let grads = random_grads(&mut rng, &shapes);
            let (lr, scale) = (1e-3 + 1e-2 * rng.uniform(), 0.1 + 0.9 * rng.uniform());
            set_grads(&params, &grads);
            set_grads(&resumed_params, &grads);
            opt.step(&mut refs(&mut params), lr, scale).unwrap();
            resumed.step(&mut refs(&mut resumed_params), lr, scale).unwrap();
        }
        prop_assert_eq!(resumed.steps(), opt.steps());
        for (a, b) in params.iter().zip(&resumed_params) {
            prop_assert_eq!(bits(a), bits(b));
        }
        for (a, b) in opt.state().iter().flatten().zip(resumed.state().iter().flatten()) {
            prop_assert_eq!(bits(a), bits(b));
        }
        let after_bits: Vec<Vec<u64>> = snapshot.iter().flatten().map(bits).collect();
        prop_assert_eq!(after_bits, snapshot_bits, "the snapshot stays as it was taken");
    }

    /// State of the wrong shape, dtype or count is an error, not a panic.
    #[test]
    fn from_state_rejects_mismatched_state(
        rows in 1usize..9,
        cols in 1usize..9,
        extra in 1usize..4,
        which in 0usize..3,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let p = param(&nonzero(&mut rng, rows * cols, 0.1, 2.0), &[rows, cols], DType::F32);
        let good = || -> [Tensor; 3] {
            [0, 1, 2].map(|_| Tensor::from_vec(nonzero(&mut Rng::new(seed ^ 1), rows * cols, 0.1, 1.0), &[rows, cols]).unwrap().to_dtype(DType::F32).unwrap())
        };
        let hyper = AdamWHyper::default();
        prop_assert!(AdamW::from_state(&[&p], &[0.1], hyper, 3, vec![good()]).is_ok());

        let mut wrong_shape = good();
        wrong_shape[which] = Tensor::from_vec(nonzero(&mut rng, rows * (cols + extra), 0.1, 1.0), &[rows, cols + extra])
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let err = AdamW::from_state(&[&p], &[0.1], hyper, 3, vec![wrong_shape]).unwrap_err();
        prop_assert!(matches!(err, Error::BadShape { .. }), "{:?}", err);

        let mut wrong_dtype = good();
        wrong_dtype[which] = wrong_dtype[which].to_dtype(DType::BF16).unwrap();
        let err = AdamW::from_state(&[&p], &[0.1], hyper, 3, vec![wrong_dtype]).unwrap_err();
        prop_assert!(matches!(err, Error::InvalidArgument { .. }), "{:?}", err);

        let err = AdamW::from_state(&[&p], &[0.1], hyper, 3, vec![good(), good()]).unwrap_err();
        prop_assert!(matches!(err, Error::InvalidArgument { .. }), "{:?}", err);
    }

    /// One NaN or infinity anywhere among the gradients makes the norm non-finite.
    #[test]
    fn non_finite_gradient_gives_non_finite_norm(
        n in 1usize..200,
        at in 0usize..200,
        bad_index in 0usize..3,
        dtype_index in 0usize..4,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let bad = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY][bad_index];
        let dtype = DTYPES[dtype_index];
        let p = param(&nonzero(&mut rng, n, 0.1, 2.0), &[n], dtype);
        let q = param(&nonzero(&mut rng, 7, 0.1, 2.0), &[7], DType::F32);
        let mut g = nonzero(&mut rng, n, 0.1, 2.0);
        g[at % n] = bad;
        set_grads(&[p.clone(), q.clone()], &[Some(g), Some(nonzero(&mut rng, 7, 0.1, 2.0))]);
        let norm = global_grad_norm(&[&q, &p]).unwrap();
        prop_assert!(!norm.is_finite(), "norm {}", norm);
        if bad_index == 0 {
            prop_assert!(norm.is_nan(), "a NaN gradient gives a NaN norm, got {}", norm);
        }
    }
}

/// The same inputs give bit-identical parameters and state, step after step.
#[test]
fn steps_are_deterministic() {
    let mut rng = Rng::new(7);
    let shapes = vec![vec![37, 300], vec![300], vec![5, 3]];
    let values: Vec<Vec<f64>> =
        shapes.iter().map(|s| nonzero(&mut rng, s.iter().product(), 0.1, 2.0)).collect();
    let grads: Vec<Vec<Option<Vec<f64>>>> = (0..3).map(|_| random_grads(&mut rng, &shapes)).collect();
    let run = || {
        let mut params: Vec<Tensor> =
            values.iter().zip(&shapes).map(|(v, s)| param(v, s, DType::BF16)).collect();
        let mut opt =
            AdamW::new(&params.iter().collect::<Vec<_>>(), &[0.1, 0.0, 0.05], AdamWHyper::default()).unwrap();
        let mut norms = Vec::new();
        for g in &grads {
            set_grads(&params, g);
            let norm = global_grad_norm(&params.iter().collect::<Vec<_>>()).unwrap();
            norms.push(norm.to_bits());
            opt.step(&mut refs(&mut params), 3e-3, (1.0 / norm).min(1.0)).unwrap();
        }
        let out: Vec<Vec<u64>> = params.iter().chain(opt.state().iter().flatten()).map(bits).collect();
        (norms, out)
    };
    assert_eq!(run(), run());
}

/// Misuse of `new` and `step` is reported as an error, and a failed step changes nothing.
#[test]
fn misuse_is_an_error() {
    let mut rng = Rng::new(3);
    let mut a = param(&nonzero(&mut rng, 6, 0.1, 2.0), &[2, 3], DType::F32);
    let mut b = param(&nonzero(&mut rng, 4, 0.1, 2.0), &[4], DType::F32);
    let hyper = AdamWHyper::default();
    assert!(AdamW::new(&[&a, &b], &[0.1], hyper).is_err(), "one weight decay per parameter");
    assert!(AdamW::new(&[&a], &[-0.1], hyper).is_err(), "negative weight decay");
    assert!(AdamW::new(&[&a], &[0.1], AdamWHyper { beta1: 1.0, ..hyper }).is_err(), "beta1 = 1");
    assert!(AdamW::new(&[&a], &[0.1], AdamWHyper { beta2: f64::NAN, ..hyper }).is_err(), "beta2 NaN");
    assert!(AdamW::new(&[&a], &[0.1], AdamWHyper { eps: -1e-8, ..hyper }).is_err(), "negative eps");

    let mut opt = AdamW::new(&[&a, &b], &[0.1, 0.0], hyper).unwrap();
    let before = a.to_vec_f64();
    assert!(opt.step(&mut [&mut a], 1e-3, 1.0).is_err(), "too few parameters");
    assert!(opt.step(&mut [&mut b, &mut a], 1e-3, 1.0).is_err(), "parameters out of order");
    assert!(opt.step(&mut [&mut a, &mut b], f64::NAN, 1.0).is_err(), "NaN lr");
    assert!(opt.step(&mut [&mut a, &mut b], 1e-3, f64::INFINITY).is_err(), "infinite grad_scale");
    // A gradient of the wrong shape (from a broadcasting view) cannot be given by backward,
    // so check a parameter replaced by one of another shape instead.
    let mut c = param(&nonzero(&mut rng, 6, 0.1, 2.0), &[3, 2], DType::F32);
    assert!(opt.step(&mut [&mut c, &mut b], 1e-3, 1.0).is_err(), "a parameter changed shape");
    assert_eq!(opt.steps(), 0, "failed steps do not count");
    assert_eq!(a.to_vec_f64(), before, "failed steps leave the parameters alone");
    opt.step(&mut [&mut a, &mut b], 1e-3, 1.0).unwrap();
    assert_eq!(opt.steps(), 1);
}
