//! The driver shared by the GPU benchmarks: open the device (or print that the benchmark
//! skipped), run it, and write its Markdown table to `POLYLM_BENCH_OUT` when set.

use std::sync::Arc;

use polylm_kernels::cuda::{CudaDevice, CudaResult};

/// Runs benchmark `name`; exits with status 1 when it fails.
pub fn gpu_bench_main(name: &str, run: impl FnOnce(&Arc<CudaDevice>) -> CudaResult<String>) {
    // `cargo bench` passes `--bench`; nothing else is parsed.
    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            println!("{name} benchmark skipped: no GPU ({e})");
            return;
        }
    };
    match run(&dev) {
        Ok(md) => {
            if let Some(path) = std::env::var_os("POLYLM_BENCH_OUT") {
                if let Err(e) = std::fs::write(&path, md) {
                    eprintln!("could not write {}: {e}", path.to_string_lossy());
                }
            }
        }
        Err(e) => {
            eprintln!("{name} benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
