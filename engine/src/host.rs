//! Host-memory settings for training programs.

/// Asks the C allocator to keep large freed blocks for reuse instead of returning them to the
/// operating system. Returns whether the setting was applied (glibc on Linux only).
///
/// A training step allocates and frees the same large buffers every step. By default glibc
/// serves blocks above a dynamic threshold with fresh `mmap`s and unmaps them on free, so
/// every step pays a page fault for each 4 KiB of each large tensor: about 15–20% of a CPU
/// step of the `small` preset. With this setting blocks up to 32 MiB come from the heap and
/// freed memory stays there (peak resident memory does not grow: the same blocks are reused).
///
/// This changes a process-wide setting, so the library never calls it by itself: programs
/// that train (the benchmarks, the trainer) call it once at start.
pub fn tune_host_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        // From glibc's <malloc.h>.
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: mallopt only changes allocator parameters; both values are in range (the
        // mmap threshold's maximum on 64-bit glibc is 32 MiB).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, std::ffi::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allocator_setting_applies_on_glibc() {
        let applied = super::tune_host_allocator();
        assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
    }
}
