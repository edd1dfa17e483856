//! The NCCL collective backend through `cudarc::nccl`.
//!
//! **Unverified: this backend compiles but has not yet run on a GPU** (the machines it was
//! written on have none). It follows the cudarc API and NCCL's documented semantics:
//!
//! - rank 0 creates the NCCL unique id and hands its 128 bytes to the others through the TCP
//!   [`rendezvous`] (whose connections then carry the small control
//!   messages, [`Collective::broadcast_bytes`]);
//! - each rank opens CUDA device `LOCAL_RANK` and builds its communicator with
//!   `ncclCommInitRank` on that device's default stream;
//! - the collectives of the [`Collective`] interface take host buffers, so each call copies
//!   the buffer to the device, runs the NCCL collective, and copies the result back. That is
//!   correct but not the fast path: a device-resident bucket path (gradients reduced where they
//!   are, overlapping the backward pass) is left to do;
//! - ragged reduce-scatter and all-gather are padded to the largest share (NCCL needs equal
//!   counts).
//!
//! NCCL sums in its own (ring or tree) order, so unlike the TCP backend the result is not the
//! sequential sum, but NCCL gives every rank the same bits for a fixed topology.
//!
//! Hangs: the rendezvous and control messages have the timeout; an NCCL collective waiting on
//! a dead peer is not yet aborted by a watchdog (`ncclCommGetAsyncError` + abort is left to
//! do), so a run relies on the launcher stopping the other ranks when one exits.
//!
//! How the library is found: cudarc loads `libnccl.so` (and `.so.2x`) by name through
//! `dlopen`; the pip wheel `nvidia-nccl-cu13` ships only `libnccl.so.2`, so put a symlink named
//! `libnccl.so` to it on `LD_LIBRARY_PATH` (see `docs/distributed.md`).

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::safe::{Comm, Id, ReduceOp};

use super::rendezvous::{self, Rendezvous};
use super::tcp::TcpCollective;
use super::{check_counts, Collective, DistError, Result, World};

/// Whether the CUDA driver and NCCL libraries can be loaded.
pub fn available() -> bool {
    // SAFETY: these only try to dlopen the libraries; they do not call into them.
    unsafe { cudarc::driver::sys::is_culib_present() && cudarc::nccl::sys::is_culib_present() }
}

/// NCCL collectives for one rank (see the module documentation; unverified on a GPU).
pub struct NcclCollective {
    rank: usize,
    world: usize,
    comm: Comm,
    stream: Arc<CudaStream>,
    control: TcpCollective,
}

// SAFETY: the communicator is owned, never shared: it moves between threads (the training loop
// hands it to its communication thread for a step and takes it back) but is used by one
// thread at a time, which NCCL allows; the CUDA calls go through cudarc's stream, which binds
// its context to the calling thread, and `CudaStream` and `TcpCollective` are `Send`
// themselves. Only the raw `ncclComm_t` inside `Comm` keeps the compiler from deriving it.
unsafe impl Send for NcclCollective {}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective").field("rank", &self.rank).field("world", &self.world).finish()
    }
}

fn nccl_err(what: &str) -> impl FnOnce(cudarc::nccl::result::NcclError) -> DistError + '_ {
    move |e| DistError::Nccl(format!("{what}: {e:?}"))
}

fn cuda_err(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> DistError + '_ {
    move |e| DistError::Nccl(format!("{what}: {e:?}"))
}

impl NcclCollective {
    /// Opens GPU `LOCAL_RANK`, exchanges the unique id through the rendezvous and builds the
    /// communicator.
    pub fn connect(world: &World, timeout: Duration) -> Result<NcclCollective> {
        if !available() {
            return Err(DistError::Nccl(
                "libcuda or libnccl cannot be loaded (put a `libnccl.so` link to the NCCL library on \
                 LD_LIBRARY_PATH, or use [dist] backend = \"tcp\")"
                    .into(),
            ));
        }
        let ctx = CudaContext::new(world.local_rank).map_err(cuda_err("opening the GPU of LOCAL_RANK"))?;
        let stream = ctx.default_stream();
        let payload: Vec<u8> = if world.is_root() {
            let id = Id::new().map_err(nccl_err("ncclGetUniqueId"))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        let r: Rendezvous = rendezvous::rendezvous(world, &payload, timeout)?;
        if r.payload.len() != 128 {
            return Err(DistError::Protocol {
                rank: world.rank,
                reason: format!("the NCCL unique id from rank 0 has {} bytes, not 128", r.payload.len()),
            });
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, &s) in internal.iter_mut().zip(&r.payload) {
            *d = s as std::ffi::c_char;
        }
        let comm = Comm::from_rank(stream.clone(), world.rank, world.world_size, Id::uninit(internal))
            .map_err(nccl_err("ncclCommInitRank"))?;
        Ok(NcclCollective {
            rank: world.rank,
            world: world.world_size,
            comm,
            stream,
            control: TcpCollective::from_rendezvous(r),
        })
    }

    /// Copies `buf` to the device, runs `op` on it in place, copies it back.
    fn on_device<T>(
        &mut self,
        buf: &mut [T],
        what: &str,
        op: impl FnOnce(
            &Comm,
            &mut cudarc::driver::CudaSlice<T>,
        ) -> std::result::Result<(), cudarc::nccl::result::NcclError>,
    ) -> Result<()>
    where
        T: cudarc::driver::DeviceRepr + cudarc::nccl::safe::NcclType + Copy,
    {
        if buf.is_empty() {
            return Ok(());
        }
        let mut dev = self.stream.clone_htod(&*buf).map_err(cuda_err("host to device copy"))?;
        op(&self.comm, &mut dev).map_err(nccl_err(what))?;
        let host = self.stream.clone_dtoh(&dev).map_err(cuda_err("device to host copy"))?;
        buf.copy_from_slice(&host);
        Ok(())
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        self.on_device(buf, "ncclAllReduce", |c, d| c.all_reduce_in_place(d, &ReduceOp::Sum).map(|_| ()))
    }

    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        self.on_device(buf, "ncclAllReduce", |c, d| c.all_reduce_in_place(d, &ReduceOp::Sum).map(|_| ()))
    }

    fn device_all_reduce_seconds(&mut self, elems: usize, iters: usize) -> Option<Result<f64>> {
        let run = || -> Result<f64> {
            let mut buf = self.stream.alloc_zeros::<f32>(elems.max(1)).map_err(cuda_err("allocation"))?;
            let mut once = || -> Result<()> {
                self.comm.all_reduce_in_place(&mut buf, &ReduceOp::Sum).map_err(nccl_err("ncclAllReduce"))?;
                Ok(())
            };
            once()?;
            self.stream.synchronize().map_err(cuda_err("synchronising the stream"))?;
            let start = std::time::Instant::now();
            for _ in 0..iters.max(1) {
                once()?;
            }
            self.stream.synchronize().map_err(cuda_err("synchronising the stream"))?;
            Ok(start.elapsed().as_secs_f64() / iters.max(1) as f64)
        };
        Some(run())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        if root >= self.world {
            return Err(DistError::Usage(format!("broadcast from rank {root} of {}", self.world)));
        }
        self.on_device(buf, "ncclBroadcast", |c, d| c.broadcast_in_place(d, root as i32).map(|_| ()))
    }

    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        self.control.broadcast_bytes(bytes, root)
    }

    fn barrier(&mut self) -> Result<()> {
        let mut one = [0f32];
        self.all_reduce_sum(&mut one)?;
        self.control.barrier()
    }

    fn reduce_scatter_sum(&mut self, input: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        check_counts(self.rank, self.world, counts, input.len(), "reduce_scatter")?;
        let m = counts.iter().copied().max().unwrap_or(0);
        if m == 0 {
            return Ok(Vec::new());
        }
        let mut padded = vec![0f32; m * self.world];
        let mut at = 0;
        for (r, &c) in counts.iter().enumerate() {
            padded[r * m..r * m + c].copy_from_slice(&input[at..at + c]);
            at += c;
        }
        let send = self.stream.clone_htod(&padded).map_err(cuda_err("host to device copy"))?;
        let mut recv = self.stream.alloc_zeros::<f32>(m).map_err(cuda_err("allocation"))?;
        self.comm.reduce_scatter(&send, &mut recv, &ReduceOp::Sum).map_err(nccl_err("ncclReduceScatter"))?;
        let mut out = self.stream.clone_dtoh(&recv).map_err(cuda_err("device to host copy"))?;
        out.truncate(counts[self.rank]);
        Ok(out)
    }

    fn all_gather(&mut self, own: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        check_counts(self.rank, self.world, counts, counts.iter().sum(), "all_gather")?;
        if own.len() != counts[self.rank] {
            return Err(DistError::Usage(format!(
                "all_gather on rank {}: {} values, counts say {}",
                self.rank,
                own.len(),
                counts[self.rank]
            )));
        }
        let m = counts.iter().copied().max().unwrap_or(0);
        if m == 0 {
            return Ok(Vec::new());
        }
        let mut mine = vec![0f32; m];
        mine[..own.len()].copy_from_slice(own);
        let send = self.stream.clone_htod(&mine).map_err(cuda_err("host to device copy"))?;
        let mut recv = self.stream.alloc_zeros::<f32>(m * self.world).map_err(cuda_err("allocation"))?;
        self.comm.all_gather(&send, &mut recv).map_err(nccl_err("ncclAllGather"))?;
        let padded = self.stream.clone_dtoh(&recv).map_err(cuda_err("device to host copy"))?;
        let mut out = Vec::with_capacity(counts.iter().sum());
        for (r, &c) in counts.iter().enumerate() {
            out.extend_from_slice(&padded[r * m..r * m + c]);
        }
        Ok(out)
    }
}
