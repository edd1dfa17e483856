//! Per-kernel device time, for `polylm bench --profile`: while profiling is on, every kernel
//! launch, device copy and fill of a [`super::CudaDevice`] is bracketed by CUDA events on its
//! stream, and [`super::CudaDevice::profile`] waits for them and sums the time per kernel
//! family (the wrappers' launch labels: `gemm_tc`, `layernorm_fwd`, `flash_bwd_hopper`, ...).
//!
//! The events cost a few microseconds of host time per launch, so a profiled step is slower
//! than a plain one; the kernel times themselves are measured on the device and are not.

use std::collections::HashMap;

use cudarc::driver::{sys, CudaEvent, CudaStream};

use super::error::{CudaError, CudaResult};

/// The device time of one kernel family over the profiled work.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The family (a launch label such as `gemm_tc`, or `memcpy` / `memset`).
    pub name: &'static str,
    /// Launches.
    pub calls: usize,
    /// Milliseconds on the device, summed over the launches.
    pub ms: f64,
}

/// Launches folded into [`Totals`] at once when this many are waiting (bounds the events held).
const FOLD_AT: usize = 4096;

/// Sums of device time per family.
#[derive(Debug, Default)]
pub struct Totals(HashMap<&'static str, (usize, f64)>);

impl Totals {
    /// Adds one launch of `name` that took `ms`.
    pub fn add(&mut self, name: &'static str, ms: f64) {
        let e = self.0.entry(name).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += ms;
    }

    /// The families, longest first (ties by name, so the order is stable).
    pub fn rows(&self) -> Vec<KernelTime> {
        let mut rows: Vec<KernelTime> =
            self.0.iter().map(|(&name, &(calls, ms))| KernelTime { name, calls, ms }).collect();
        rows.sort_by(|a, b| b.ms.total_cmp(&a.ms).then(a.name.cmp(b.name)));
        rows
    }
}

/// The profiler of one device: the launches whose events are not yet read, and the totals
/// (whether it is on is the device's flag, read without a lock on every launch).
#[derive(Debug, Default)]
pub(crate) struct Profiler {
    pending: Vec<(&'static str, CudaEvent, CudaEvent)>,
    totals: Totals,
}

impl Profiler {
    /// Starts afresh.
    pub(crate) fn reset(&mut self) {
        self.pending.clear();
        self.totals = Totals::default();
    }

    /// An event recorded now on `stream`, which times.
    pub(crate) fn mark(stream: &CudaStream) -> CudaResult<CudaEvent> {
        stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(CudaError::driver("recording a profiling event"))
    }

    /// Records a launch of `name` between `start` and `end`; folds the waiting ones when there
    /// are many.
    pub(crate) fn record(&mut self, name: &'static str, start: CudaEvent, end: CudaEvent) -> CudaResult<()> {
        self.pending.push((name, start, end));
        if self.pending.len() >= FOLD_AT {
            self.fold()?;
        }
        Ok(())
    }

    /// Reads every waiting launch's time (waiting for its end event) into the totals.
    pub(crate) fn fold(&mut self) -> CudaResult<()> {
        for (name, start, end) in self.pending.drain(..) {
            let ms = start.elapsed_ms(&end).map_err(CudaError::driver("reading a profiling event"))?;
            self.totals.add(name, f64::from(ms));
        }
        Ok(())
    }

    /// The totals so far (after [`Profiler::fold`]).
    pub(crate) fn rows(&self) -> Vec<KernelTime> {
        self.totals.rows()
    }
}

/// The family name of a launch label: `launching gemm_tc` → `gemm_tc`.
pub(crate) fn family(what: &'static str) -> &'static str {
    what.strip_prefix("launching ").unwrap_or(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_per_family_longest_first() {
        let mut t = Totals::default();
        for (name, ms) in [("gemm_tc", 2.5), ("layernorm_fwd", 0.25), ("gemm_tc", 1.5), ("adamw", 4.0)] {
            t.add(name, ms);
        }
        t.add("memset", 0.25);
        let rows = t.rows();
        let got: Vec<(&str, usize, f64)> = rows.iter().map(|r| (r.name, r.calls, r.ms)).collect();
        assert_eq!(
            got,
            vec![("adamw", 1, 4.0), ("gemm_tc", 2, 4.0), ("layernorm_fwd", 1, 0.25), ("memset", 1, 0.25)]
        );
    }

    #[test]
    fn families_drop_the_launch_prefix() {
        assert_eq!(family("launching flash_bwd_hopper"), "flash_bwd_hopper");
        assert_eq!(family("memcpy"), "memcpy");
    }
}
