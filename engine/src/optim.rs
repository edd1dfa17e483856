//! The optimizer: AdamW with f32 master weights, and the global gradient norm used to clip.
//!
//! [`AdamW`] keeps, for every parameter, an f32 copy of the weights (the master weights) and
//! the f32 moments `m` and `v`, on the parameter's device. Each [`AdamW::step`] updates them
//! in the arithmetic of PyTorch's `torch.optim.AdamW` (decoupled weight decay, then the
//! bias-corrected update; see `polylm_kernels::adamw`), then replaces each parameter by the
//! new master weights cast to the parameter's dtype: a bf16 model trains on f32 weights.
//!
//! On the CPU the update is `polylm_kernels::adamw::adamw_step`; on a GPU it is the fused
//! kernel of `polylm_kernels::cuda::optim`, one launch per device and dtype pair, which also
//! writes the parameter's low-precision copy. Both are elementwise and deterministic: the
//! same inputs give bit-identical outputs, which checkpoint resume relies on.
//!
//! ```
//! use polylm_engine::{global_grad_norm, AdamW, AdamWHyper, DType, Rng, Tensor};
//! let mut rng = Rng::new(1);
//! let mut w = Tensor::randn(&[3, 2], 0.5, DType::F32, &mut rng)?.requires_grad();
//! let mut b = Tensor::randn(&[2], 0.5, DType::F32, &mut rng)?.requires_grad();
//! let mut opt = AdamW::new(&[&w, &b], &[0.1, 0.0], AdamWHyper::default())?;
//! let x = Tensor::randn(&[4, 3], 1.0, DType::F32, &mut rng)?;
//! x.matmul(&w)?.add(&b)?.sqr()?.sum_all()?.backward()?;
//! let norm = global_grad_norm(&[&w, &b])?;
//! let clip = (1.0 / (norm + 1e-6)).min(1.0);
//! opt.step(&mut [&mut w, &mut b], 1e-3, clip)?;
//! assert_eq!(opt.steps(), 1);
//! assert!(w.requires_grad_flag() && w.grad().is_none());
//! # Ok::<(), polylm_engine::Error>(())
//! ```

use std::borrow::Cow;

use half::{bf16, f16};
use polylm_kernels::adamw::{adamw_step, AdamWConfig};
use polylm_kernels::cuda::optim::{self as gpu_optim, AdamWStep, AdamWTensor};
use polylm_kernels::cuda::DeviceBuf;
use rayon::prelude::*;

use crate::cuda::{cuda_err, dense, gpu, with_gpu_type, CudaStorage, Dense, GpuElem};
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Device, Error, Result, Tensor};

/// AdamW's hyper-parameters that stay fixed over a run (the learning rate and the clip
/// factor are arguments of each [`AdamW::step`]; weight decay is per parameter).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWHyper {
    /// First-moment decay, in `[0, 1)`.
    pub beta1: f64,
    /// Second-moment decay, in `[0, 1)`.
    pub beta2: f64,
    /// Denominator epsilon, finite and `>= 0`.
    pub eps: f64,
}

impl Default for AdamWHyper {
    /// PolyLM's values: β1 = 0.9, β2 = 0.95, eps = 1e-8.
    fn default() -> AdamWHyper {
        AdamWHyper { beta1: 0.9, beta2: 0.95, eps: 1e-8 }
    }
}

impl AdamWHyper {
    fn check(&self, op: &'static str) -> Result<()> {
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(invalid(op, format!("{name} must lie in [0, 1), got {beta}")));
            }
        }
        if !self.eps.is_finite() || self.eps < 0.0 {
            return Err(invalid(op, format!("eps must be finite and >= 0, got {}", self.eps)));
        }
        Ok(())
    }
}

/// AdamW over a fixed list of parameters, with f32 master weights and moments on each
/// parameter's device, a decoupled weight decay per parameter, and a step count.
///
/// The parameters themselves are not held: [`AdamW::step`] takes them (in the order given to
/// [`AdamW::new`]) and replaces each with its updated weights.
#[derive(Debug)]
pub struct AdamW {
    /// Per parameter: master weights, first moment, second moment; dense f32 on the
    /// parameter's device, owned here (shared only with snapshots from [`AdamW::state`],
    /// which a step copies rather than overwrites).
    states: Vec<[Tensor; 3]>,
    weight_decay: Vec<f64>,
    hyper: AdamWHyper,
    steps: u64,
}

impl AdamW {
    /// An optimizer for `params`, at step 0: the master weights are f32 copies of `params`
    /// (on their devices) and the moments are zeros. `weight_decay[i]` is the decoupled weight
    /// decay of `params[i]` (0 for biases and other 1-D parameters).
    pub fn new(params: &[&Tensor], weight_decay: &[f64], hyper: AdamWHyper) -> Result<AdamW> {
        const OP: &str = "AdamW::new";
        check_setup(OP, params.len(), weight_decay, &hyper)?;
        let states = params
            .iter()
            .map(|p| {
                Ok([
                    owned_f32(OP, p)?,
                    zeros_f32(OP, p.shape(), p.device())?,
                    zeros_f32(OP, p.shape(), p.device())?,
                ])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW { states, weight_decay: weight_decay.to_vec(), hyper, steps: 0 })
    }

    /// One AdamW step at learning rate `lr`.
    ///
    /// The step count increments first (the bias corrections use the new count, from 1).
    /// Each parameter's `.grad()` (a missing gradient counts as zeros), multiplied by
    /// `grad_scale` (the clip factor, or 1), updates its master weights and moments; then
    /// `*params[i]` becomes the new master weights cast to its dtype on its device, as a fresh
    /// leaf that requires grad and has no gradient yet.
    ///
    /// `params` must be the parameters given to [`AdamW::new`], in that order, with the same
    /// shapes and devices; gradients must match their parameter's shape and device. All of
    /// that is checked before anything changes.
    pub fn step(&mut self, params: &mut [&mut Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        const OP: &str = "AdamW::step";
        if params.len() != self.states.len() {
            return Err(invalid(
                OP,
                format!("{} parameters given, the optimizer holds {}", params.len(), self.states.len()),
            ));
        }
        if !lr.is_finite() || lr < 0.0 {
            return Err(invalid(OP, format!("lr must be finite and >= 0, got {lr}")));
        }
        if !grad_scale.is_finite() {
            return Err(invalid(OP, format!("grad_scale must be finite, got {grad_scale}")));
        }
        let mut grads = Vec::with_capacity(params.len());
        for (i, (p, st)) in params.iter().zip(&self.states).enumerate() {
            let master = &st[0];
            if p.shape() != master.shape() {
                return Err(Error::BadShape {
                    op: OP,
                    shape: p.shape().to_vec(),
                    reason: format!(
                        "parameter {i} had shape {:?} when the optimizer was built",
                        master.shape()
                    ),
                });
            }
            if p.device() != master.device() {
                return Err(Error::DeviceMismatch { op: OP, lhs: p.device(), rhs: master.device() });
            }
            let grad = p.grad();
            if let Some(g) = &grad {
                if g.shape() != p.shape() {
                    return Err(Error::ShapeMismatch {
                        op: OP,
                        lhs: g.shape().to_vec(),
                        rhs: p.shape().to_vec(),
                    });
                }
                if g.device() != p.device() {
                    return Err(Error::DeviceMismatch { op: OP, lhs: g.device(), rhs: p.device() });
                }
            }
            grads.push(grad);
        }
        let step =
            self.steps.checked_add(1).ok_or_else(|| invalid(OP, "the step count overflows u64".into()))?;
        self.steps = step;

        let (beta1, beta2, eps) = (self.hyper.beta1 as f32, self.hyper.beta2 as f32, self.hyper.eps as f32);
        let (lr, scale) = (lr as f32, grad_scale as f32);
        let mut updated: Vec<Option<Tensor>> = vec![None; params.len()];

        // CPU parameters, one at a time.
        for (i, st) in self.states.iter_mut().enumerate() {
            if !st[0].device().is_cpu() {
                continue;
            }
            let shape = st[0].shape().to_vec();
            let grad: Cow<'_, [f32]> = match &grads[i] {
                Some(g) => g.values::<f32>(),
                None => Cow::Owned(vec![0.0; st[0].numel()]),
            };
            let [master, m, v] = st;
            let (master, m, v) = (cpu_f32_mut(OP, master)?, cpu_f32_mut(OP, m)?, cpu_f32_mut(OP, v)?);
            let config = AdamWConfig { lr, beta1, beta2, eps, weight_decay: self.weight_decay[i] as f32 };
            adamw_step(master, &grad, m, v, &config, step, scale);
            // Narrowed straight from f32 (round to nearest even, as the GPU kernel does):
            // `half`'s bf16::from_f64 misrounds f32 values one ulp above a bf16 tie.
            let weights = match params[i].dtype() {
                DType::F32 => CpuStorage::F32(master.to_vec()),
                DType::F64 => CpuStorage::F64(master.par_iter().map(|&x| f64::from(x)).collect()),
                DType::BF16 => CpuStorage::BF16(master.par_iter().map(|&x| bf16::from_f32(x)).collect()),
                DType::F16 => CpuStorage::F16(master.par_iter().map(|&x| f16::from_f32(x)).collect()),
            };
            updated[i] = Some(Tensor::from_storage(weights, &shape).requires_grad());
        }

        // GPU parameters: one fused launch per (device, gradient dtype, parameter dtype).
        let mut groups: Vec<(usize, DType, DType)> = Vec::new();
        for (i, p) in params.iter().enumerate() {
            if let Device::Cuda(ordinal) = p.device() {
                let gdt = grads[i].as_ref().map_or(p.dtype(), Tensor::dtype);
                let key = (ordinal, gdt, p.dtype());
                if !groups.contains(&key) {
                    groups.push(key);
                }
            }
        }
        let hyper = AdamWStep { lr, beta1, beta2, eps, step };
        for (ordinal, gdt, pdt) in groups {
            let members: Vec<usize> = (0..params.len())
                .filter(|&i| {
                    params[i].device() == Device::Cuda(ordinal)
                        && params[i].dtype() == pdt
                        && grads[i].as_ref().map_or(pdt, Tensor::dtype) == gdt
                })
                .collect();
            let new = with_gpu_type!(gdt, G => {
                with_gpu_type!(pdt, C => {
                    gpu_step::<G, C>(ordinal, &mut self.states, &self.weight_decay, &members, &grads, &hyper, scale)
                })
            })?;
            for (i, t) in new {
                updated[i] = Some(t);
            }
        }

        for (i, (p, new)) in params.iter_mut().zip(updated).enumerate() {
            **p =
                new.ok_or_else(|| invalid(OP, format!("parameter {i} was not updated (internal error)")))?;
        }
        Ok(())
    }

    /// Steps taken so far (0 for a new optimizer).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The fixed hyper-parameters.
    pub fn hyper(&self) -> AdamWHyper {
        self.hyper
    }

    /// The state to checkpoint: for each parameter `i`, `[master_i, m_i, v_i]` as dense f32
    /// tensors of the parameter's shape on the parameter's device. They are a snapshot:
    /// later steps do not change them (a step copies state that a snapshot still shares).
    pub fn state(&self) -> Vec<[Tensor; 3]> {
        self.states.iter().map(|[a, b, c]| [a.detach(), b.detach(), c.detach()]).collect()
    }

    /// The decoupled weight decay of each parameter.
    pub fn weight_decays(&self) -> &[f64] {
        &self.weight_decay
    }

    /// An optimizer rebuilt from a checkpoint: `state` as [`AdamW::state`] returned it (the
    /// tensors may live anywhere, e.g. loaded on the CPU; they are copied to each parameter's
    /// device), `steps` steps taken. Each state tensor must be f32 of its parameter's shape.
    pub fn from_state(
        params: &[&Tensor],
        weight_decay: &[f64],
        hyper: AdamWHyper,
        steps: u64,
        state: Vec<[Tensor; 3]>,
    ) -> Result<AdamW> {
        const OP: &str = "AdamW::from_state";
        check_setup(OP, params.len(), weight_decay, &hyper)?;
        if state.len() != params.len() {
            return Err(invalid(
                OP,
                format!("state for {} parameters, {} parameters given", state.len(), params.len()),
            ));
        }
        let mut states = Vec::with_capacity(state.len());
        for (i, (p, tensors)) in params.iter().zip(&state).enumerate() {
            let mut moved = Vec::with_capacity(3);
            for (name, t) in ["master weights", "m", "v"].into_iter().zip(tensors) {
                if t.dtype() != DType::F32 {
                    return Err(invalid(OP, format!("parameter {i}: the {name} are {}, not f32", t.dtype())));
                }
                if t.shape() != p.shape() {
                    return Err(Error::BadShape {
                        op: OP,
                        shape: t.shape().to_vec(),
                        reason: format!("parameter {i}'s {name} must have its shape {:?}", p.shape()),
                    });
                }
                moved.push(owned_f32(OP, &t.to_device(p.device())?)?);
            }
            let [master, m, v]: [Tensor; 3] =
                moved.try_into().map_err(|_| invalid(OP, "three state tensors (internal error)".into()))?;
            states.push([master, m, v]);
        }
        Ok(AdamW { states, weight_decay: weight_decay.to_vec(), hyper, steps })
    }
}

/// The L2 norm of all `params`' gradients together (a missing gradient counts as zeros).
///
/// CPU gradients are summed in f64; GPU gradients with the fused norm kernel (f32 partial
/// sums, one launch per device and dtype), whose squares are added in f64. The order is
/// fixed, so the result is deterministic. Non-finite gradients give a non-finite norm.
pub fn global_grad_norm(params: &[&Tensor]) -> Result<f64> {
    const OP: &str = "global_grad_norm";
    let grads: Vec<Tensor> = params.iter().filter_map(|p| p.grad()).collect();
    let mut sum_sq = 0.0f64;
    let mut groups: Vec<(usize, DType)> = Vec::new();
    for g in &grads {
        match g.device() {
            Device::Cpu => sum_sq += cpu_sum_sq(g),
            Device::Cuda(ordinal) => {
                if !groups.contains(&(ordinal, g.dtype())) {
                    groups.push((ordinal, g.dtype()));
                }
            }
        }
    }
    for (ordinal, dtype) in groups {
        let members: Vec<&Tensor> =
            grads.iter().filter(|g| g.device() == Device::Cuda(ordinal) && g.dtype() == dtype).collect();
        sum_sq += with_gpu_type!(dtype, G => gpu_sum_sq::<G>(OP, ordinal, &members))?;
    }
    Ok(sum_sq.sqrt())
}

fn invalid(op: &'static str, reason: String) -> Error {
    Error::InvalidArgument { op, reason }
}

fn check_setup(op: &'static str, params: usize, weight_decay: &[f64], hyper: &AdamWHyper) -> Result<()> {
    hyper.check(op)?;
    if weight_decay.len() != params {
        return Err(invalid(op, format!("{} weight decays for {params} parameters", weight_decay.len())));
    }
    if let Some((i, wd)) = weight_decay.iter().enumerate().find(|(_, w)| !w.is_finite() || **w < 0.0) {
        return Err(invalid(op, format!("weight decay {i} must be finite and >= 0, got {wd}")));
    }
    Ok(())
}

/// A new dense f32 tensor on `t`'s device holding `t`'s values, shared with nothing.
fn owned_f32(op: &'static str, t: &Tensor) -> Result<Tensor> {
    let shape = t.shape();
    if t.device().is_cpu() {
        return Ok(Tensor::from_storage(CpuStorage::F32(t.values::<f32>().into_owned()), shape));
    }
    with_gpu_type!(t.dtype(), S => {
        let src = dense::<S>(t)?;
        let mut out = src.device().alloc::<f32>(src.len()).map_err(cuda_err(op))?;
        if !src.is_empty() {
            polylm_kernels::cuda::elementwise::cast(&src, &mut out).map_err(cuda_err(op))?;
        }
        Ok(Tensor::from_gpu(out, shape))
    })
}

/// f32 zeros of `shape` on `device`.
fn zeros_f32(op: &'static str, shape: &[usize], device: Device) -> Result<Tensor> {
    match device {
        Device::Cpu => Tensor::zeros(shape, DType::F32),
        Device::Cuda(ordinal) => {
            let n = shape.iter().product();
            let buf = gpu(ordinal)?.alloc_filled_bytes::<f32>(n, 0).map_err(cuda_err(op))?;
            Ok(Tensor::from_gpu(buf, shape))
        }
    }
}

/// The values of optimizer state `t` (dense f32 on the CPU), writable: copied first when a
/// snapshot still shares them.
fn cpu_f32_mut<'a>(op: &'static str, t: &'a mut Tensor) -> Result<&'a mut [f32]> {
    if t.storage_mut().is_none() {
        *t = owned_f32(op, t)?;
    }
    match t.storage_mut() {
        Some(Storage::Cpu(CpuStorage::F32(v))) => Ok(v.as_mut_slice()),
        _ => Err(invalid(op, "optimizer state is not a dense f32 CPU buffer (internal error)".into())),
    }
}

/// The device buffer of optimizer state `t` (dense f32 on a GPU), writable: copied first when
/// a snapshot still shares it.
fn gpu_f32_mut<'a>(op: &'static str, t: &'a mut Tensor) -> Result<&'a mut DeviceBuf<f32>> {
    if t.storage_mut().is_none() {
        *t = owned_f32(op, t)?;
    }
    match t.storage_mut() {
        Some(Storage::Cuda(CudaStorage::F32(b))) => Ok(b),
        _ => Err(invalid(op, "optimizer state is not a dense f32 GPU buffer (internal error)".into())),
    }
}

/// One fused AdamW launch over the parameters `members` (all on GPU `ordinal`, gradients of
/// storage type `G`, parameters of type `C`); returns their new parameter tensors.
fn gpu_step<G: GpuElem, C: GpuElem>(
    ordinal: usize,
    states: &mut [[Tensor; 3]],
    weight_decay: &[f64],
    members: &[usize],
    grads: &[Option<Tensor>],
    hyper: &AdamWStep,
    grad_scale: f32,
) -> Result<Vec<(usize, Tensor)>> {
    const OP: &str = "AdamW::step";
    let dev = gpu(ordinal)?;
    let mut grad_bufs: Vec<Dense<'_, G>> = Vec::with_capacity(members.len());
    let mut copies: Vec<DeviceBuf<C>> = Vec::with_capacity(members.len());
    let mut shapes = Vec::with_capacity(members.len());
    for &i in members {
        let n = states[i][0].numel();
        grad_bufs.push(match &grads[i] {
            Some(g) => dense::<G>(g)?,
            None => Dense::Owned(dev.alloc_filled_bytes::<G>(n, 0).map_err(cuda_err(OP))?),
        });
        copies.push(dev.alloc::<C>(n).map_err(cuda_err(OP))?);
        shapes.push(states[i][0].shape().to_vec());
    }
    // Multiplying by 1 is exact, so skip the scale buffer then.
    let scale_buf =
        if grad_scale == 1.0 { None } else { Some(dev.upload(&[grad_scale]).map_err(cuda_err(OP))?) };

    let mut tensors = Vec::with_capacity(members.len());
    let mut inputs = grad_bufs.iter().zip(copies.iter_mut());
    for (i, st) in states.iter_mut().enumerate() {
        if members.binary_search(&i).is_err() {
            continue;
        }
        let (grad, copy) =
            inputs.next().ok_or_else(|| invalid(OP, "group bookkeeping (internal error)".into()))?;
        let [master, m, v] = st;
        tensors.push(AdamWTensor {
            param: gpu_f32_mut(OP, master)?,
            grad: &**grad,
            m: gpu_f32_mut(OP, m)?,
            v: gpu_f32_mut(OP, v)?,
            copy: Some(copy),
            weight_decay: weight_decay[i] as f32,
        });
    }
    gpu_optim::adamw_step(&mut tensors, hyper, scale_buf.as_ref().map(|b| (b, 0))).map_err(cuda_err(OP))?;
    drop(tensors);
    Ok(members
        .iter()
        .zip(copies)
        .zip(shapes)
        .map(|((&i, copy), shape)| (i, Tensor::from_gpu(copy, &shape).requires_grad()))
        .collect())
}

/// Σ g² of a CPU gradient in f64, over fixed chunks summed in order (deterministic).
fn cpu_sum_sq(g: &Tensor) -> f64 {
    const CHUNK: usize = 1 << 15;
    let partials: Vec<f64> = if g.dtype() == DType::F64 {
        g.values::<f64>().par_chunks(CHUNK).map(|c| c.iter().map(|x| x * x).sum::<f64>()).collect()
    } else {
        g.values::<f32>()
            .par_chunks(CHUNK)
            .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
            .collect()
    };
    partials.iter().sum()
}

/// Σ g² of GPU gradients `members` (all on GPU `ordinal`, storage type `G`) by the norm kernel.
fn gpu_sum_sq<G: GpuElem>(op: &'static str, ordinal: usize, members: &[&Tensor]) -> Result<f64> {
    let dev = gpu(ordinal)?;
    let bufs = members.iter().map(|g| dense::<G>(g)).collect::<Result<Vec<_>>>()?;
    let refs: Vec<&DeviceBuf<G>> = bufs.iter().map(|b| &**b).collect();
    let mut out = dev.alloc::<f32>(2).map_err(cuda_err(op))?;
    gpu_optim::global_norm(&refs, 0.0, &mut out).map_err(cuda_err(op))?;
    let host = dev.download(&out).map_err(cuda_err(op))?;
    let norm = f64::from(host.first().copied().unwrap_or(f32::NAN));
    Ok(norm * norm)
}
