//! The NCCL collective backend through `cudarc::nccl`.
//!
//! It ran on one H200 at world size 1 (2026-11-30: `polylm bench --ddp nccl`, PolyLM-1.7B, 5.6%
//! over the plain step); its tests (`trainer/tests/nccl.rs`) and runs on several GPUs have not
//! yet run. It follows the cudarc API and NCCL's documented semantics:
//!
//! - rank 0 creates the NCCL unique id and hands its 128 bytes to the others through the TCP
//!   [`rendezvous`] (whose connections then carry the small control
//!   messages, [`Collective::broadcast_bytes`]);
//! - each rank opens CUDA device `LOCAL_RANK` and builds its communicator with
//!   `ncclCommInitRank` on that device's default stream;
//! - the communicator runs on the engine's stream of that GPU (the one every tensor op on it
//!   runs on), so a collective on a GPU tensor is ordered after the ops that made it and before
//!   the ops that read its result, with no synchronisation and no host copy: the tensor
//!   collectives ([`Collective::all_reduce_sum_tensor`] and the others, which the training
//!   loop's gradient buckets go through) reduce GPU tensors where they lie;
//! - the host-buffer collectives copy the buffer to the device, run the NCCL collective, and
//!   copy the result back (losses, norms, checkpoint gathers); reduce-scatter and all-gather
//!   do so through the tensor ones;
//! - NCCL's reduce-scatter and all-gather need equal shares; ZeRO-1's shares are whole
//!   tensors and far from equal, so they run as one grouped reduce (or broadcast) per rank of
//!   exactly its share: no padding.
//!
//! NCCL sums in its own (ring or tree) order, so unlike the TCP backend the result is not the
//! sequential sum, but NCCL gives every rank the same bits for a fixed topology.
//!
//! Hangs: the rendezvous and control messages have the timeout. An NCCL collective waiting on
//! a hung or dead peer blocks the GPU stream, which no socket timeout reaches, so every
//! collective is put under a [`Watchdog`] (an event recorded after it, queried by a thread):
//! one still incomplete after `[dist] timeout_s` ends the process with a message naming the
//! collective, and the launcher stops the other ranks.
//!
//! How the library is found: cudarc loads `libnccl.so` (and `.so.2x`) by name through
//! `dlopen`; the pip wheel `nvidia-nccl-cu13` ships only `libnccl.so.2`, so put a symlink named
//! `libnccl.so` to it on `LD_LIBRARY_PATH` (see `docs/distributed.md`).

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{sys as cuda_sys, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop};
use cudarc::nccl::safe::{group_end, group_start, Comm, Id, ReduceOp};
use polylm_engine::{CudaDevice, Device, Tensor};

use super::rendezvous::{self, Rendezvous};
use super::tcp::TcpCollective;
use super::watchdog::Watchdog;
use super::{check_counts, check_gather, Collective, DistError, Result, World};

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
    /// This rank's GPU, where the host-buffer reduce-scatter and all-gather run.
    device: Device,
    control: TcpCollective,
    /// Ends the process when a collective has not completed within the timeout.
    watchdog: Watchdog,
    /// Collectives enqueued so far (named in the watchdog's message).
    issued: u64,
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
        // The engine's device (and stream) of this GPU: collectives on its tensors then run in
        // order with the ops on them.
        let device = polylm_engine::cuda_device(world.local_rank)
            .map_err(|e| DistError::Nccl(format!("opening the GPU of LOCAL_RANK: {e}")))?;
        let stream = device.stream().clone();
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
        // ncclCommInitRank takes the calling thread's current device: make it this GPU's.
        stream.context().bind_to_thread().map_err(cuda_err("making the GPU of LOCAL_RANK current"))?;
        let comm = Comm::from_rank(stream.clone(), world.rank, world.world_size, Id::uninit(internal))
            .map_err(nccl_err("ncclCommInitRank"))?;
        Ok(NcclCollective {
            rank: world.rank,
            world: world.world_size,
            comm,
            stream,
            device: Device::Cuda(world.local_rank),
            control: TcpCollective::from_rendezvous(r),
            watchdog: Watchdog::exiting(world.rank, timeout),
            issued: 0,
        })
    }

    /// Puts the collective just enqueued, `what` of `values` values, under the watchdog: an
    /// event recorded after it on the stream, which the watchdog queries.
    fn watch(&mut self, what: &str, values: usize) -> Result<()> {
        self.issued += 1;
        let event =
            self.stream.record_event(None).map_err(cuda_err("recording an event after a collective"))?;
        let probe = move || -> std::result::Result<bool, String> {
            event.context().bind_to_thread().map_err(|e| format!("{e:?}"))?;
            event.try_is_complete().map_err(|e| format!("{e:?}"))
        };
        self.watchdog.watch(format!("#{} ({what} of {values} values)", self.issued), Box::new(probe));
        Ok(())
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
        self.watch(what, buf.len())?;
        let host = self.stream.clone_dtoh(&dev).map_err(cuda_err("device to host copy"))?;
        buf.copy_from_slice(&host);
        Ok(())
    }

    /// `values` as a 1-D tensor on this rank's GPU, for the host-buffer collectives that run
    /// through the tensor ones.
    fn upload(&self, values: &[f32]) -> Result<Tensor> {
        Ok(Tensor::from_slice(values, &[values.len()])?.to_device(self.device)?)
    }

    /// Runs `op` on a GPU tensor's device address and a new buffer of `out_len` values (see
    /// [`Tensor::cuda_f32_out_of_place`]).
    fn on_tensor(
        &mut self,
        input: &Tensor,
        out_len: usize,
        what: &'static str,
        op: impl FnOnce(&Comm, &RawF32, &mut RawF32) -> std::result::Result<(), cudarc::nccl::result::NcclError>,
    ) -> Result<Tensor> {
        let comm = &self.comm;
        let stream = &self.stream;
        let len = input.numel();
        let enqueue = |src: u64, dst: u64, dev: &CudaDevice| -> std::result::Result<(), String> {
            if !Arc::ptr_eq(dev.stream(), stream) {
                return Err(format!(
                    "{what}: the tensor is on cuda:{}, the communicator on the GPU of LOCAL_RANK",
                    dev.ordinal()
                ));
            }
            let send = RawF32 { ptr: src, len, stream: stream.clone() };
            let mut recv = RawF32 { ptr: dst, len: out_len, stream: stream.clone() };
            op(comm, &send, &mut recv).map_err(|e| format!("{what}: {e:?}"))
        };
        // SAFETY: the NCCL collectives enqueue on the communicator's stream, which `enqueue`
        // checked is the tensor's device stream; the callers' `op`s read within the `len`
        // values of the send buffer (ranges of it laid out by counts that add up to `len`) and
        // write the whole receive buffer of `out_len` (the all-reduce's `len`, this rank's
        // share, or all the shares).
        let result = unsafe { input.cuda_f32_out_of_place(out_len, enqueue) };
        let out = result.map_err(|e| DistError::Nccl(e.to_string()))?;
        self.watch(what, len)?;
        Ok(out)
    }
}

/// Runs `calls` between `ncclGroupStart` and `ncclGroupEnd` (ended even when a call fails,
/// so no group stays open), so NCCL launches them as one operation.
fn grouped(
    calls: impl FnOnce() -> std::result::Result<(), cudarc::nccl::result::NcclError>,
) -> std::result::Result<(), cudarc::nccl::result::NcclError> {
    group_start()?;
    let result = calls();
    let ended = group_end();
    result?;
    ended.map(|_| ())
}

/// Calls `call(root, start, len)` for each rank's non-empty share of a buffer laid out by
/// `counts`, all in one NCCL group (one collective per rank, launched together).
fn per_share(
    counts: &[usize],
    mut call: impl FnMut(usize, usize, usize) -> std::result::Result<(), cudarc::nccl::result::NcclError>,
) -> std::result::Result<(), cudarc::nccl::result::NcclError> {
    grouped(|| {
        let mut at = 0;
        for (root, &n) in counts.iter().enumerate() {
            if n > 0 {
                call(root, at, n)?;
            }
            at += n;
        }
        Ok(())
    })
}

/// A device range of f32 values on the communicator's stream, as cudarc's NCCL calls take it.
/// The tensors it points into are owned by the engine, whose ops run on the same stream, so
/// there is nothing to record or wait for.
struct RawF32 {
    ptr: u64,
    len: usize,
    stream: Arc<CudaStream>,
}

impl RawF32 {
    /// The `len` values from element `start`.
    fn range(&self, start: usize, len: usize) -> RawF32 {
        RawF32 {
            ptr: self.ptr + (start * std::mem::size_of::<f32>()) as u64,
            len,
            stream: self.stream.clone(),
        }
    }
}

impl DeviceSlice<f32> for RawF32 {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl DevicePtr<f32> for RawF32 {
    fn device_ptr<'a>(&'a self, _stream: &'a CudaStream) -> (cuda_sys::CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Record(None))
    }
}

impl DevicePtrMut<f32> for RawF32 {
    fn device_ptr_mut<'a>(&'a mut self, _stream: &'a CudaStream) -> (cuda_sys::CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr, SyncOnDrop::Record(None))
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
        let mut run = || -> Result<f64> {
            let mut buf = self.stream.alloc_zeros::<f32>(elems.max(1)).map_err(cuda_err("allocation"))?;
            // Enqueues `times` all-reduces, puts the last under the watchdog (not each one: the
            // event would be timed too) and waits for them.
            let mut timed = |times: usize| -> Result<f64> {
                let start = std::time::Instant::now();
                for _ in 0..times {
                    self.comm
                        .all_reduce_in_place(&mut buf, &ReduceOp::Sum)
                        .map_err(nccl_err("ncclAllReduce"))?;
                }
                self.watch("ncclAllReduce (benchmark)", elems)?;
                self.stream.synchronize().map_err(cuda_err("synchronising the stream"))?;
                Ok(start.elapsed().as_secs_f64())
            };
            timed(1)?;
            Ok(timed(iters.max(1))? / iters.max(1) as f64)
        };
        Some(run())
    }

    fn all_reduce_sum_tensor(&mut self, t: &Tensor) -> Result<Tensor> {
        if t.device().is_cpu() {
            return super::tensor::all_reduce_via_host(self, t);
        }
        let op =
            |c: &Comm, send: &RawF32, recv: &mut RawF32| c.all_reduce(send, recv, &ReduceOp::Sum).map(|_| ());
        self.on_tensor(t, t.numel(), "ncclAllReduce", op)
    }

    fn reduce_scatter_sum_tensor(&mut self, input: &Tensor, counts: &[usize]) -> Result<Tensor> {
        if input.device().is_cpu() {
            return super::tensor::reduce_scatter_via_host(self, input, counts);
        }
        check_counts(self.rank, self.world, counts, input.numel(), "reduce_scatter")?;
        // Ragged shares without padding: one reduce to each rank of its share, grouped so NCCL
        // runs them as one collective.
        let rank = self.rank;
        let op = |c: &Comm, send: &RawF32, recv: &mut RawF32| {
            per_share(counts, |root, at, n| {
                let to = (root == rank).then_some(&mut *recv);
                c.reduce(&send.range(at, n), to, &ReduceOp::Sum, root as i32).map(|_| ())
            })
        };
        self.on_tensor(input, counts[rank], "ncclReduce (grouped reduce-scatter)", op)
    }

    fn all_gather_tensor(&mut self, own: &Tensor, counts: &[usize]) -> Result<Tensor> {
        if own.device().is_cpu() {
            return super::tensor::all_gather_via_host(self, own, counts);
        }
        check_gather(self.rank, self.world, counts, own.numel())?;
        let total = counts.iter().sum();
        // Ragged shares without padding: one broadcast from each rank, grouped.
        let rank = self.rank;
        let op = |c: &Comm, send: &RawF32, recv: &mut RawF32| {
            per_share(counts, |root, at, n| {
                c.broadcast((root == rank).then_some(send), &mut recv.range(at, n), root as i32).map(|_| ())
            })
        };
        self.on_tensor(own, total, "ncclBroadcast (grouped all-gather)", op)
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
        let t = self.upload(input)?;
        Ok(self.reduce_scatter_sum_tensor(&t, counts)?.to_vec::<f32>()?)
    }

    fn all_gather(&mut self, own: &[f32], counts: &[usize]) -> Result<Vec<f32>> {
        let t = self.upload(own)?;
        Ok(self.all_gather_tensor(&t, counts)?.to_vec::<f32>()?)
    }
}
