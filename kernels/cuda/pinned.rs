//! Host-device copies through a page-locked (pinned) staging buffer, so that the DMA engine
//! copies asynchronously at full bus speed while the host prepares the next chunk.

use cudarc::driver::{result as driver, sys, CudaStream};

use super::error::{CudaError, CudaResult};

/// Largest staging buffer; bigger transfers go through it in chunks.
const MAX_STAGING: usize = 64 << 20;

/// A growable pinned buffer and the event of the last upload that read it.
#[derive(Debug)]
pub struct PinnedStaging {
    ptr: *mut u8,
    capacity: usize,
    in_flight: Option<sys::CUevent>,
}

impl Default for PinnedStaging {
    fn default() -> Self {
        PinnedStaging { ptr: std::ptr::null_mut(), capacity: 0, in_flight: None }
    }
}

// SAFETY: the pinned buffer is only touched while the owning mutex is held.
unsafe impl Send for PinnedStaging {}

impl PinnedStaging {
    /// Waits for the copy that last read the buffer.
    fn wait_idle(&mut self) -> CudaResult<()> {
        if let Some(event) = self.in_flight {
            // SAFETY: the event was created by `ensure` and is live.
            unsafe { driver::event::synchronize(event) }
                .map_err(CudaError::driver("waiting for an upload"))?;
        }
        Ok(())
    }

    /// Makes the buffer at least `bytes` long (up to the chunk limit); returns its length.
    fn ensure(&mut self, bytes: usize) -> CudaResult<usize> {
        let want = bytes.clamp(1, MAX_STAGING);
        if self.capacity < want {
            self.wait_idle()?;
            self.release();
            let size = want.next_power_of_two().min(MAX_STAGING);
            // SAFETY: plain pinned allocation; the memory is only used as bytes.
            let ptr = unsafe { driver::malloc_host(size, 0) }
                .map_err(CudaError::driver("allocating pinned memory"))?;
            self.ptr = ptr as *mut u8;
            self.capacity = size;
        }
        if self.in_flight.is_none() {
            let event = driver::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                .map_err(CudaError::driver("creating an event"))?;
            self.in_flight = Some(event);
        }
        Ok(self.capacity)
    }

    /// Copies `src` to device address `dst`; returns once the data is in flight.
    pub fn upload(&mut self, src: &[u8], dst: sys::CUdeviceptr, stream: &CudaStream) -> CudaResult<()> {
        let chunk = self.ensure(src.len())?;
        for (i, part) in src.chunks(chunk).enumerate() {
            self.wait_idle()?;
            // SAFETY: the staging buffer holds `chunk >= part.len()` bytes and no copy reads it
            // (waited above); the device range lies inside the destination buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), self.ptr, part.len());
                let staged = std::slice::from_raw_parts(self.ptr, part.len());
                driver::memcpy_htod_async(dst + (i * chunk) as u64, staged, stream.cu_stream())
                    .map_err(CudaError::driver("copying host to device"))?;
                if let Some(event) = self.in_flight {
                    driver::event::record(event, stream.cu_stream())
                        .map_err(CudaError::driver("recording an event"))?;
                }
            }
        }
        Ok(())
    }

    /// Copies device address `src` into `dst`, after all queued work.
    pub fn download(&mut self, src: sys::CUdeviceptr, dst: &mut [u8], stream: &CudaStream) -> CudaResult<()> {
        let chunk = self.ensure(dst.len())?;
        for (i, part) in dst.chunks_mut(chunk).enumerate() {
            // SAFETY: the staging buffer holds at least `part.len()` bytes; the stream is
            // synchronised before the host reads them.
            unsafe {
                let staged = std::slice::from_raw_parts_mut(self.ptr, part.len());
                driver::memcpy_dtoh_async(staged, src + (i * chunk) as u64, stream.cu_stream())
                    .map_err(CudaError::driver("copying device to host"))?;
                stream.synchronize().map_err(CudaError::driver("waiting for a download"))?;
                std::ptr::copy_nonoverlapping(self.ptr, part.as_mut_ptr(), part.len());
            }
        }
        Ok(())
    }

    fn release(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated by `malloc_host`, no copy in flight (callers wait first).
            let _ = unsafe { driver::free_host(self.ptr as *mut std::ffi::c_void) };
            self.ptr = std::ptr::null_mut();
            self.capacity = 0;
        }
    }
}

impl Drop for PinnedStaging {
    fn drop(&mut self) {
        let _ = self.wait_idle();
        self.release();
        if let Some(event) = self.in_flight.take() {
            // SAFETY: created by `event::create`, no longer recorded anywhere.
            let _ = unsafe { driver::event::destroy(event) };
        }
    }
}
