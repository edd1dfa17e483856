//! The data-parallel side of a run (see the [`super`] module documentation): gradient
//! all-reduce (or ZeRO-1 reduce-scatter) in buckets that travel while the backward pass runs,
//! the all-gather of updated parameters, and optimiser sharding.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use polylm_engine::{global_grad_norm, AdamW, DType, Device, Tensor};
use polylm_model::Gpt;

use crate::config::RunConfig;
use crate::dist::{self, BackendChoice, Collective, World};
use crate::error::{Result, TrainError};

use super::{hyper_of, weight_decays};

/// The data-parallel side of a run: the collective and how gradients travel.
pub(crate) struct DataParallel {
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

/// The values of `t` as a 1-D f32 tensor on its device (outside the graph).
fn flat_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.detach().contiguous()?.reshape(&[t.numel()])?.to_dtype(DType::F32)?)
}

/// `p`'s accumulated gradient as a 1-D f32 tensor on `p`'s device (zeros when it has none).
fn flat_grad_f32(p: &Tensor) -> Result<Tensor> {
    match p.grad() {
        Some(g) => flat_f32(&g),
        None => flat_f32(&Tensor::zeros_like_device(&[p.numel()], p)?),
    }
}

/// The `n` values of 1-D f32 `values` from `at`, as a tensor of `p`'s shape and dtype that
/// owns its storage (on `values`' device, which is `p`'s).
fn piece_like(p: &Tensor, values: &Tensor, at: usize, n: usize) -> Result<Tensor> {
    let piece = values.narrow(0, at, n)?.reshape(p.shape())?;
    Ok(if p.dtype() == DType::F32 { piece.to_owned_dense()? } else { piece.to_dtype(p.dtype())? })
}

/// The 1-D f32 concatenation of `parts` (one part is passed through; none makes an empty
/// tensor on `like`'s device).
fn concat_flat(parts: &[Tensor], like: &Tensor) -> Result<Tensor> {
    Ok(match parts {
        [] => flat_f32(&Tensor::zeros_like_device(&[0], like)?)?,
        [one] => one.clone(),
        many => Tensor::concat(many, 0)?,
    })
}

pub(super) fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

impl DataParallel {
    /// Plain data parallel (no optimiser sharding) over `comm`, gradients summed in buckets of
    /// `bucket_elems` f32 values.
    pub(crate) fn over(comm: Box<dyn Collective>, bucket_elems: usize) -> DataParallel {
        let (rank, world) = (comm.rank(), comm.world_size());
        DataParallel { comm, rank, world, bucket_elems: bucket_elems.max(1), owner: None }
    }

    /// The collective's backend name.
    pub(crate) fn backend(&self) -> &'static str {
        self.comm.backend()
    }

    /// Ranks in the world.
    pub(crate) fn world_size(&self) -> usize {
        self.world
    }

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

    /// Runs `backward` (the step's last backward pass, which calls its argument with each
    /// parameter's index as soon as that gradient is complete) and sums the gradients over
    /// the ranks in buckets of at most `bucket_elems` f32 values (a larger tensor is a bucket
    /// of its own): plain data parallel all-reduces each bucket; with ZeRO-1 (`owner`) each
    /// bucket is reduce-scattered so that every rank keeps the sums of the parameters it owns
    /// and drops the others.
    ///
    /// With `overlap`, a bucket is handed to a communication thread as soon as it is full, so
    /// the sums of the last layers' gradients travel while the earlier layers' are being
    /// computed; without it, the buckets are filled in parameter order after the backward pass.
    /// Either way every rank fills the same buckets in the same order (the report order depends
    /// only on the architecture), and the sums are the same.
    ///
    /// Returns the loss `backward` returned, the global Σ g² of the summed gradients (of every
    /// parameter: with ZeRO-1, summed over the ranks' shares), and what overlapped.
    pub(crate) fn backward_and_reduce(
        &mut self,
        model: &Gpt,
        overlap: bool,
        backward: impl FnOnce(&mut dyn FnMut(usize)) -> Result<f64>,
    ) -> Result<(f64, f64, OverlapStats)> {
        let named = model.params().named();
        let params: Vec<&Tensor> = named.iter().map(|(_, t)| *t).collect();
        let reduction = match &self.owner {
            Some(owner) => Reduction::ReduceScatter { owner, rank: self.rank, world: self.world },
            None => Reduction::AllReduce,
        };
        let bucket_elems = self.bucket_elems;
        let comm: &mut (dyn Collective + Send) = self.comm.as_mut();
        let (loss, kept, stats) = std::thread::scope(|scope| -> Result<_> {
            let (to_comm, comm_inbox) = mpsc::channel::<Bucket>();
            let (comm_outbox, from_comm) = mpsc::channel::<Result<Vec<usize>>>();
            let reduction = &reduction;
            let shared: &[&Tensor] = &params;
            scope.spawn(move || {
                for bucket in comm_inbox {
                    let result = reduction.apply(comm, bucket, shared);
                    let failed = result.is_err();
                    if comm_outbox.send(result).is_err() || failed {
                        break;
                    }
                }
            });
            let mut filler = BucketFiller {
                params: &params,
                bucket_elems,
                to_comm,
                pending: Bucket::default(),
                sent: 0,
                error: None,
            };
            let loss = if overlap {
                backward(&mut |i| filler.add(i))?
            } else {
                let loss = backward(&mut |_| {})?;
                (0..params.len()).for_each(|i| filler.add(i));
                loss
            };
            let during_backward = if overlap { filler.sent } else { 0 };
            let waited = Instant::now();
            let buckets = filler.finish()?;
            let mut kept = vec![false; params.len()];
            let mut received = 0;
            for result in from_comm.iter().take(buckets) {
                for i in result? {
                    kept[i] = true;
                }
                received += 1;
            }
            if received < buckets {
                return Err(TrainError::Usage(
                    "the gradient communication thread stopped early (internal error)".into(),
                ));
            }
            let stats =
                OverlapStats { buckets, during_backward, wait_ms: waited.elapsed().as_secs_f64() * 1e3 };
            Ok((loss, kept, stats))
        })?;
        // The parameters this rank did not keep (with ZeRO-1, those another rank owns) have no
        // gradient here; Σ g² of the kept ones is computed where they lie, in one reduction.
        let mut own = Vec::with_capacity(params.len());
        for (p, keep) in params.iter().zip(kept) {
            if keep {
                own.push(*p);
            } else {
                p.zero_grad();
            }
        }
        let norm = global_grad_norm(&own)?;
        let mut sum_sq = norm * norm;
        if self.owner.is_some() {
            let mut v = [sum_sq];
            self.comm.all_reduce_sum_f64(&mut v)?;
            sum_sq = v[0];
        }
        Ok((loss, sum_sq, stats))
    }

    /// ZeRO-1: every rank gets the updated parameters of every other rank (on the device
    /// they live on: NCCL gathers GPU parameters there).
    pub(super) fn all_gather_params(&mut self, model: &mut Gpt, owner: &[usize]) -> Result<()> {
        let mut counts = vec![0usize; self.world];
        let mut own = Vec::new();
        let named = model.params().named();
        let Some(&(_, first)) = named.first() else { return Ok(()) };
        for (i, (_, p)) in named.iter().enumerate() {
            counts[owner[i]] += p.numel();
            if owner[i] == self.rank {
                own.push(flat_f32(p)?);
            }
        }
        let own = concat_flat(&own, first)?;
        drop(named);
        let all = self.comm.all_gather_tensor(&own, &counts)?;
        drop(own);
        let mut starts = rank_offsets(&counts);
        for (i, (_, p)) in model.params_mut().named_mut().into_iter().enumerate() {
            let r = owner[i];
            let n = p.numel();
            if r != self.rank {
                *p = piece_like(p, &all, starts[r], n)?.requires_grad();
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
        let mut starts = rank_offsets(&counts);
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

/// Where each rank's share starts in an all-gathered buffer of shares of `counts` elements.
fn rank_offsets(counts: &[usize]) -> Vec<usize> {
    counts
        .iter()
        .scan(0, |at, &c| {
            let start = *at;
            *at += c;
            Some(start)
        })
        .collect()
}

/// How much of a step's gradient communication overlapped the backward pass.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OverlapStats {
    /// Buckets the step's gradients travelled in.
    pub(crate) buckets: usize,
    /// Of those, the buckets handed to the communication thread before the backward pass ended.
    pub(crate) during_backward: usize,
    /// Milliseconds the training thread waited for the sums after the backward pass.
    pub(crate) wait_ms: f64,
}

/// Some parameters' gradients travelling together.
#[derive(Debug, Default)]
struct Bucket {
    /// `(parameter index, elements)`, in the order the gradients were reported.
    params: Vec<(usize, usize)>,
    /// Their gradients, flattened to f32 on the parameters' device.
    parts: Vec<Tensor>,
    /// Elements in all.
    len: usize,
}

/// The collective a bucket goes through.
enum Reduction<'a> {
    /// Every rank gets the sums of every parameter.
    AllReduce,
    /// ZeRO-1: every rank gets the sums of the parameters it owns.
    ReduceScatter { owner: &'a [usize], rank: usize, world: usize },
}

impl Reduction<'_> {
    /// Sums `bucket` over the ranks and makes the sums the gradients of the parameters this
    /// rank keeps (all of them, or with ZeRO-1 those it owns); returns those parameters'
    /// indices. The sums stay on the parameters' device.
    fn apply(
        &self,
        comm: &mut (dyn Collective + Send),
        bucket: Bucket,
        params: &[&Tensor],
    ) -> Result<Vec<usize>> {
        let Some(&(first, _)) = bucket.params.first() else { return Ok(Vec::new()) };
        let like = params[first];
        let (sums, kept): (Tensor, Vec<(usize, usize)>) = match self {
            Reduction::AllReduce => {
                let values = concat_flat(&bucket.parts, like)?;
                drop(bucket.parts);
                (comm.all_reduce_sum_tensor(&values)?, bucket.params)
            }
            Reduction::ReduceScatter { owner, rank, world } => {
                // Lay the bucket out rank by rank, as the reduce-scatter splits it.
                let mut counts = vec![0usize; *world];
                let mut ordered = Vec::with_capacity(bucket.parts.len());
                for (r, count) in counts.iter_mut().enumerate() {
                    for (&(i, n), part) in bucket.params.iter().zip(&bucket.parts) {
                        if owner[i] == r {
                            ordered.push(part.clone());
                            *count += n;
                        }
                    }
                }
                drop(bucket.parts);
                let input = concat_flat(&ordered, like)?;
                drop(ordered);
                let share = comm.reduce_scatter_sum_tensor(&input, &counts)?;
                (share, bucket.params.into_iter().filter(|&(i, _)| owner[i] == *rank).collect())
            }
        };
        let mut at = 0;
        for &(i, n) in &kept {
            params[i].set_grad(&piece_like(params[i], &sums, at, n)?)?;
            at += n;
        }
        Ok(kept.into_iter().map(|(i, _)| i).collect())
    }
}

/// Packs reported gradients into buckets and hands each full one to the communication thread.
struct BucketFiller<'a> {
    params: &'a [&'a Tensor],
    bucket_elems: usize,
    to_comm: mpsc::Sender<Bucket>,
    pending: Bucket,
    /// Buckets handed over so far.
    sent: usize,
    /// The first failure (reading a gradient, or the thread gone); later reports are ignored.
    error: Option<TrainError>,
}

impl BucketFiller<'_> {
    /// Adds parameter `i`'s gradient (zeros when it has none).
    fn add(&mut self, i: usize) {
        if self.error.is_some() {
            return;
        }
        let n = self.params[i].numel();
        if !self.pending.params.is_empty() && self.pending.len + n > self.bucket_elems {
            self.send();
        }
        match flat_grad_f32(self.params[i]) {
            Ok(part) => {
                self.pending.params.push((i, n));
                self.pending.parts.push(part);
                self.pending.len += n;
            }
            Err(e) => self.error = Some(e),
        }
        if self.pending.len >= self.bucket_elems {
            self.send();
        }
    }

    fn send(&mut self) {
        let bucket = std::mem::take(&mut self.pending);
        if self.to_comm.send(bucket).is_err() {
            self.error.get_or_insert(TrainError::Usage(
                "the gradient communication thread stopped (see the error that follows)".into(),
            ));
        }
        self.sent += 1;
    }

    /// Sends the last, partly filled bucket; returns how many buckets were sent in all.
    fn finish(mut self) -> Result<usize> {
        if !self.pending.params.is_empty() {
            self.send();
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(self.sent),
        }
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
