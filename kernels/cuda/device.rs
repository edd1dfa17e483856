//! One CUDA device: its context, its stream, its allocator, its compiled kernels, and the
//! typed device buffers that live on it.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{
    result as driver, sys, CudaContext, CudaFunction, CudaModule, CudaStream, LaunchArgs, LaunchConfig,
};
use cudarc::nvrtc::Ptx;
use half::{bf16, f16};

use super::alloc::{CachingAllocator, MemoryReport};
use super::error::{CudaError, CudaResult};
use super::nvrtc::{compile_cached, runtime_options, Arch};
use super::pinned::PinnedStaging;
use super::profile::{family, KernelTime, Profiler};
use super::source::KernelSource;

/// Element types that device buffers hold.
///
/// # Safety
/// The type must be plain old data whose bytes the device reads as the matching C type.
pub unsafe trait DeviceElem: bytemuck::Pod + Send + Sync + 'static {
    /// The name used in kernel names (`f32`, `bf16`, `f16`, `u32`, ...).
    const NAME: &'static str;
}
macro_rules! device_elem {
    ($($t:ty => $name:literal),*) => {
        // SAFETY: all are plain old data with the C layout of the same name.
        $(unsafe impl DeviceElem for $t {
            const NAME: &'static str = $name;
        })*
    };
}
device_elem!(f32 => "f32", bf16 => "bf16", f16 => "f16", u32 => "u32", i32 => "i32", u64 => "u64");

/// The floating-point storage types the kernels are instantiated for.
pub trait FloatElem: DeviceElem {}
impl FloatElem for f32 {}
impl FloatElem for bf16 {}
impl FloatElem for f16 {}

/// A CUDA device with one stream on which all its work is ordered.
///
/// Fields drop in order, so the context, which everything else needs, comes last.
pub struct CudaDevice {
    profiling: AtomicBool,
    profiler: Mutex<Profiler>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    staging: Mutex<PinnedStaging>,
    allocator: Mutex<CachingAllocator>,
    stream: Arc<CudaStream>,
    ordinal: usize,
    name: String,
    arch: Arch,
    ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice").field("ordinal", &self.ordinal).field("name", &self.name).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated in a way that matters.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether the environment variable `var` is `value`, read once per variable and process: the
/// kernel choices these variables make are consulted on every launch.
pub(crate) fn env_is(var: &'static str, value: &str) -> bool {
    static SEEN: Mutex<Vec<(&'static str, Option<String>)>> = Mutex::new(Vec::new());
    let mut seen = lock(&SEEN);
    let at = match seen.iter().position(|(v, _)| *v == var) {
        Some(at) => at,
        None => {
            seen.push((var, std::env::var(var).ok()));
            seen.len() - 1
        }
    };
    seen[at].1.as_deref() == Some(value)
}

/// Whether a CUDA driver and at least one device are present.
pub fn cuda_available() -> bool {
    device_count() > 0
}

/// The number of CUDA devices (0 without a driver).
pub fn device_count() -> usize {
    // SAFETY: probes dlopen only.
    if !unsafe { sys::is_culib_present() } {
        return 0;
    }
    if driver::init().is_err() {
        return 0;
    }
    driver::device::get_count().map(|n| n.max(0) as usize).unwrap_or(0)
}

impl CudaDevice {
    /// Opens device `ordinal`: a clear error, never a panic, when there is no driver or device.
    pub fn new(ordinal: usize) -> CudaResult<Arc<CudaDevice>> {
        // SAFETY: probes dlopen only; cudarc panics on a missing library, so this comes first.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::DriverMissing);
        }
        let count = device_count();
        if ordinal >= count {
            return Err(CudaError::NoDevice {
                ordinal,
                reason: format!("the driver reports {count} device(s)"),
            });
        }
        let no_device =
            |e: cudarc::driver::DriverError| CudaError::NoDevice { ordinal, reason: e.to_string() };
        let ctx = CudaContext::new(ordinal).map_err(no_device)?;
        let stream = ctx.new_stream().map_err(CudaError::driver("creating a stream"))?;
        let name = ctx.name().map_err(CudaError::driver("reading the device name"))?;
        let (major, minor) =
            ctx.compute_capability().map_err(CudaError::driver("reading the compute capability"))?;
        let arch = Arch { major: major as u32, minor: minor as u32, specific: false };
        Ok(Arc::new(CudaDevice {
            ctx,
            stream,
            ordinal,
            name,
            arch,
            allocator: Mutex::new(CachingAllocator::default()),
            staging: Mutex::new(PinnedStaging::default()),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            profiling: AtomicBool::new(false),
            profiler: Mutex::new(Profiler::default()),
        }))
    }

    /// The device index.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The marketing name, such as `NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The architecture kernels are compiled for.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The device's stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn bind(&self) -> CudaResult<()> {
        self.ctx.bind_to_thread().map_err(CudaError::driver("making the context current"))
    }

    /// Waits until all queued work has finished.
    pub fn synchronize(&self) -> CudaResult<()> {
        self.stream.synchronize().map_err(CudaError::driver("synchronising the stream"))
    }

    /// The allocator's counters.
    pub fn memory_report(&self) -> MemoryReport {
        lock(&self.allocator).report()
    }

    /// Resets the allocator's peak counters to the current use.
    pub fn reset_peak_memory(&self) {
        lock(&self.allocator).reset_peaks();
    }

    /// Returns the allocator's cached free blocks to the driver.
    pub fn release_cached_memory(&self) -> CudaResult<()> {
        self.bind()?;
        self.synchronize()?;
        lock(&self.allocator).release_cached();
        Ok(())
    }

    /// An uninitialised buffer of `len` elements.
    pub fn alloc<T: DeviceElem>(self: &Arc<Self>, len: usize) -> CudaResult<DeviceBuf<T>> {
        self.bind()?;
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            CudaError::invalid("alloc", format!("{len} elements of {} overflow usize", T::NAME))
        })?;
        let mut allocator = lock(&self.allocator);
        let reserved = allocator.report().reserved;
        let (ptr, class) =
            allocator.allocate(bytes).map_err(|_| CudaError::OutOfMemory { requested: bytes, reserved })?;
        Ok(DeviceBuf { ptr, class, len, device: Arc::clone(self), _elem: PhantomData })
    }

    /// A buffer with every byte set to `byte` (0xFF poisons floats with NaN).
    pub fn alloc_filled_bytes<T: DeviceElem>(
        self: &Arc<Self>,
        len: usize,
        byte: u8,
    ) -> CudaResult<DeviceBuf<T>> {
        let buf = self.alloc::<T>(len)?;
        self.fill_bytes(&buf, byte)?;
        Ok(buf)
    }

    /// Sets every byte of `buf` to `byte`.
    pub fn fill_bytes<T: DeviceElem>(&self, buf: &DeviceBuf<T>, byte: u8) -> CudaResult<()> {
        self.bind()?;
        self.timed("memset", || {
            // SAFETY: the range lies inside the buffer's allocation.
            unsafe { driver::memset_d8_async(buf.ptr, byte, buf.bytes(), self.stream.cu_stream()) }
                .map_err(CudaError::driver("filling a buffer"))
        })
    }

    /// Copies `data` to a new device buffer, through pinned memory.
    pub fn upload<T: DeviceElem>(self: &Arc<Self>, data: &[T]) -> CudaResult<DeviceBuf<T>> {
        let buf = self.alloc::<T>(data.len())?;
        self.write(&buf, data)?;
        Ok(buf)
    }

    /// Overwrites `buf` with `data` (same length), through pinned memory.
    pub fn write<T: DeviceElem>(&self, buf: &DeviceBuf<T>, data: &[T]) -> CudaResult<()> {
        if data.len() != buf.len {
            return Err(CudaError::invalid(
                "write",
                format!("{} host elements into a device buffer of {}", data.len(), buf.len),
            ));
        }
        self.bind()?;
        lock(&self.staging).upload(bytemuck::cast_slice(data), buf.ptr, &self.stream)
    }

    /// Copies a device buffer back to the host (waits for the queued work).
    pub fn download<T: DeviceElem>(&self, buf: &DeviceBuf<T>) -> CudaResult<Vec<T>> {
        self.bind()?;
        let mut out = vec![T::zeroed(); buf.len];
        lock(&self.staging).download(buf.ptr, bytemuck::cast_slice_mut(&mut out), &self.stream)?;
        Ok(out)
    }

    /// Device-to-device copy of `src` into `dst` (same length).
    pub fn copy<T: DeviceElem>(&self, src: &DeviceBuf<T>, dst: &mut DeviceBuf<T>) -> CudaResult<()> {
        if src.len != dst.len {
            return Err(CudaError::invalid("copy", format!("{} elements into {}", src.len, dst.len)));
        }
        self.bind()?;
        self.timed("memcpy", || {
            // SAFETY: both ranges lie inside their allocations.
            unsafe { driver::memcpy_dtod_async(dst.ptr, src.ptr, src.bytes(), self.stream.cu_stream()) }
                .map_err(CudaError::driver("copying device to device"))
        })
    }

    /// The compiled function `name` from kernel file `source` (compiled once, then cached in
    /// memory and on disk).
    pub fn function(&self, source: &KernelSource, name: &str) -> CudaResult<CudaFunction> {
        if let Some(f) = lock(&self.functions).get(name) {
            return Ok(f.clone());
        }
        self.bind()?;
        let module = {
            let mut modules = lock(&self.modules);
            match modules.get(source.name) {
                Some(m) => Arc::clone(m),
                None => {
                    let cubin = compile_cached(source, &runtime_options(source, self.arch))?;
                    let module = self
                        .ctx
                        .load_module(Ptx::from_binary(cubin))
                        .map_err(CudaError::driver("loading a compiled module"))?;
                    modules.insert(source.name, Arc::clone(&module));
                    module
                }
            }
        };
        let f = module.load_function(name).map_err(|source_err| CudaError::MissingKernel {
            name: name.to_string(),
            source_name: source.name.to_string(),
            source: source_err,
        })?;
        lock(&self.functions).insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// A launch builder for `f` on this device's stream.
    pub fn launcher<'a>(&'a self, f: &'a CudaFunction) -> CudaResult<LaunchArgs<'a>> {
        self.bind()?;
        Ok(self.stream.launch_builder(f))
    }

    /// Launches a built kernel call.
    pub(crate) fn launch(
        &self,
        mut args: LaunchArgs<'_>,
        cfg: LaunchConfig,
        what: &'static str,
    ) -> CudaResult<()> {
        if cfg.grid_dim.0 == 0 || cfg.grid_dim.1 == 0 || cfg.grid_dim.2 == 0 {
            return Ok(());
        }
        self.timed(family(what), || {
            // SAFETY: every wrapper checks that buffer lengths cover what the kernel touches.
            unsafe { args.launch(cfg) }.map(|_| ()).map_err(CudaError::driver(what))
        })
    }

    /// Runs `enqueue` (which queues work on the stream), bracketed by timing events when
    /// profiling is on.
    fn timed(&self, name: &'static str, enqueue: impl FnOnce() -> CudaResult<()>) -> CudaResult<()> {
        if !self.profiling.load(Ordering::Relaxed) {
            return enqueue();
        }
        let start = Profiler::mark(&self.stream)?;
        enqueue()?;
        let end = Profiler::mark(&self.stream)?;
        lock(&self.profiler).record(name, start, end)
    }

    /// Starts (or stops) timing every launch, copy and fill on this device, forgetting what was
    /// timed before; see [`CudaDevice::profile`].
    pub fn set_profiling(&self, on: bool) {
        let mut p = lock(&self.profiler);
        p.reset();
        self.profiling.store(on, Ordering::Relaxed);
    }

    /// The device time per kernel family since profiling was switched on, longest first
    /// (waits for the queued work).
    pub fn profile(&self) -> CudaResult<Vec<KernelTime>> {
        self.bind()?;
        let mut p = lock(&self.profiler);
        p.fold()?;
        Ok(p.rows())
    }

    /// Lets `f` launch with `bytes` of dynamic shared memory: a block may hold 48 KiB of shared
    /// memory, static and dynamic together, unless the kernel opts in to more. (The static part
    /// counts: the streamed layernorm's 48 KiB ring beside its reduction scratch was refused
    /// with `CUDA_ERROR_INVALID_VALUE` on an H200 before it did.)
    pub(crate) fn allow_shared_memory(&self, f: &CudaFunction, bytes: u32) -> CudaResult<()> {
        // The static size decides only a launch with some dynamic memory that fits the default
        // on its own; the others skip the driver query (this runs before every such launch).
        if bytes == 0 {
            return Ok(());
        }
        if bytes <= DEFAULT_SHARED_LIMIT {
            let static_bytes = f
                .get_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
                .map_err(CudaError::driver("reading a kernel's static shared memory"))?;
            if !needs_shared_opt_in(bytes, static_bytes.max(0) as u32) {
                return Ok(());
            }
        }
        f.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(CudaError::driver("raising a kernel's shared memory limit"))
    }

    /// Average milliseconds of `f` over `iters` runs (after one warm-up run), timed with CUDA
    /// events on the device's stream.
    pub fn time_ms<F: FnMut() -> CudaResult<()>>(&self, iters: usize, mut f: F) -> CudaResult<f64> {
        self.bind()?;
        f()?;
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.ctx.new_event(flags).map_err(CudaError::driver("creating an event"))?;
        let end = self.ctx.new_event(flags).map_err(CudaError::driver("creating an event"))?;
        start.record(&self.stream).map_err(CudaError::driver("recording an event"))?;
        for _ in 0..iters.max(1) {
            f()?;
        }
        end.record(&self.stream).map_err(CudaError::driver("recording an event"))?;
        end.synchronize().map_err(CudaError::driver("waiting for an event"))?;
        let ms = start.elapsed_ms(&end).map_err(CudaError::driver("reading an event timer"))?;
        Ok(f64::from(ms) / iters.max(1) as f64)
    }

    /// How many blocks of `f` (with `threads` threads and `shared` bytes of dynamic shared
    /// memory) the whole device runs at once: one full wave.
    pub(crate) fn resident_blocks(&self, f: &CudaFunction, threads: u32, shared: u32) -> usize {
        let per_sm =
            f.occupancy_max_active_blocks_per_multiprocessor(threads, shared as usize, None).unwrap_or(1);
        per_sm.max(1) as usize * self.multiprocessors()
    }

    /// The most threads a block of `f` may have, given the registers it was compiled with
    /// (`CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK`); 1024 if the driver does not say.
    pub(crate) fn max_threads(&self, f: &CudaFunction) -> u32 {
        f.get_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
            .map_or(1024, |n| n.max(32) as u32)
    }

    /// How many clusters of `cluster` blocks of `f` (whose cluster size is fixed at compile
    /// time) can be resident at once with `threads` per block and `shared` bytes of dynamic
    /// shared memory each; at least 1.
    pub(crate) fn resident_clusters(
        &self,
        f: &CudaFunction,
        threads: u32,
        shared: u32,
        cluster: usize,
    ) -> CudaResult<usize> {
        self.bind()?;
        let cfg = LaunchConfig {
            grid_dim: ((cluster * self.multiprocessors()) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: shared,
        };
        let n = f
            .occupancy_max_active_clusters(cfg, &self.stream)
            .map_err(CudaError::driver("querying the resident clusters of a kernel"))?;
        Ok((n as usize).max(1))
    }

    /// The number of streaming multiprocessors.
    pub fn multiprocessors(&self) -> usize {
        self.ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map(|n| n.max(1) as usize)
            .unwrap_or(1)
    }

    fn free(&self, ptr: sys::CUdeviceptr, class: usize) {
        lock(&self.allocator).free(ptr, class);
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            let _ = self.synchronize();
            lock(&self.allocator).release_cached();
        }
    }
}

/// A typed buffer of device memory. Dropping it returns the memory to the device's cache.
pub struct DeviceBuf<T: DeviceElem> {
    ptr: sys::CUdeviceptr,
    class: usize,
    len: usize,
    device: Arc<CudaDevice>,
    _elem: PhantomData<T>,
}

impl<T: DeviceElem> std::fmt::Debug for DeviceBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuf<{}>[{}] on cuda:{}", T::NAME, self.len, self.device.ordinal)
    }
}

impl<T: DeviceElem> DeviceBuf<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
    /// The device address (for kernel arguments).
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// The device address of element `index` (may be one past the end).
    pub fn ptr_at(&self, index: usize) -> u64 {
        self.ptr + (index.min(self.len) * std::mem::size_of::<T>()) as u64
    }
    /// The device it lives on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }
}

impl<T: DeviceElem> Drop for DeviceBuf<T> {
    fn drop(&mut self) {
        self.device.free(self.ptr, self.class);
    }
}

/// Checks that `buf` holds at least `need` elements.
pub(crate) fn check_len<T: DeviceElem>(
    op: &'static str,
    what: &str,
    buf: &DeviceBuf<T>,
    need: usize,
) -> CudaResult<()> {
    if buf.len() < need {
        return Err(CudaError::invalid(op, format!("{what} holds {} elements, needs {need}", buf.len())));
    }
    Ok(())
}

/// Grid size for `n` items at `per_block` per block, as a u32 (errors beyond 2³¹ blocks).
pub(crate) fn blocks_for(op: &'static str, n: usize, per_block: usize) -> CudaResult<u32> {
    u32::try_from(n.div_ceil(per_block.max(1)))
        .ok()
        .filter(|&b| b < (1 << 31))
        .ok_or_else(|| CudaError::invalid(op, format!("{n} items need too many blocks")))
}

/// A one-dimensional launch shape.
pub(crate) fn grid1(blocks: u32, threads: u32, shared: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: shared }
}

/// The number of rows of `cols` in `n` elements (an error when `n` is not whole rows, or the
/// rows overflow a kernel's 32-bit row index).
pub(crate) fn rows_of(op: &'static str, what: &str, n: usize, cols: usize) -> CudaResult<usize> {
    if cols == 0 || !n.is_multiple_of(cols) || cols > i32::MAX as usize || n / cols > i32::MAX as usize {
        return Err(CudaError::invalid(op, format!("{what} of {n} elements is not whole rows of {cols}")));
    }
    Ok(n / cols)
}

/// The shared memory a block may use without opting in: static and dynamic together.
const DEFAULT_SHARED_LIMIT: u32 = 48 * 1024;

/// Whether a launch with `dynamic` bytes of dynamic shared memory, in a kernel that declares
/// `static_bytes` itself, must first raise the kernel's dynamic limit.
fn needs_shared_opt_in(dynamic: u32, static_bytes: u32) -> bool {
    dynamic > 0 && dynamic.saturating_add(static_bytes) > DEFAULT_SHARED_LIMIT
}

#[cfg(test)]
mod tests {
    use super::needs_shared_opt_in;

    #[test]
    fn static_shared_memory_counts_toward_the_opt_in() {
        // The streamed layernorm with a residual at 2048 bf16 columns: a 48 KiB ring beside its
        // reduction scratch.
        assert!(needs_shared_opt_in(48 * 1024, 256));
        assert!(!needs_shared_opt_in(48 * 1024, 0));
        assert!(!needs_shared_opt_in(24 * 1024, 256));
        assert!(needs_shared_opt_in(160 * 1024, 0));
        // No dynamic memory: nothing to raise, whatever the kernel declares.
        assert!(!needs_shared_opt_in(0, 48 * 1024));
    }
}
