//! Compiled modules shared by the kernel test binaries of one build. The NVRTC gate
//! (`nvrtc_gate.rs`) compiles every kernel file and stores each module, cubin and compiler log,
//! under the build's temporary directory, named by [`compiled_name`] (source, flags and NVRTC
//! version hashed); the SASS checks (`sass_check.rs`), which cargo runs after the gate, read
//! them instead of compiling the same files again. A module not stored (the SASS checks run
//! alone, or a store failed) is compiled.

// Each test binary uses its own half of this module.
#![allow(dead_code)]

use std::path::PathBuf;

use polylm_kernels::cuda::nvrtc::{compile, compiled_name, CompileOptions, Compiled};
use polylm_kernels::cuda::source::KernelSource;
use polylm_kernels::cuda::CudaResult;

/// Where the modules are stored: inside the build's target directory.
fn store_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compiled-kernels")
}

/// Stores `compiled`, the module of `source` for `options`; a failure only costs a compile later.
pub fn store(source: &KernelSource, options: &CompileOptions, compiled: &Compiled) {
    let Ok(name) = compiled_name(source, options) else { return };
    let dir = store_dir();
    let write = |ext: &str, bytes: &[u8]| -> std::io::Result<()> {
        let path = dir.join(format!("{name}.{ext}"));
        let tmp = dir.join(format!("{name}.{ext}.tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    };
    // The log first: a cubin present means its log is too.
    let _ = std::fs::create_dir_all(&dir)
        .and_then(|()| write("log", compiled.log.as_bytes()))
        .and_then(|()| write("cubin", &compiled.cubin));
}

/// The module of `source` for `options`: the stored one when the gate left it, else compiled.
pub fn compile_or_reuse(source: &KernelSource, options: &CompileOptions) -> CudaResult<Compiled> {
    let name = compiled_name(source, options)?;
    let dir = store_dir();
    let cubin = std::fs::read(dir.join(format!("{name}.cubin")));
    let log = std::fs::read_to_string(dir.join(format!("{name}.log")));
    match (cubin, log) {
        (Ok(cubin), Ok(log)) if !cubin.is_empty() => Ok(Compiled { cubin, log }),
        _ => compile(source, options),
    }
}
