//! A caching device-memory allocator.
//!
//! `cuMemAlloc` and `cuMemFree` synchronise and cost tens of microseconds, far too much to
//! pay per tensor. Requests are rounded up to a size class, and freed blocks go to a free list
//! per class instead of back to the driver; in the steady state of a training loop every
//! request is served from the lists. All work runs on the device's one stream, so a block freed
//! by one kernel can be handed to the next without synchronisation.

use std::collections::BTreeMap;

use cudarc::driver::{result as driver, sys::CUdeviceptr, DriverError};

/// Counters of the allocator, for memory reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Bytes handed out to live buffers (rounded to their size classes).
    pub in_use: usize,
    /// The most `in_use` ever reached.
    pub peak_in_use: usize,
    /// Bytes obtained from the driver and not yet returned (live plus cached).
    pub reserved: usize,
    /// The most `reserved` ever reached.
    pub peak_reserved: usize,
    /// Calls to `cuMemAlloc`.
    pub driver_allocs: u64,
    /// Requests served from the free lists.
    pub cache_hits: u64,
}

/// The size class of a request: 512-byte steps up to 1 MiB, then four classes per power of two
/// (at most 25% rounding waste).
pub fn size_class(bytes: usize) -> usize {
    const SMALL_STEP: usize = 512;
    const SMALL_LIMIT: usize = 1 << 20;
    let bytes = bytes.max(1);
    if bytes <= SMALL_LIMIT {
        return bytes.div_ceil(SMALL_STEP) * SMALL_STEP;
    }
    let top = usize::BITS - 1 - bytes.leading_zeros(); // 2^top <= bytes
    let quarter = 1usize << (top - 2);
    bytes.div_ceil(quarter) * quarter
}

/// The free lists and counters. The owner (the device) serialises access.
#[derive(Debug, Default)]
pub struct CachingAllocator {
    free: BTreeMap<usize, Vec<CUdeviceptr>>,
    report: MemoryReport,
}

impl CachingAllocator {
    /// A block of at least `bytes`: returns the pointer and the class size it must be freed with.
    ///
    /// The device's context must be current on this thread.
    pub fn allocate(&mut self, bytes: usize) -> Result<(CUdeviceptr, usize), DriverError> {
        let class = size_class(bytes);
        let ptr = match self.free.get_mut(&class).and_then(Vec::pop) {
            Some(ptr) => {
                self.report.cache_hits += 1;
                ptr
            }
            None => {
                // SAFETY: plain allocation in the current context.
                let ptr = match unsafe { driver::malloc_sync(class) } {
                    Ok(ptr) => ptr,
                    Err(_) => {
                        // Give the cached blocks back and try once more.
                        self.release_cached();
                        unsafe { driver::malloc_sync(class) }?
                    }
                };
                self.report.driver_allocs += 1;
                self.report.reserved += class;
                self.report.peak_reserved = self.report.peak_reserved.max(self.report.reserved);
                ptr
            }
        };
        self.report.in_use += class;
        self.report.peak_in_use = self.report.peak_in_use.max(self.report.in_use);
        Ok((ptr, class))
    }

    /// Returns a block to its free list.
    pub fn free(&mut self, ptr: CUdeviceptr, class: usize) {
        self.report.in_use -= class;
        self.free.entry(class).or_default().push(ptr);
    }

    /// Returns every cached (free) block to the driver.
    pub fn release_cached(&mut self) {
        for (class, ptrs) in std::mem::take(&mut self.free) {
            for ptr in ptrs {
                // SAFETY: the block came from `malloc_sync` and no buffer refers to it.
                if unsafe { driver::free_sync(ptr) }.is_ok() {
                    self.report.reserved -= class;
                }
            }
        }
    }

    /// The counters.
    pub fn report(&self) -> MemoryReport {
        self.report
    }

    /// Resets the peaks to the current values.
    pub fn reset_peaks(&mut self) {
        self.report.peak_in_use = self.report.in_use;
        self.report.peak_reserved = self.report.reserved;
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_with_bounded_waste() {
        assert_eq!(size_class(0), 512);
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), (1 << 20) + (1 << 18));
        for bytes in [3_000_001usize, 77_777_777, 1 << 30, (1 << 30) + 5] {
            let class = size_class(bytes);
            assert!(class >= bytes);
            assert!((class - bytes) as f64 <= 0.25 * bytes as f64, "{bytes} -> {class}");
            assert_eq!(size_class(class), class, "a class is its own class");
        }
    }
}
