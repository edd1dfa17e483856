//! The optimizer on the GPU (the fused norm and AdamW kernels) against the same optimizer on
//! the CPU (itself checked against an f64 PyTorch reference in `tests/optim.rs`): f32, bf16 and
//! mixed-dtype parameters, sizes that span several kernel blocks, missing gradients, checkpoint
//! state round trips through the CPU, and non-finite gradients.
//!
//! Without a GPU every test prints that it skipped and passes. On the GPU machine these run
//! from `scripts/gpu-check.sh`.

mod common;

use common::gpu::gpu;

use common::{assert_close, nonzero};
use half::bf16;
use polylm_engine::{global_grad_norm, AdamW, AdamWHyper, DType, Device, Rng, Tensor};

/// Gives each parameter with `Some(g)` the gradient `g` (rounded to its dtype, on its device)
/// by back-propagating `Σ p ⊙ g`.
fn set_grads(params: &[Tensor], grads: &[Option<Vec<f64>>]) {
    for (p, g) in params.iter().zip(grads) {
        if let Some(g) = g {
            let gt = Tensor::from_slice(g, p.shape())
                .unwrap()
                .to_dtype(p.dtype())
                .unwrap()
                .to_device(p.device())
                .unwrap();
            p.mul(&gt).unwrap().sum_all().unwrap().backward().unwrap();
        }
    }
}

fn refs(params: &mut [Tensor]) -> Vec<&mut Tensor> {
    params.iter_mut().collect()
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_vec_f64().iter().map(|x| x.to_bits()).collect()
}

/// Shapes that cover a vector tail (sizes not a multiple of 4), tensors spanning several
/// blocks of both kernels (2048 elements per AdamW block, 16 KiB per norm block), and 1-D
/// parameters.
const SHAPES: [&[usize]; 5] = [&[64, 130], &[130], &[3, 5], &[40_001], &[257, 129]];

/// Steps an optimizer on the CPU and one on the GPU through the same gradients; parameter `i`
/// has dtype `dtypes[i % len]`.
fn gpu_matches_cpu(dev: Device, dtypes: &[DType], seed: u64) {
    let mut rng = Rng::new(seed);
    let hyper =
        AdamWHyper { beta1: 0.85 + 0.1 * rng.uniform(), beta2: 0.9 + 0.09 * rng.uniform(), eps: 1e-8 };
    let dtype_of = |i: usize| dtypes[i % dtypes.len()];
    let mut cpu: Vec<Tensor> = SHAPES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = nonzero(&mut rng, s.iter().product(), 0.1, 2.0);
            Tensor::from_vec(v, s).unwrap().to_dtype(dtype_of(i)).unwrap().requires_grad()
        })
        .collect();
    let mut on_gpu: Vec<Tensor> =
        cpu.iter().map(|p| p.detach().to_device(dev).unwrap().requires_grad()).collect();
    let wd: Vec<f64> =
        SHAPES.iter().map(|s| if s.len() == 2 { 0.05 + 0.1 * rng.uniform() } else { 0.0 }).collect();
    let mut opt_cpu = AdamW::new(&cpu.iter().collect::<Vec<_>>(), &wd, hyper).unwrap();
    let mut opt_gpu = AdamW::new(&on_gpu.iter().collect::<Vec<_>>(), &wd, hyper).unwrap();
    for step in 1..=4 {
        let grads: Vec<Option<Vec<f64>>> = SHAPES
            .iter()
            .enumerate()
            // Parameter 2 skips every other step: a missing gradient counts as zeros.
            .map(|(i, s)| (i != 2 || step % 2 == 0).then(|| nonzero(&mut rng, s.iter().product(), 0.01, 3.0)))
            .collect();
        set_grads(&cpu, &grads);
        set_grads(&on_gpu, &grads);
        let norm_cpu = global_grad_norm(&cpu.iter().collect::<Vec<_>>()).unwrap();
        let norm_gpu = global_grad_norm(&on_gpu.iter().collect::<Vec<_>>()).unwrap();
        let what = format!("{dtypes:?} step {step}");
        assert!(
            (norm_gpu - norm_cpu).abs() <= 1e-5 * norm_cpu,
            "{what}: norm {norm_gpu} on the GPU, {norm_cpu} on the CPU"
        );
        // Clip to half the norm, so the scale is neither 1 nor the same every step.
        let scale = (0.5 * norm_cpu / (norm_cpu + 1e-6)).min(1.0);
        let lr = 1e-3 * (1.0 + rng.uniform());
        opt_cpu.step(&mut refs(&mut cpu), lr, scale).unwrap();
        opt_gpu.step(&mut refs(&mut on_gpu), lr, scale).unwrap();
        let (state_cpu, state_gpu) = (opt_cpu.state(), opt_gpu.state());
        for i in 0..SHAPES.len() {
            let (c, g) = (&cpu[i], &on_gpu[i]);
            let what = format!("{what}, param {i} {:?} {}", c.shape(), c.dtype());
            assert_eq!(g.device(), dev, "{what}: the parameter stays on the GPU");
            assert_eq!(g.dtype(), c.dtype(), "{what}: the parameter keeps its dtype");
            assert!(g.requires_grad_flag() && g.grad().is_none(), "{what}: a fresh leaf");
            for (k, name) in ["master", "m", "v"].iter().enumerate() {
                assert_eq!(state_gpu[i][k].device(), dev, "{what}: {name} lives on the GPU");
                let want = state_cpu[i][k].to_vec_f64();
                // m can cancel to near 0; its error scales with the gradients (up to 3).
                let atol = if k == 1 { 5e-6 } else { 1e-9 };
                assert_close(&format!("{what}: {name}"), &state_gpu[i][k].to_vec_f64(), &want, 1e-5, atol);
            }
            let master = state_gpu[i][0].to_vec::<f32>().unwrap();
            match g.dtype() {
                DType::BF16 => {
                    let want: Vec<bf16> = master.iter().map(|&x| bf16::from_f32(x)).collect();
                    assert!(
                        g.to_vec::<bf16>().unwrap() == want,
                        "{what}: parameter = GPU master rounded to bf16"
                    );
                    // Masters a few f32 ulps apart may round to neighbouring bf16 values.
                    assert_close(&what, &g.to_vec_f64(), &c.to_vec_f64(), 8e-3, 0.0);
                }
                _ => {
                    assert_eq!(g.to_vec::<f32>().unwrap(), master, "{what}: parameter = GPU master");
                    assert_close(&what, &g.to_vec_f64(), &c.to_vec_f64(), 1e-5, 1e-7);
                }
            }
        }
    }
}

#[test]
fn adamw_f32_params_gpu_matches_cpu() {
    let Some(dev) = gpu("adamw_f32_params_gpu_matches_cpu") else { return };
    for seed in 0..3 {
        gpu_matches_cpu(dev, &[DType::F32], seed);
    }
}

#[test]
fn adamw_bf16_params_gpu_matches_cpu() {
    let Some(dev) = gpu("adamw_bf16_params_gpu_matches_cpu") else { return };
    for seed in 10..13 {
        gpu_matches_cpu(dev, &[DType::BF16], seed);
    }
}

#[test]
fn adamw_mixed_dtype_params_gpu_matches_cpu() {
    let Some(dev) = gpu("adamw_mixed_dtype_params_gpu_matches_cpu") else { return };
    gpu_matches_cpu(dev, &[DType::BF16, DType::F32], 20);
}

/// A GPU optimizer's state, saved through the CPU and loaded back onto the GPU, continues
/// bit-identically; the snapshot does not change as the original keeps stepping.
#[test]
fn gpu_state_round_trip_continues_bit_identically() {
    let Some(dev) = gpu("gpu_state_round_trip_continues_bit_identically") else { return };
    let mut rng = Rng::new(5);
    let shapes: [&[usize]; 3] = [&[33, 70], &[70], &[5000]];
    let mut params: Vec<Tensor> = shapes
        .iter()
        .map(|s| {
            let v = nonzero(&mut rng, s.iter().product(), 0.1, 2.0);
            Tensor::from_vec(v, s)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap()
                .to_device(dev)
                .unwrap()
                .requires_grad()
        })
        .collect();
    let wd = [0.1, 0.0, 0.0];
    let mut opt = AdamW::new(&params.iter().collect::<Vec<_>>(), &wd, AdamWHyper::default()).unwrap();
    let grads_for = |rng: &mut Rng| -> Vec<Option<Vec<f64>>> {
        shapes.iter().map(|s| Some(nonzero(rng, s.iter().product(), 0.01, 2.0))).collect()
    };
    for _ in 0..2 {
        set_grads(&params, &grads_for(&mut rng));
        opt.step(&mut refs(&mut params), 2e-3, 0.7).unwrap();
    }
    let saved: Vec<[Tensor; 3]> =
        opt.state().into_iter().map(|s| s.map(|t| t.to_device(Device::Cpu).unwrap())).collect();
    let saved_bits: Vec<Vec<u64>> = saved.iter().flatten().map(bits).collect();
    let live: Vec<[Tensor; 3]> = opt.state();
    let live_bits: Vec<Vec<u64>> = live.iter().flatten().map(bits).collect();
    assert_eq!(saved_bits, live_bits, "the CPU copy holds the GPU state exactly");
    let mut resumed_params: Vec<Tensor> = params.iter().map(|p| p.detach().requires_grad()).collect();
    let mut resumed = AdamW::from_state(
        &resumed_params.iter().collect::<Vec<_>>(),
        &wd,
        AdamWHyper::default(),
        opt.steps(),
        saved,
    )
    .unwrap();
    assert!(resumed.state().iter().flatten().all(|t| t.device() == dev), "state loaded onto the GPU");
    for step in 0..3 {
        let grads = grads_for(&mut rng);
        set_grads(&params, &grads);
        set_grads(&resumed_params, &grads);
        let scale = 0.5 + 0.1 * step as f64;
        opt.step(&mut refs(&mut params), 1e-3, scale).unwrap();
        resumed.step(&mut refs(&mut resumed_params), 1e-3, scale).unwrap();
    }
    for (a, b) in params.iter().zip(&resumed_params) {
        assert_eq!(bits(a), bits(b), "parameters continue bit-identically");
    }
    for (a, b) in opt.state().iter().flatten().zip(resumed.state().iter().flatten()) {
        assert_eq!(bits(a), bits(b), "state continues bit-identically");
    }
    let still: Vec<Vec<u64>> = live.iter().flatten().map(bits).collect();
    assert_eq!(still, live_bits, "a GPU snapshot stays as it was taken");
}

/// NaN or infinity in one GPU gradient (f32 or bf16) makes the norm non-finite.
#[test]
fn gpu_non_finite_gradient_gives_non_finite_norm() {
    let Some(dev) = gpu("gpu_non_finite_gradient_gives_non_finite_norm") else { return };
    let mut rng = Rng::new(11);
    for dtype in [DType::F32, DType::BF16] {
        for (bad, at) in [(f64::NAN, 9_000), (f64::INFINITY, 3), (f64::NEG_INFINITY, 12_345)] {
            let n = 20_000;
            let p = Tensor::from_vec(nonzero(&mut rng, n, 0.1, 2.0), &[n])
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
                .to_device(dev)
                .unwrap()
                .requires_grad();
            let mut g = nonzero(&mut rng, n, 0.1, 2.0);
            g[at] = bad;
            set_grads(std::slice::from_ref(&p), &[Some(g)]);
            let norm = global_grad_norm(&[&p]).unwrap();
            assert!(!norm.is_finite(), "{dtype}: a {bad} gradient gives norm {norm}");
            if bad.is_nan() {
                assert!(norm.is_nan(), "{dtype}: a NaN gradient gives a NaN norm, got {norm}");
            }
        }
    }
}
