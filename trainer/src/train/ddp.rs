//! The data-parallel side of a run (see the [`super`] module documentation): gradient
//! all-reduce in buckets, ZeRO-1 reduce-scatter / all-gather and optimiser sharding.

use std::time::Duration;

use polylm_engine::{AdamW, DType, Device, Tensor};
use polylm_model::Gpt;

use crate::config::RunConfig;
use crate::dist::{self, BackendChoice, Collective, World};
use crate::error::{Result, TrainError};

use super::{hyper_of, weight_decays};

/// The data-parallel side of a run: the collective and how gradients travel.
pub(super) struct DataParallel {
    pub(super) comm: Box<dyn Collective>,
    pub(super) rank: usize,
    pub(super) world: usize,
    /// f32 elements per gradient all-reduce bucket.
    pub(super) bucket_elems: usize,
    /// With ZeRO-1: the rank owning each parameter's optimiser state.
    pub(super) owner: Option<Vec<usize>>,
}

/// The values of `t` as f32 (widened from bf16/f16, narrowed from f64).
pub(super) fn values_f32(t: &Tensor) -> Result<Vec<f32>> {
    if t.dtype() == DType::F32 {
        Ok(t.to_vec::<f32>()?)
    } else {
        Ok(t.to_vec_f64().into_iter().map(|x| x as f32).collect())
    }
}

/// `p`'s accumulated gradient as f32 (zeros when it has none).
pub(super) fn grad_f32(p: &Tensor) -> Result<Vec<f32>> {
    match p.grad() {
        Some(g) => values_f32(&g),
        None => Ok(vec![0.0; p.numel()]),
    }
}

/// Makes `values` the gradient of leaf `p`.
pub(super) fn set_grad(p: &Tensor, values: Vec<f32>) -> Result<()> {
    let mut g = Tensor::from_vec(values, p.shape())?;
    if p.dtype() != DType::F32 {
        g = g.to_dtype(p.dtype())?;
    }
    Ok(p.set_grad(&g.to_device(p.device())?)?)
}

/// A parameter tensor of `p`'s shape, dtype and device holding `values`.
pub(super) fn param_from(p: &Tensor, values: Vec<f32>) -> Result<Tensor> {
    let mut t = Tensor::from_vec(values, p.shape())?;
    if p.dtype() != DType::F32 {
        t = t.to_dtype(p.dtype())?;
    }
    Ok(t.to_device(p.device())?.requires_grad())
}

pub(super) fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

impl DataParallel {
    /// Joins the world as `config` says.
    pub(super) fn connect(world: &World, config: &RunConfig, device: Device) -> Result<DataParallel> {
        let choice = BackendChoice::parse(&config.dist.backend)?;
        let timeout = Duration::from_secs_f64(config.dist.timeout_s);
        let comm = dist::connect(world, choice, !device.is_cpu(), timeout)?;
        let bucket_elems = ((config.dist.bucket_mb * 1024.0 * 1024.0 / 4.0) as usize).max(1);
        Ok(DataParallel { comm, rank: world.rank, world: world.world_size, bucket_elems, owner: None })
    }

    /// Fails unless every rank has the same config and the same parameters as rank 0.
    pub(super) fn check_same_start(&mut self, config: &RunConfig, model: &Gpt) -> Result<()> {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        fnv1a(&mut hash, serde_json::to_string(config).unwrap_or_default().as_bytes());
        for (name, p) in model.params().named() {
            fnv1a(&mut hash, name.as_bytes());
            for x in values_f32(p)? {
                fnv1a(&mut hash, &x.to_le_bytes());
            }
        }
        let mine = hash.to_le_bytes().to_vec();
        let mut root = mine.clone();
        self.comm.broadcast_bytes(&mut root, 0)?;
        if root != mine {
            return Err(TrainError::Usage(format!(
                "rank {}: the run config or the starting parameters differ from rank 0's (start every \
                 rank with the same config, checkpoint and binary)",
                self.rank
            )));
        }
        Ok(())
    }

    /// The mean over ranks of `x`.
    pub(super) fn mean(&mut self, x: f64) -> Result<f64> {
        let mut v = [x];
        self.comm.all_reduce_sum_f64(&mut v)?;
        Ok(v[0] / self.world as f64)
    }

    /// Sums every parameter's gradient over the ranks, in buckets of at most `bucket_elems`
    /// values (a larger tensor is a bucket of its own).
    pub(super) fn all_reduce_grads(&mut self, model: &Gpt) -> Result<()> {
        let named = model.params().named();
        let params: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
        let mut start = 0;
        while start < params.len() {
            let mut end = start + 1;
            let mut size = params[start].numel();
            while end < params.len() && size + params[end].numel() <= self.bucket_elems {
                size += params[end].numel();
                end += 1;
            }
            let mut bucket = Vec::with_capacity(size);
            for p in &params[start..end] {
                bucket.extend(grad_f32(p)?);
            }
            self.comm.all_reduce_sum(&mut bucket)?;
            let mut at = 0;
            for p in &params[start..end] {
                let n = p.numel();
                set_grad(p, bucket[at..at + n].to_vec())?;
                at += n;
            }
            start = end;
        }
        Ok(())
    }

    /// ZeRO-1: reduce-scatters the gradients so that each rank holds the summed gradients of
    /// the parameters it owns (the others' are dropped); returns the global Σ g² of the summed
    /// gradients.
    pub(super) fn reduce_scatter_grads(&mut self, model: &Gpt, owner: &[usize]) -> Result<f64> {
        let named = model.params().named();
        let params: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
        let mut flat = Vec::new();
        let mut counts = vec![0usize; self.world];
        for (r, count) in counts.iter_mut().enumerate() {
            for (i, p) in params.iter().enumerate() {
                if owner[i] == r {
                    flat.extend(grad_f32(p)?);
                    *count += p.numel();
                }
            }
        }
        let mine = self.comm.reduce_scatter_sum(&flat, &counts)?;
        drop(flat);
        let mut sum_sq = mine.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
        let mut at = 0;
        for (i, p) in params.iter().enumerate() {
            if owner[i] == self.rank {
                let n = p.numel();
                set_grad(p, mine[at..at + n].to_vec())?;
                at += n;
            } else {
                p.zero_grad();
            }
        }
        let mut v = [sum_sq];
        self.comm.all_reduce_sum_f64(&mut v)?;
        sum_sq = v[0];
        Ok(sum_sq)
    }

    /// ZeRO-1: every rank gets the updated parameters of every other rank.
    pub(super) fn all_gather_params(&mut self, model: &mut Gpt, owner: &[usize]) -> Result<()> {
        let mut counts = vec![0usize; self.world];
        let mut own = Vec::new();
        for (i, (_, p)) in model.params().named().iter().enumerate() {
            counts[owner[i]] += p.numel();
            if owner[i] == self.rank {
                own.extend(values_f32(p)?);
            }
        }
        let all = self.comm.all_gather(&own, &counts)?;
        drop(own);
        let mut starts = vec![0usize; self.world];
        for r in 1..self.world {
            starts[r] = starts[r - 1] + counts[r - 1];
        }
        for (i, (_, p)) in model.params_mut().named_mut().into_iter().enumerate() {
            let r = owner[i];
            let n = p.numel();
            if r != self.rank {
                *p = param_from(p, all[starts[r]..starts[r] + n].to_vec())?;
            }
            starts[r] += n;
        }
        Ok(())
    }

    /// ZeRO-1: the whole optimiser, gathered from every rank's share (on every rank).
    pub(super) fn gather_optimizer(
        &mut self,
        model: &Gpt,
        shard: &AdamW,
        owner: &[usize],
        config: &RunConfig,
    ) -> Result<AdamW> {
        let named = model.params().named();
        let mut counts = vec![0usize; self.world];
        for (i, (_, p)) in named.iter().enumerate() {
            counts[owner[i]] += 3 * p.numel();
        }
        let mut own = Vec::with_capacity(counts[self.rank]);
        for parts in shard.state() {
            for t in &parts {
                own.extend(values_f32(t)?);
            }
        }
        let all = self.comm.all_gather(&own, &counts)?;
        drop(own);
        let mut starts = vec![0usize; self.world];
        for r in 1..self.world {
            starts[r] = starts[r - 1] + counts[r - 1];
        }
        let mut states = Vec::with_capacity(named.len());
        for (i, (_, p)) in named.iter().enumerate() {
            let r = owner[i];
            let n = p.numel();
            let mut three = Vec::with_capacity(3);
            for _ in 0..3 {
                three.push(Tensor::from_vec(all[starts[r]..starts[r] + n].to_vec(), p.shape())?);
                starts[r] += n;
            }
            let [master, m, v]: [Tensor; 3] = three
                .try_into()
                .map_err(|_| TrainError::Usage("optimizer gather bookkeeping (internal error)".into()))?;
            states.push([master, m, v]);
        }
        let params: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
        let decays = weight_decays(model, config.optim.weight_decay);
        Ok(AdamW::from_state(&params, &decays, hyper_of(config), shard.steps(), states)?)
    }
}

/// ZeRO-1: this rank's share of a whole optimiser.
pub(super) fn shard_optimizer(
    full: &AdamW,
    model: &Gpt,
    owner: &[usize],
    rank: usize,
    config: &RunConfig,
) -> Result<AdamW> {
    let named = model.params().named();
    let decays = weight_decays(model, config.optim.weight_decay);
    let state = full.state();
    let (mut params, mut own_decays, mut own_state) = (Vec::new(), Vec::new(), Vec::new());
    for (i, ((_, p), st)) in named.iter().zip(state).enumerate() {
        if owner[i] == rank {
            params.push(*p);
            own_decays.push(decays[i]);
            own_state.push(st);
        }
    }
    Ok(AdamW::from_state(&params, &own_decays, hyper_of(config), full.steps(), own_state)?)
}
