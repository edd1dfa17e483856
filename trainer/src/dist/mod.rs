//! Data-parallel training: the world of ranks, the collectives they talk through, the
//! rendezvous that connects them, and the launcher that starts them.
//!
//! - [`World`] reads the usual launcher environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//!   `MASTER_ADDR`, `MASTER_PORT`); with no `WORLD_SIZE` (or `WORLD_SIZE=1`) a run is a plain
//!   single process and nothing here is used.
//! - [`Collective`] is the interface the training loop uses: sums, broadcasts, a barrier,
//!   reduce-scatter and all-gather of f32 buffers on the host, and the sums, reduce-scatter and
//!   all-gather of f32 tensors (gradient buckets), which NCCL runs on the GPU where they lie
//!   and the TCP backend through the host ([`tensor`]). Two backends implement it:
//!   [`tcp::TcpCollective`] (CPU, over TCP; deterministic: every rank gets bit-identical
//!   sums, added in rank order) and [`nccl::NcclCollective`] (NCCL through cudarc; run on one
//!   GPU only so far, see its module).
//! - [`rendezvous`] connects the ranks: rank 0 listens on `MASTER_ADDR:MASTER_PORT`, the others
//!   connect with retries, every wait has a deadline, and a rank that never arrives is named in
//!   the error. Rank 0 hands every rank a payload (the NCCL unique id).
//! - [`launch`] is `polylm launch`: it starts one process per local rank with the environment
//!   set, forwards the first failure's exit status and stops the other ranks.
//!
//! Every blocking network call has a timeout (`[dist] timeout_s`), so a rank that dies or hangs
//! makes the others stop with an error naming it instead of waiting forever.

use std::time::Duration;

pub mod launch;
pub mod nccl;
pub mod rendezvous;
pub mod tcp;
pub mod tensor;
pub mod watchdog;

use polylm_engine::Tensor;

/// What can go wrong between ranks.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A launcher environment variable that is missing or malformed.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Some ranks never joined the rendezvous in time.
    #[error("rendezvous on {addr}: rank(s) {missing:?} of {world} did not arrive within {secs} s")]
    Missing {
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// The ranks that never connected.
        missing: Vec<usize>,
        /// The world size.
        world: usize,
        /// The timeout.
        secs: u64,
    },
    /// Rank 0 could not be reached.
    #[error("rank {rank}: could not reach rank 0 at {addr} within {secs} s ({last})")]
    Unreachable {
        /// This rank.
        rank: usize,
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// The timeout.
        secs: u64,
        /// The last connection error.
        last: String,
    },
    /// A peer sent nothing within the timeout (it hangs, or is far behind).
    #[error(
        "rank {rank}: timed out after {secs} s waiting for rank {peer} during {op} (is it hung or dead?)"
    )]
    Timeout {
        /// This rank.
        rank: usize,
        /// The peer waited for.
        peer: usize,
        /// The collective.
        op: &'static str,
        /// The timeout.
        secs: u64,
    },
    /// A peer closed its connection or the network failed.
    #[error("rank {rank}: lost the connection to rank {peer} during {op} (it exited or crashed?): {source}")]
    PeerLost {
        /// This rank.
        rank: usize,
        /// The peer.
        peer: usize,
        /// The collective.
        op: &'static str,
        /// The socket error.
        source: std::io::Error,
    },
    /// A peer sent something other than what the protocol expects, or the ranks disagree.
    #[error("rank {rank}: {reason}")]
    Protocol {
        /// This rank.
        rank: usize,
        /// What was wrong.
        reason: String,
    },
    /// A local socket could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// NCCL or CUDA failed or is absent.
    #[error("nccl: {0}")]
    Nccl(String),
    /// Bad arguments to a collective (sizes that do not add up) or to the launcher.
    #[error("{0}")]
    Usage(String),
    /// A tensor op around a collective failed (moving a bucket between host and device).
    #[error(transparent)]
    Tensor(#[from] polylm_engine::Error),
}

/// The result type of the distributed layer.
pub type Result<T> = std::result::Result<T, DistError>;

/// One process's place among the ranks of a run, from the launcher's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Processes in the run.
    pub world_size: usize,
    /// The rank among the processes of this node (the GPU ordinal it uses).
    pub local_rank: usize,
    /// Rank 0's host (`MASTER_ADDR`).
    pub master_addr: String,
    /// Rank 0's rendezvous port (`MASTER_PORT`).
    pub master_port: u16,
}

impl World {
    /// The single-process world.
    pub fn single() -> World {
        World { rank: 0, world_size: 1, local_rank: 0, master_addr: "127.0.0.1".into(), master_port: 0 }
    }

    /// Reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` from the process
    /// environment; the single-process world when `WORLD_SIZE` is unset.
    pub fn from_env() -> Result<World> {
        World::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`World::from_env`], with the variables looked up by `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<World> {
        let Some(ws) = get("WORLD_SIZE") else {
            return Ok(World::single());
        };
        let num = |var: &'static str, text: &str| -> Result<usize> {
            text.trim()
                .parse::<usize>()
                .map_err(|e| DistError::Env { var, reason: format!("{text:?} is not a number ({e})") })
        };
        let world_size = num("WORLD_SIZE", &ws)?;
        if world_size == 0 {
            return Err(DistError::Env { var: "WORLD_SIZE", reason: "must be at least 1".into() });
        }
        let rank = match get("RANK") {
            Some(r) => num("RANK", &r)?,
            None if world_size == 1 => 0,
            None => return Err(DistError::Env { var: "RANK", reason: "unset while WORLD_SIZE > 1".into() }),
        };
        if rank >= world_size {
            return Err(DistError::Env {
                var: "RANK",
                reason: format!("{rank} is not below WORLD_SIZE {world_size}"),
            });
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(r) => num("LOCAL_RANK", &r)?,
            None => rank,
        };
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match get("MASTER_PORT") {
            Some(p) => p.trim().parse::<u16>().map_err(|e| DistError::Env {
                var: "MASTER_PORT",
                reason: format!("{p:?} is not a port number ({e})"),
            })?,
            None if world_size == 1 => 0,
            None => {
                return Err(DistError::Env {
                    var: "MASTER_PORT",
                    reason: "unset while WORLD_SIZE > 1".into(),
                })
            }
        };
        Ok(World { rank, world_size, local_rank, master_addr, master_port })
    }

    /// Whether this is rank 0 (the one that writes checkpoints, metrics and logs).
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// `MASTER_ADDR:MASTER_PORT`.
    pub fn master(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }
}

/// The collectives data-parallel training needs, on host f32 (and f64) buffers and on 1-D f32
/// tensors (which a device backend reduces where they are). Every call is collective: all ranks make the same calls in the same order with the same sizes.
///
/// A collective may move to another thread (the training loop sums gradients on a
/// communication thread while the backward pass runs), but it is used by one thread at a time.
pub trait Collective: Send {
    /// This rank.
    fn rank(&self) -> usize;
    /// Ranks in the world.
    fn world_size(&self) -> usize;
    /// The backend's name (`tcp` or `nccl`).
    fn backend(&self) -> &'static str;
    /// Replaces `buf` on every rank with the element-wise sum of all ranks' `buf`.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()>;
    /// [`Collective::all_reduce_sum`] of f64 values (losses, squared norms).
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<()>;
    /// Replaces `buf` on every rank with rank `root`'s `buf`.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Replaces `bytes` on every rank with rank `root`'s (the lengths may differ).
    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Returns when every rank has called it.
    fn barrier(&mut self) -> Result<()>;
    /// `input` (the same length on every rank, `counts` summing to it) is summed over the
    /// ranks; rank `r` gets the `counts[r]` elements of the sum that start at
    /// `counts[..r].sum()`.
    fn reduce_scatter_sum(&mut self, input: &[f32], counts: &[usize]) -> Result<Vec<f32>>;
    /// Every rank contributes `own` (`counts[rank]` elements) and gets all ranks'
    /// contributions concatenated in rank order.
    fn all_gather(&mut self, own: &[f32], counts: &[usize]) -> Result<Vec<f32>>;
    /// For a backend that reduces on a device (NCCL): seconds per in-place all-reduce of
    /// `elems` f32 values already on the device, averaged over `iters` calls after one
    /// warm-up (no host copies). `None` for a host-only backend. Collective like the others.
    fn device_all_reduce_seconds(&mut self, elems: usize, iters: usize) -> Option<Result<f64>> {
        let _ = (elems, iters);
        None
    }
    /// [`Collective::all_reduce_sum`] of a 1-D f32 tensor on any device: the sums, as a new
    /// tensor on the same device. By default through a host buffer; a device backend (NCCL)
    /// reduces GPU tensors where they are, in order with the ops on them.
    fn all_reduce_sum_tensor(&mut self, t: &Tensor) -> Result<Tensor> {
        tensor::all_reduce_via_host(self, t)
    }
    /// [`Collective::reduce_scatter_sum`] of a 1-D f32 tensor on any device: this rank's
    /// share of the sums, on the same device.
    fn reduce_scatter_sum_tensor(&mut self, input: &Tensor, counts: &[usize]) -> Result<Tensor> {
        tensor::reduce_scatter_via_host(self, input, counts)
    }
    /// [`Collective::all_gather`] of a 1-D f32 tensor on any device: every rank's `own`,
    /// concatenated in rank order, on the same device.
    fn all_gather_tensor(&mut self, own: &Tensor, counts: &[usize]) -> Result<Tensor> {
        tensor::all_gather_via_host(self, own, counts)
    }
}

/// Checks the `counts` of an all-gather and that this rank's contribution has `own` values.
pub(crate) fn check_gather(rank: usize, world: usize, counts: &[usize], own: usize) -> Result<()> {
    check_counts(rank, world, counts, counts.iter().sum(), "all_gather")?;
    if own != counts[rank] {
        return Err(DistError::Usage(format!(
            "all_gather on rank {rank}: {own} values, counts say {}",
            counts[rank]
        )));
    }
    Ok(())
}

/// Checks the `counts` of a reduce-scatter or all-gather.
pub(crate) fn check_counts(rank: usize, world: usize, counts: &[usize], len: usize, op: &str) -> Result<()> {
    if counts.len() != world {
        return Err(DistError::Usage(format!("{op}: {} counts for {world} ranks", counts.len())));
    }
    let total: usize = counts.iter().sum();
    if total != len {
        return Err(DistError::Usage(format!(
            "{op} on rank {rank}: the counts add up to {total}, the buffer has {len} elements"
        )));
    }
    Ok(())
}

/// Which backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// NCCL when the run is on a GPU and the library loads, TCP otherwise.
    Auto,
    /// The TCP backend.
    Tcp,
    /// NCCL (an error when it is not available).
    Nccl,
}

impl BackendChoice {
    /// Parses `auto`, `tcp` or `nccl`.
    pub fn parse(name: &str) -> Result<BackendChoice> {
        match name {
            "auto" => Ok(BackendChoice::Auto),
            "tcp" => Ok(BackendChoice::Tcp),
            "nccl" => Ok(BackendChoice::Nccl),
            other => Err(DistError::Usage(format!("unknown dist backend {other:?} (auto, tcp or nccl)"))),
        }
    }
}

/// Connects this rank to the others with the chosen backend; `on_gpu` says whether the run
/// trains on a GPU (which `auto` needs to pick NCCL).
pub fn connect(
    world: &World,
    choice: BackendChoice,
    on_gpu: bool,
    timeout: Duration,
) -> Result<Box<dyn Collective>> {
    let use_nccl = match choice {
        BackendChoice::Tcp => false,
        BackendChoice::Nccl => true,
        BackendChoice::Auto => on_gpu && nccl::available(),
    };
    if use_nccl {
        Ok(Box::new(nccl::NcclCollective::connect(world, timeout)?))
    } else {
        Ok(Box::new(tcp::TcpCollective::connect(world, timeout)?))
    }
}

/// Splits whole tensors of `sizes` elements among `world` ranks, balanced by size: the
/// largest first, each to the rank with the fewest elements so far (the lowest rank on a
/// tie). Returns each tensor's owner. Deterministic, so every rank computes the same split.
pub fn partition_by_size(sizes: &[usize], world: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
    let mut load = vec![0usize; world.max(1)];
    let mut owner = vec![0usize; sizes.len()];
    for i in order {
        let r = (0..load.len()).min_by_key(|&r| (load[r], r)).unwrap_or(0);
        owner[i] = r;
        load[r] += sizes[i];
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn the_world_comes_from_the_environment() {
        assert_eq!(World::from_lookup(env(&[])).unwrap(), World::single());
        let w = World::from_lookup(env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank, w.master().as_str()), (3, 4, 1, "10.0.0.1:29500"));
        let e = World::from_lookup(env(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")]));
        assert!(e.unwrap_err().to_string().contains("RANK"));
        let e = World::from_lookup(env(&[("WORLD_SIZE", "2"), ("RANK", "1")]));
        assert!(e.unwrap_err().to_string().contains("MASTER_PORT"));
        let e = World::from_lookup(env(&[("WORLD_SIZE", "x")]));
        assert!(e.unwrap_err().to_string().contains("WORLD_SIZE"));
    }

    #[test]
    fn partitions_are_balanced_and_deterministic() {
        let sizes = [100, 10, 60, 50, 5, 5];
        let owner = partition_by_size(&sizes, 2);
        let mut load = [0usize; 2];
        for (i, &o) in owner.iter().enumerate() {
            load[o] += sizes[i];
        }
        assert_eq!(load, [115, 115]);
        assert_eq!(owner, partition_by_size(&sizes, 2));
        assert!(partition_by_size(&sizes, 1).iter().all(|&o| o == 0));
    }
}
