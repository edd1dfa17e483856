//! Tensors on the GPU: every op the model uses, forward and backward, against the same op on
//! the CPU; the tiny model's forward and backward on the GPU against the CPU; and short
//! training runs on the GPU (f32 and bf16) that follow the CPU's losses.
//!
//! Without a GPU every test prints that it skipped and passes. On the GPU machine these run
//! from `scripts/gpu-check.sh`.

mod common;

use common::gpu::gpu;

use common::{assert_close, random_tensor};
use polylm_engine::{DType, Device, Rng, Tensor};
use polylm_model::{Batch, Gpt, ModelConfig};

/// Runs `f` on f32 copies of `inputs` on the CPU and on the GPU; compares the outputs and the
/// gradients of `Σ out ⊙ R` (a fixed random `R`) with respect to every input. Every input
/// already holds a random gradient (as a weight holds its earlier micro-batches'), so the
/// rules that accumulate into it in place (products, the embedding's scatter) do.
#[track_caller]
fn compare(
    what: &str,
    dev: Device,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> polylm_engine::Result<Tensor>,
) {
    let mut rng = Rng::new(99);
    let cpu: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(DType::F32).unwrap().requires_grad()).collect();
    let out = f(&cpu).expect("cpu forward");
    let weights = random_tensor(&mut rng, out.shape(), 1.0).to_dtype(DType::F32).unwrap();

    let gpu: Vec<Tensor> = cpu.iter().map(|t| t.detach().to_device(dev).unwrap().requires_grad()).collect();
    for (c, g) in cpu.iter().zip(&gpu) {
        let prior = random_tensor(&mut rng, c.shape(), 1.0).to_dtype(DType::F32).unwrap();
        c.set_grad(&prior).unwrap();
        g.set_grad(&prior.to_device(dev).unwrap()).unwrap();
    }
    out.mul(&weights).unwrap().sum_all().unwrap().backward().expect("cpu backward");
    let out_g = f(&gpu).expect("gpu forward");
    assert_eq!(out_g.device(), dev, "{what}: the result lives on the GPU");
    let wg = weights.to_device(dev).unwrap();
    out_g.mul(&wg).unwrap().sum_all().unwrap().backward().expect("gpu backward");

    let scale = |v: &[f64]| v.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
    let want = out.to_vec_f64();
    assert_close(&format!("{what} forward"), &out_g.to_vec_f64(), &want, 2e-5, 2e-6 * scale(&want));
    for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        let want = c.grad().expect("cpu grad").to_vec_f64();
        let got = g.grad().unwrap_or_else(|| panic!("{what}: input {i} got no gradient on the GPU"));
        assert_eq!(got.device(), dev, "{what}: gradient {i} lives on the GPU");
        assert_close(&format!("{what} d/dinput{i}"), &got.to_vec_f64(), &want, 2e-5, 2e-6 * scale(&want));
    }
}

fn t(rng: &mut Rng, shape: &[usize]) -> Tensor {
    random_tensor(rng, shape, 1.0)
}

#[test]
fn every_model_op_matches_the_cpu_on_the_gpu() {
    let Some(dev) = gpu("ops") else { return };
    let mut rng = Rng::new(1);
    let (b, s, c) = (2, 7, 24);
    compare("add broadcast", dev, &[t(&mut rng, &[b, s, c]), t(&mut rng, &[c])], &|x| x[0].add(&x[1]));
    compare("sub", dev, &[t(&mut rng, &[s, c]), t(&mut rng, &[s, 1])], &|x| x[0].sub(&x[1]));
    compare("mul", dev, &[t(&mut rng, &[b, s, c]), t(&mut rng, &[s, c])], &|x| x[0].mul(&x[1]));
    compare("div", dev, &[t(&mut rng, &[s, c]), t(&mut rng, &[c]).affine(0.5, 2.0).unwrap()], &|x| {
        x[0].div(&x[1])
    });
    compare("affine", dev, &[t(&mut rng, &[s, c])], &|x| x[0].affine(-1.5, 0.25));
    compare("sqr", dev, &[t(&mut rng, &[s, c])], &|x| x[0].sqr());
    compare("sum axes", dev, &[t(&mut rng, &[b, s, c])], &|x| x[0].sum(&[0, 2], false));
    compare("mean", dev, &[t(&mut rng, &[b, s, c])], &|x| x[0].mean(&[1], true));
    compare("matmul 2d", dev, &[t(&mut rng, &[s, c]), t(&mut rng, &[c, 9])], &|x| x[0].matmul(&x[1]));
    compare("matmul folded 3d·2d", dev, &[t(&mut rng, &[b, s, c]), t(&mut rng, &[c, 9])], &|x| {
        x[0].matmul(&x[1])
    });
    compare("matmul by a transposed view", dev, &[t(&mut rng, &[b, s, c]), t(&mut rng, &[11, c])], &|x| {
        x[0].matmul(&x[1].t()?)
    });
    compare("matmul_t (a tied head)", dev, &[t(&mut rng, &[b, s, c]), t(&mut rng, &[13, c])], &|x| {
        x[0].matmul_t(&x[1])
    });
    compare("linear", dev, &[t(&mut rng, &[b, s, c]), t(&mut rng, &[c, 9]), t(&mut rng, &[9])], &|x| {
        x[0].linear(&x[1], &x[2])
    });
    compare("matmul batched broadcast", dev, &[t(&mut rng, &[3, 1, s, c]), t(&mut rng, &[2, c, 5])], &|x| {
        x[0].matmul(&x[1])
    });
    compare("layer_norm", dev, &[t(&mut rng, &[b, s, c]), t(&mut rng, &[c]), t(&mut rng, &[c])], &|x| {
        x[0].layer_norm(&x[1], &x[2], 1e-5)
    });
    // The residual add fused into the layer norm, its stream also read by a later op (so the
    // layer norm's backward folds the stream's gradient in); and a plain layer norm whose input
    // is reused the same way.
    compare(
        "add_layer_norm",
        dev,
        &[t(&mut rng, &[b, s, c]), t(&mut rng, &[b, s, c]), t(&mut rng, &[c]), t(&mut rng, &[c])],
        &|x| {
            let (stream, normed) = x[0].add_layer_norm(&x[1], &x[2], &x[3], 1e-5)?;
            stream.mul(&normed)
        },
    );
    compare(
        "layer_norm on a reused stream",
        dev,
        &[t(&mut rng, &[b, s, c]), t(&mut rng, &[c]), t(&mut rng, &[c])],
        &|x| x[0].layer_norm(&x[1], &x[2], 1e-5)?.add(&x[0]),
    );
    compare("bias_gelu", dev, &[t(&mut rng, &[b, s, c]), t(&mut rng, &[c])], &|x| x[0].bias_gelu(&x[1]));
    compare("gelu", dev, &[t(&mut rng, &[s, c])], &|x| x[0].gelu());
    compare("softmax", dev, &[t(&mut rng, &[b, s, c])], &|x| x[0].softmax());
    compare(
        "causal_attention",
        dev,
        &[t(&mut rng, &[b, 3, s, 16]), t(&mut rng, &[b, 3, s, 16]), t(&mut rng, &[b, 3, s, 16])],
        &|x| Tensor::causal_attention(&x[0], &x[1], &x[2]),
    );
    compare("causal_attention_packed", dev, &[t(&mut rng, &[3, b, 2, s, 16])], &|x| {
        Tensor::causal_attention_packed(&x[0])
    });
    let ids: Vec<u32> = (0..b * s).map(|i| (i * 7 % 13) as u32).collect();
    compare("embedding", dev, &[t(&mut rng, &[13, c])], &|x| x[0].embedding(&ids, &[b, s]));
    let targets: Vec<u32> = (0..b * s).map(|i| if i % 5 == 1 { 99 } else { (i * 3 % c) as u32 }).collect();
    compare("cross_entropy", dev, &[t(&mut rng, &[b, s, c])], &|x| x[0].cross_entropy(&targets, Some(99)));
    compare("permute + contiguous + reshape", dev, &[t(&mut rng, &[b, s, 3, 8])], &|x| {
        x[0].permute(&[2, 0, 3, 1])?.contiguous()?.reshape(&[3, b * 8 * s])
    });
    compare("narrow", dev, &[t(&mut rng, &[b, s, c])], &|x| x[0].narrow(2, 5, 9));
    compare("concat", dev, &[t(&mut rng, &[b, 3, c]), t(&mut rng, &[b, 4, c])], &|x| {
        Tensor::concat(&[x[0].clone(), x[1].clone()], 1)
    });
    compare("to_dtype round trip", dev, &[t(&mut rng, &[s, c])], &|x| {
        x[0].to_dtype(DType::F16)?.to_dtype(DType::F32)
    });
}

/// The fully connected layers in bf16 on the GPU against f32 on the CPU: on the tensor-core
/// product (the default; every gpu-check run but `simple`) the bias and GeLU are fused into its
/// store and the backward starts from the saved pre-activation; with
/// `POLYLM_GPU_MATMUL=simple` this is the composition of matmul, add and bias_gelu. Outputs and all three gradients
/// (accumulated into gradients the inputs already hold) within bf16 tolerance.
#[test]
fn linear_layers_in_bf16_match_the_cpu() {
    let Some(dev) = gpu("linear") else { return };
    let mut rng = Rng::new(7);
    // Ragged sizes (not multiples of any tile), rows folded from a [2, 37] batch.
    let (b, s, k, n) = (2, 37, 72, 136);
    let inputs = [t(&mut rng, &[b, s, k]), t(&mut rng, &[k, n]).affine(0.2, 0.0).unwrap(), t(&mut rng, &[n])];
    for gelu in [false, true] {
        let layer =
            |x: &[Tensor]| if gelu { x[0].linear_gelu(&x[1], &x[2]) } else { x[0].linear(&x[1], &x[2]) };
        // Both sides start from the same bf16-rounded values.
        let bf16_f32 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let cpu: Vec<Tensor> = inputs.iter().map(|t| bf16_f32(t).requires_grad()).collect();
        // Gradients from an earlier pass, which the product's backward accumulates into.
        let priors: Vec<Tensor> =
            cpu.iter().map(|c| bf16_f32(&random_tensor(&mut rng, c.shape(), 1.0))).collect();
        for (c, p) in cpu.iter().zip(&priors) {
            c.set_grad(&p.detach().affine(1.0, 0.0).unwrap()).unwrap();
        }
        let out = layer(&cpu).expect("cpu forward");
        let weights = bf16_f32(&random_tensor(&mut rng, out.shape(), 1.0));
        out.mul(&weights).unwrap().sum_all().unwrap().backward().expect("cpu backward");
        let gpu_in: Vec<Tensor> = cpu
            .iter()
            .map(|t| t.detach().to_dtype(DType::BF16).unwrap().to_device(dev).unwrap().requires_grad())
            .collect();
        for (g, p) in gpu_in.iter().zip(&priors) {
            g.set_grad(&p.to_dtype(DType::BF16).unwrap().to_device(dev).unwrap()).unwrap();
        }
        let out_g = layer(&gpu_in).expect("gpu forward");
        // Without gradients (activation recomputation's forward pass) the fused layer skips
        // storing the pre-activation; the output is the same, bit for bit.
        let out_no_grad = {
            let _guard = polylm_engine::no_grad();
            layer(&gpu_in).expect("gpu forward without gradients")
        };
        assert_eq!(
            out_no_grad.to_vec_f64(),
            out_g.to_vec_f64(),
            "linear{}: no_grad output",
            if gelu { "_gelu" } else { "" }
        );
        let wg = weights.to_dtype(DType::BF16).unwrap().to_device(dev).unwrap();
        out_g.mul(&wg).unwrap().sum_all().unwrap().backward().expect("gpu backward");
        let scale = |v: &[f64]| v.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
        let want = out.to_vec_f64();
        let what = if gelu { "linear_gelu" } else { "linear" };
        assert_close(&format!("{what} forward"), &out_g.to_vec_f64(), &want, 2e-2, 1e-2 * scale(&want));
        for (i, (c, g)) in cpu.iter().zip(&gpu_in).enumerate() {
            let want = c.grad().expect("cpu grad").to_vec_f64();
            let got = g.grad().unwrap_or_else(|| panic!("{what}: input {i} got no gradient")).to_vec_f64();
            assert_close(&format!("{what} d/dinput{i}"), &got, &want, 3e-2, 2e-2 * scale(&want));
        }
    }
}

/// Attention as a PolyLM block runs it, in bf16 on the GPU against f32 on the CPU: q, k, v as a
/// permuted view of one `[batch, seq, 3, heads, head_dim]` projection (head dimension 64, a
/// ragged length), the output transposed back to `[batch, seq, heads·head_dim]`. On the flash
/// kernels (the default; every gpu-check run but `simple`) they read the projection in place,
/// write the output token-major and the gradient into the projection's layout; with
/// `POLYLM_GPU_ATTENTION=simple` the simple kernel runs on copies. Output and gradient within bf16
/// tolerance.
#[test]
fn attention_on_a_fused_projection_in_bf16_matches_the_cpu() {
    let Some(dev) = gpu("packed attention") else { return };
    let mut rng = Rng::new(11);
    let (b, s, h, d) = (2, 70, 3, 64);
    let block = |x: &Tensor| {
        let qkv = x.reshape(&[b, s, 3, h, d])?.permute(&[2, 0, 3, 1, 4])?;
        Tensor::causal_attention_packed(&qkv)?.permute(&[0, 2, 1, 3])?.reshape(&[b, s, h * d])
    };
    let bf16_f32 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
    let x = bf16_f32(&t(&mut rng, &[b, s, 3 * h * d]).affine(1.5, 0.0).unwrap()).requires_grad();
    let out = block(&x).expect("cpu forward");
    let weights = bf16_f32(&random_tensor(&mut rng, out.shape(), 1.0));
    out.mul(&weights).unwrap().sum_all().unwrap().backward().expect("cpu backward");
    let xg = x.detach().to_dtype(DType::BF16).unwrap().to_device(dev).unwrap().requires_grad();
    let out_g = block(&xg).expect("gpu forward");
    let wg = weights.to_dtype(DType::BF16).unwrap().to_device(dev).unwrap();
    out_g.mul(&wg).unwrap().sum_all().unwrap().backward().expect("gpu backward");
    let scale = |v: &[f64]| v.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
    let want = out.to_vec_f64();
    assert_close("packed attention forward", &out_g.to_vec_f64(), &want, 2e-2, 1e-2 * scale(&want));
    let want = x.grad().expect("cpu grad").to_vec_f64();
    let got = xg.grad().expect("gpu grad");
    assert_eq!(got.shape(), &[b, s, 3 * h * d]);
    assert_close("packed attention d/dx", &got.to_vec_f64(), &want, 3e-2, 2e-2 * scale(&want));
}

fn tiny_batch() -> (Vec<u32>, Vec<u32>, usize, usize) {
    let (batch, seq) = (2, 32);
    let ids: Vec<u32> = (0..batch * seq).map(|i| ((i * 131 + 7) % 8192) as u32).collect();
    let targets: Vec<u32> = (0..batch * seq).map(|i| ((i * 61 + 3) % 8192) as u32).collect();
    (ids, targets, batch, seq)
}

#[test]
fn the_tiny_model_forward_and_backward_match_the_cpu() {
    let Some(dev) = gpu("tiny model") else { return };
    let config = ModelConfig::preset("tiny").expect("preset");
    let cpu = Gpt::new(config.clone(), DType::F32, 5).expect("model");
    let mut on_gpu = Gpt::new(config, DType::F32, 5).expect("model");
    on_gpu.params_mut().to_device(dev).expect("to gpu");
    let (ids, targets, batch, seq) = tiny_batch();
    let b = Batch { ids: &ids, batch, seq };
    let loss_cpu = cpu.forward_backward(&b, &targets, None, false).expect("cpu step");
    for recompute in [false, true] {
        on_gpu.params().zero_grad();
        let loss_gpu = on_gpu.forward_backward(&b, &targets, None, recompute).expect("gpu step");
        assert!((loss_gpu - loss_cpu).abs() <= 1e-5 * loss_cpu.abs(), "loss {loss_gpu} vs {loss_cpu}");
        for ((name, c), (_, g)) in cpu.params().named().into_iter().zip(on_gpu.params().named()) {
            let want = c.grad().expect("cpu grad").to_vec_f64();
            let got = g.grad().unwrap_or_else(|| panic!("{name}: no gradient on the GPU")).to_vec_f64();
            let scale = want.iter().fold(1e-8f64, |m, x| m.max(x.abs()));
            assert_close(&format!("{name} (recompute {recompute})"), &got, &want, 1e-3, 1e-4 * scale);
        }
    }
}

/// `steps` of plain gradient descent on the tiny model, on `device` in `dtype`; the losses.
fn train(device: Device, dtype: DType, steps: usize) -> Vec<f64> {
    let config = ModelConfig::preset("tiny").expect("preset");
    let mut model = Gpt::new(config, DType::F32, 11).expect("model");
    for (_, p) in model.params_mut().named_mut() {
        *p = p.to_dtype(dtype).unwrap().to_device(device).unwrap().requires_grad();
    }
    let (ids, targets, batch, seq) = tiny_batch();
    let b = Batch { ids: &ids, batch, seq };
    let lr = 0.5;
    let mut losses = Vec::new();
    for _ in 0..steps {
        model.params().zero_grad();
        losses.push(model.forward_backward(&b, &targets, None, false).expect("step"));
        let _guard = polylm_engine::no_grad();
        for (_, p) in model.params_mut().named_mut() {
            let g = p.grad().expect("grad");
            *p = p.sub(&g.affine(lr, 0.0).unwrap()).unwrap().requires_grad();
        }
    }
    losses
}

#[test]
fn a_short_gpu_training_run_follows_the_cpu() {
    let Some(dev) = gpu("training") else { return };
    let steps = 8;
    let cpu = train(Device::Cpu, DType::F32, steps);
    let gpu_f32 = train(dev, DType::F32, steps);
    let gpu_bf16 = train(dev, DType::BF16, steps);
    println!("cpu f32 {cpu:?}\ngpu f32 {gpu_f32:?}\ngpu bf16 {gpu_bf16:?}");
    assert!(cpu[steps - 1] < cpu[0] - 0.5, "the CPU run learns: {cpu:?}");
    assert_close("gpu f32 losses", &gpu_f32, &cpu, 1e-4, 0.0);
    assert_close("gpu bf16 losses", &gpu_bf16, &cpu, 2e-2, 0.0);
}
