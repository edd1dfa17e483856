//! Run-time compilation of the kernel sources with NVRTC, straight to a cubin for one
//! architecture, with the ptxas resource report parsed and an on-disk cache.
//!
//! NVRTC needs no GPU, so the same code is the CI gate (`tests/nvrtc_gate.rs`): every kernel
//! compiles for Hopper with spills as errors, and its registers and shared memory are printed.

use std::ffi::{c_char, CString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys};

use super::error::{CudaError, CudaResult};
use super::source::KernelSource;

/// A GPU architecture to compile for, such as `sm_90` or `sm_90a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Arch {
    /// Compute capability major version.
    pub major: u32,
    /// Compute capability minor version.
    pub minor: u32,
    /// The architecture-specific variant (`sm_90a`), needed by `wgmma` and `setmaxnreg`.
    pub specific: bool,
}

impl Arch {
    /// Ampere A100.
    pub const SM80: Arch = Arch { major: 8, minor: 0, specific: false };
    /// Hopper H100/H200, portable features only.
    pub const SM90: Arch = Arch { major: 9, minor: 0, specific: false };
    /// Hopper with its architecture-specific instructions.
    pub const SM90A: Arch = Arch { major: 9, minor: 0, specific: true };
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sm_{}{}{}", self.major, self.minor, if self.specific { "a" } else { "" })
    }
}

impl std::str::FromStr for Arch {
    type Err = CudaError;

    /// Parses `sm_90`, `sm_90a`, `sm_80` (also `90`, `9.0`, `compute_90`).
    fn from_str(text: &str) -> CudaResult<Arch> {
        let bad =
            || CudaError::invalid("architecture", format!("`{text}` is not one like sm_80, sm_90 or sm_90a"));
        let t = text.trim();
        let t = t.strip_prefix("sm_").or_else(|| t.strip_prefix("compute_")).unwrap_or(t);
        let (t, specific) = match t.strip_suffix('a') {
            Some(rest) => (rest, true),
            None => (t, false),
        };
        let digits: String = t.chars().filter(|c| *c != '.').collect();
        if digits.len() < 2 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let (major, minor) = digits.split_at(digits.len() - 1);
        let major: u32 = major.parse().map_err(|_| bad())?;
        let minor: u32 = minor.parse().map_err(|_| bad())?;
        if major < 7 {
            return Err(bad());
        }
        Ok(Arch { major, minor, specific })
    }
}

/// How to compile.
#[derive(Clone, Copy, Debug)]
pub struct CompileOptions {
    /// Target architecture.
    pub arch: Arch,
    /// Make ptxas treat any register spill as an error (the CI gate does).
    pub spills_are_errors: bool,
}

/// Registers, shared memory and spills of one compiled kernel, from the ptxas report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    /// The kernel's (unmangled, `extern "C"`) name.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory per block, in bytes.
    pub shared_bytes: u32,
    /// Local-memory stack frame per thread, in bytes.
    pub stack_bytes: u32,
    /// Bytes spilled to local memory by stores.
    pub spill_stores: u32,
    /// Bytes reloaded from spills.
    pub spill_loads: u32,
}

/// A compiled module: the cubin and the compiler's log.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The device code, loadable with `cuModuleLoadData`.
    pub cubin: Vec<u8>,
    /// NVRTC's and ptxas's messages (the resource report among them).
    pub log: String,
}

impl Compiled {
    /// The per-kernel resource report parsed from the log.
    pub fn resources(&self) -> Vec<KernelResources> {
        parse_ptxas_report(&self.log)
    }
}

/// Whether `libnvrtc` can be loaded on this machine.
pub fn nvrtc_available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only probes dlopen for the library; loads nothing else.
    *PRESENT.get_or_init(|| unsafe { nvrtc_sys::is_culib_present() })
}

/// NVRTC's version `(major, minor)`.
pub fn nvrtc_version() -> CudaResult<(i32, i32)> {
    if !nvrtc_available() {
        return Err(CudaError::NvrtcMissing);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both pointers are valid for one write.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|source| CudaError::Nvrtc { action: "asking its version", source })?;
    Ok((major, minor))
}

/// The command-line options NVRTC gets for `options`.
fn nvrtc_flags(options: &CompileOptions) -> Vec<String> {
    let mut flags = vec![
        format!("--gpu-architecture={}", options.arch),
        "--std=c++17".to_string(),
        "--ptxas-options=-v".to_string(),
        "--ptxas-options=--warn-on-spills".to_string(),
    ];
    if options.spills_are_errors {
        flags.push("--ptxas-options=--warning-as-error".to_string());
    }
    flags
}

/// Compiles `source` (the shared prelude is prepended) to a cubin, uncached.
pub fn compile(source: &KernelSource, options: &CompileOptions) -> CudaResult<Compiled> {
    if !nvrtc_available() {
        return Err(CudaError::NvrtcMissing);
    }
    let text = source.full_text();
    let compile_error = |log: String| CudaError::Compile {
        source_name: source.name.to_string(),
        arch: options.arch.to_string(),
        log,
    };
    let code = CString::new(text).map_err(|_| compile_error("source contains a NUL byte".into()))?;
    let name = CString::new(format!("{}.cu", source.name))
        .map_err(|_| compile_error("name contains a NUL byte".into()))?;
    let nvrtc = |action: &'static str| move |source| CudaError::Nvrtc { action, source };
    let program = nvrtc_result::create_program(&code, Some(&name)).map_err(nvrtc("creating a program"))?;
    let flags = nvrtc_flags(options);
    // SAFETY: `program` is live until destroyed below; the buffers passed to the getters are
    // sized by the matching size queries.
    unsafe {
        let compiled = nvrtc_result::compile_program(program, &flags);
        let log =
            nvrtc_result::get_program_log(program).map(|chars| c_chars_to_string(&chars)).unwrap_or_default();
        let result = match compiled {
            Err(_) => Err(compile_error(log)),
            Ok(()) => {
                let mut size = 0usize;
                nvrtc_sys::nvrtcGetCUBINSize(program, &mut size)
                    .result()
                    .map_err(nvrtc("asking the cubin size"))
                    .and_then(|()| {
                        let mut cubin = vec![0u8; size];
                        nvrtc_sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr() as *mut c_char)
                            .result()
                            .map_err(nvrtc("reading the cubin"))
                            .map(|()| Compiled { cubin, log })
                    })
            }
        };
        let _ = nvrtc_result::destroy_program(program);
        result
    }
}

/// The name a module compiled from `source` with `options` is kept under: the file's name, the
/// architecture, and a hash of the prelude and source, the flags and the NVRTC version (so a
/// change to any of them gives another name).
pub fn compiled_name(source: &KernelSource, options: &CompileOptions) -> CudaResult<String> {
    let version = nvrtc_version()?;
    let mut key = Fnv64::new();
    key.write(source.full_text().as_bytes());
    for flag in nvrtc_flags(options) {
        key.write(flag.as_bytes());
    }
    key.write(format!("{version:?}").as_bytes());
    Ok(format!("{}-{}-{:016x}", source.name, options.arch, key.finish()))
}

/// Compiles through the on-disk cache: a cubin is reused when the prelude, source, flags,
/// architecture and NVRTC version all match ([`compiled_name`]).
pub fn compile_cached(source: &KernelSource, options: &CompileOptions) -> CudaResult<Vec<u8>> {
    match cache_dir() {
        // A cache that cannot be written only costs a recompile next time.
        Some(dir) => compile_into(&dir, source, options, false).map(|(cubin, _)| cubin),
        None => compile(source, options).map(|c| c.cubin),
    }
}

/// The cubin of `source` for `options` from the cache directory `dir`, compiled and stored
/// there first when missing (a failure to store it is an error when `must_store`); `true` with
/// it when it was already there.
fn compile_into(
    dir: &Path,
    source: &KernelSource,
    options: &CompileOptions,
    must_store: bool,
) -> CudaResult<(Vec<u8>, bool)> {
    let path = dir.join(format!("{}.cubin", compiled_name(source, options)?));
    if let Ok(bytes) = std::fs::read(&path) {
        if !bytes.is_empty() {
            return Ok((bytes, true));
        }
    }
    let compiled = compile(source, options)?;
    let stored = write_atomically(dir, &path, &compiled.cubin);
    if must_store {
        stored?;
    }
    Ok((compiled.cubin, false))
}

/// The options a device of architecture `device_arch` compiles `source` with when it first
/// loads it: its own architecture (the specific variant, `sm_90a`, for a file that needs it)
/// and spills allowed (the CI gate is where they are errors).
pub fn runtime_options(source: &KernelSource, device_arch: Arch) -> CompileOptions {
    CompileOptions { arch: Arch { specific: source.needs_sm90a, ..device_arch }, spills_are_errors: false }
}

/// Whether a device of architecture `device_arch` can load `source` at all: the `sm_90a`
/// files only on Hopper (9.0).
pub fn loads_on(source: &KernelSource, device_arch: Arch) -> bool {
    !source.needs_sm90a || (device_arch.major, device_arch.minor) == (9, 0)
}

/// One module that [`warm_cache`] made ready.
#[derive(Debug)]
pub struct WarmedModule {
    /// The kernel file's name.
    pub source: &'static str,
    /// The architecture it was compiled for.
    pub arch: Arch,
    /// The cubin's size in bytes and whether the cache already held it, or why it failed.
    pub result: CudaResult<(usize, bool)>,
    /// Wall-clock seconds spent on it.
    pub seconds: f64,
}

/// Compiles into the cache directory `dir`, on every core, the modules of `sources` that a
/// device of architecture `device_arch` loads, with the options it loads them with
/// ([`runtime_options`]); a module already cached is kept. A first run on such a device, with
/// `POLYLM_KERNEL_CACHE=dir`, then spends no time in NVRTC (given the same NVRTC version).
pub fn warm_cache(dir: &Path, device_arch: Arch, sources: &[KernelSource]) -> Vec<WarmedModule> {
    use rayon::prelude::*;
    sources
        .par_iter()
        .filter(|source| loads_on(source, device_arch))
        .map(|source| {
            let options = runtime_options(source, device_arch);
            let start = std::time::Instant::now();
            let result =
                compile_into(dir, source, &options, true).map(|(cubin, reused)| (cubin.len(), reused));
            WarmedModule {
                source: source.name,
                arch: options.arch,
                result,
                seconds: start.elapsed().as_secs_f64(),
            }
        })
        .collect()
}

/// Where compiled kernels are kept: `$POLYLM_KERNEL_CACHE`, else `$XDG_CACHE_HOME/polylm/kernels`,
/// else `~/.cache/polylm/kernels`. `POLYLM_KERNEL_CACHE=off` disables the cache.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("POLYLM_KERNEL_CACHE") {
        return (dir != "off").then(|| PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("polylm").join("kernels"))
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> CudaResult<()> {
    let io = |source| CudaError::Cache { path: path.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Parses ptxas's `-v` report:
///
/// ```text
/// ptxas info    : Compiling entry function 'k' for 'sm_90'
/// ptxas info    : Function properties for k
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 18 registers, used 1 barriers, 128 bytes smem, 380 bytes cmem[0]
/// ```
pub fn parse_ptxas_report(log: &str) -> Vec<KernelResources> {
    let mut kernels: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default();
            kernels.push(KernelResources { name: name.to_string(), ..Default::default() });
            continue;
        }
        let Some(current) = kernels.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            current.stack_bytes = number_before(line, "bytes stack frame");
            current.spill_stores = number_before(line, "bytes spill stores");
            current.spill_loads = number_before(line, "bytes spill loads");
        } else if line.contains("Used ") && line.contains("registers") {
            current.registers = number_before(line, "registers");
            current.shared_bytes = number_before(line, "bytes smem");
        }
    }
    kernels
}

/// The integer just before `marker` in `line`, or 0.
fn number_before(line: &str, marker: &str) -> u32 {
    line.split(marker)
        .next()
        .filter(|head| head.len() < line.len())
        .and_then(|head| head.split(|c: char| !c.is_ascii_digit()).rev().find(|s| !s.is_empty()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// FNV-1a, 64 bits: the cache key (not a security boundary).
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Length separates consecutive fields.
        self.0 = (self.0 ^ bytes.len() as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'layernorm_fwd_f32' for 'sm_90'\n\
            ptxas info    : Function properties for layernorm_fwd_f32\n    \
            8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 40 registers, used 1 barriers, 256 bytes smem, 400 bytes cmem[0]\n\
            ptxas info    : Compiling entry function 'fill_bf16' for 'sm_90'\n\
            ptxas info    : Used 8 registers, 380 bytes cmem[0]\n";
        let report = parse_ptxas_report(log);
        assert_eq!(report.len(), 2);
        assert_eq!(
            report[0],
            KernelResources {
                name: "layernorm_fwd_f32".into(),
                registers: 40,
                shared_bytes: 256,
                stack_bytes: 8,
                spill_stores: 4,
                spill_loads: 12
            }
        );
        assert_eq!(report[1].registers, 8);
        assert_eq!(report[1].shared_bytes, 0);
    }

    #[test]
    fn arch_names() {
        assert_eq!(Arch::SM90A.to_string(), "sm_90a");
        assert_eq!(Arch::SM80.to_string(), "sm_80");
    }

    #[test]
    fn arch_names_parse_back() {
        for arch in [Arch::SM80, Arch::SM90, Arch::SM90A, Arch { major: 12, minor: 0, specific: false }] {
            assert_eq!(arch.to_string().parse::<Arch>().unwrap(), arch);
        }
        assert_eq!("9.0".parse::<Arch>().unwrap(), Arch::SM90);
        assert_eq!("compute_86".parse::<Arch>().unwrap(), Arch { major: 8, minor: 6, specific: false });
        for bad in ["", "sm_", "sm_9", "hopper", "sm_9x", "sm_50", "a"] {
            let err = bad.parse::<Arch>().unwrap_err().to_string();
            assert!(err.contains("sm_90"), "{bad}: {err}");
        }
    }

    #[test]
    fn hopper_files_load_only_on_hopper() {
        let hopper = KernelSource { name: "h", code: "", needs_sm90a: true };
        let portable = KernelSource { name: "p", code: "", needs_sm90a: false };
        assert!(loads_on(&hopper, Arch::SM90) && !loads_on(&hopper, Arch::SM80));
        assert!(loads_on(&portable, Arch::SM80) && loads_on(&portable, Arch::SM90));
        assert_eq!(runtime_options(&hopper, Arch::SM90).arch, Arch::SM90A);
        assert_eq!(runtime_options(&portable, Arch::SM90).arch, Arch::SM90);
        assert!(!runtime_options(&portable, Arch::SM90).spills_are_errors);
    }
}
