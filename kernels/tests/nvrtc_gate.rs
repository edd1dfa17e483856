//! The CUDA compile gate, which needs no GPU: every kernel file compiles with NVRTC for
//! Hopper (`sm_90`, or `sm_90a` where a file needs it) and Ampere (`sm_80`) with ptxas's
//! register-spill warnings turned into errors, and each kernel's registers and shared memory
//! are printed.
//!
//! Each module compiled is stored for the SASS checks (`tests/common`), which run next.
//!
//! NVRTC comes from the PyPI wheels that `.ci/run` installs (see docs/cuda.md). Without it the
//! test prints that it skipped, unless `POLYLM_REQUIRE_NVRTC=1` (set by CI), which makes a
//! missing NVRTC a failure.

use polylm_kernels::cuda::nvrtc::{
    compile, compiled_name, nvrtc_available, nvrtc_version, runtime_options, warm_cache, Arch, CompileOptions,
};
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use polylm_kernels::cuda::source::{all_sources, KernelSource};

fn nvrtc_or_skip() -> bool {
    if nvrtc_available() {
        return true;
    }
    if std::env::var("POLYLM_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
        panic!("POLYLM_REQUIRE_NVRTC=1 but libnvrtc.so.13 could not be loaded (is LD_LIBRARY_PATH set?)");
    }
    eprintln!("skipped: NVRTC (libnvrtc.so.13) not found; see docs/cuda.md to install it");
    false
}

#[test]
fn every_kernel_compiles_without_spills() {
    if !nvrtc_or_skip() {
        return;
    }
    let version = nvrtc_version().expect("NVRTC version");
    println!("NVRTC {}.{}", version.0, version.1);
    // POLYLM_GATE_ONLY=name,name limits the gate to those files while a kernel is being tuned.
    let only = std::env::var("POLYLM_GATE_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|n| n.trim() == name));
    let jobs: Vec<(KernelSource, Arch)> = all_sources()
        .into_iter()
        .filter(|s| wanted(s.name))
        .flat_map(|source| {
            let archs = if source.needs_sm90a { vec![Arch::SM90A] } else { vec![Arch::SM80, Arch::SM90] };
            archs.into_iter().map(move |arch| (source, arch))
        })
        .collect();
    // The compiles are independent and each takes seconds: run them on every core, then report
    // in the files' order.
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(jobs.len()));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((source, arch)) = jobs.get(i) else { break };
                let options = CompileOptions { arch: *arch, spills_are_errors: true };
                let result = compile(source, &options);
                if let Ok(compiled) = &result {
                    common::store(source, &options, compiled);
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).push((i, result));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(i, _)| *i);
    let mut failures = Vec::new();
    let mut kernels = 0;
    for (i, result) in results {
        let (source, arch) = (&jobs[i].0, jobs[i].1);
        match result {
            Ok(compiled) => {
                let report = compiled.resources();
                assert!(!report.is_empty(), "{} for {arch}: no kernels in the ptxas report", source.name);
                assert!(!compiled.cubin.is_empty(), "{} for {arch}: empty cubin", source.name);
                for k in &report {
                    if arch == Arch::SM90 || source.needs_sm90a {
                        println!(
                            "{arch} {:<16} {:<32} {:>3} regs {:>6} B smem {:>4} B stack",
                            source.name, k.name, k.registers, k.shared_bytes, k.stack_bytes
                        );
                        kernels += 1;
                    }
                    if k.spill_stores > 0 || k.spill_loads > 0 {
                        failures.push(format!("{} {} spills on {arch}", source.name, k.name));
                    }
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    println!("{kernels} kernels compiled for sm_90");
    assert!(failures.is_empty(), "compile gate failed:\n{}", failures.join("\n"));
}

#[test]
fn a_broken_kernel_is_reported_with_its_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken = polylm_kernels::cuda::source::KernelSource {
        name: "broken",
        code: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }",
        needs_sm90a: false,
    };
    let err = compile(&broken, &CompileOptions { arch: Arch::SM90, spills_are_errors: true }).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("broken") && message.contains("undefined_name"), "{message}");
}

#[test]
fn a_spilling_kernel_fails_the_gate() {
    if !nvrtc_or_skip() {
        return;
    }
    // A large dynamically indexed local array cannot live in registers: ptxas must spill or
    // use a stack frame; under a 32-register cap it spills, which the gate rejects.
    let spilling = polylm_kernels::cuda::source::KernelSource {
        name: "spilling",
        code: r#"
extern "C" __global__ void __launch_bounds__(1024, 2) k(float* x, int n) {
    float acc[96];
#pragma unroll
    for (int i = 0; i < 96; i++) acc[i] = x[i * n + threadIdx.x];
    float s = 0.0f;
#pragma unroll
    for (int r = 0; r < 8; r++)
#pragma unroll
        for (int i = 0; i < 96; i++) s += acc[i] * acc[(i * 7 + r) % 96];
#pragma unroll
    for (int i = 0; i < 96; i++) x[i * n + threadIdx.x] = acc[i] + s;
}
"#,
        needs_sm90a: false,
    };
    let result = compile(&spilling, &CompileOptions { arch: Arch::SM90, spills_are_errors: true });
    let message = result.as_ref().map(|c| c.log.clone()).unwrap_or_else(|e| e.to_string());
    assert!(result.is_err(), "a kernel that spills must fail the gate; log:\n{message}");
    assert!(message.contains("spill"), "{message}");
}

#[test]
fn warming_the_cache_compiles_what_a_device_loads_once() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("polylm-warm-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let portable = KernelSource {
        name: "warm_portable",
        code: "extern \"C\" __global__ void k(float* x, float v) { x[threadIdx.x] = v; }",
        needs_sm90a: false,
    };
    let hopper = KernelSource {
        name: "warm_hopper",
        code: "extern \"C\" __global__ void k(float* x) { asm volatile(\"setmaxnreg.inc.sync.aligned.u32 240;\"); x[0] = 1.0f; }",
        needs_sm90a: true,
    };
    let sources = [portable, hopper];

    // Hopper loads both, the sm_90a file for sm_90a; each is compiled and stored once.
    let first = warm_cache(&dir, Arch::SM90, &sources);
    let summary: Vec<_> =
        first.iter().map(|m| (m.source, m.arch, m.result.as_ref().map(|r| r.1).ok())).collect();
    assert_eq!(
        summary,
        [("warm_portable", Arch::SM90, Some(false)), ("warm_hopper", Arch::SM90A, Some(false))],
        "{first:?}"
    );
    for (source, module) in sources.iter().zip(&first) {
        // Stored under the name a device of that architecture looks for.
        let name = compiled_name(source, &runtime_options(source, Arch::SM90)).unwrap();
        let stored = std::fs::read(dir.join(format!("{name}.cubin"))).unwrap();
        assert_eq!(Some(stored.len()), module.result.as_ref().ok().map(|r| r.0));
        assert!(!stored.is_empty());
    }
    let again = warm_cache(&dir, Arch::SM90, &sources);
    assert!(again.iter().all(|m| matches!(m.result, Ok((_, true)))), "{again:?}");

    // Ampere cannot load the sm_90a file: only the portable one, compiled for sm_80.
    let ampere = warm_cache(&dir, Arch::SM80, &sources);
    assert_eq!(ampere.len(), 1);
    assert_eq!((ampere[0].source, ampere[0].arch), ("warm_portable", Arch::SM80));
    assert!(matches!(ampere[0].result, Ok((_, false))), "{ampere:?}");

    // A cache that cannot be written is an error, not a silent miss.
    let blocked = dir.join("a-file");
    std::fs::write(&blocked, b"not a folder").unwrap();
    let failed = warm_cache(&blocked, Arch::SM90, &sources[..1]);
    assert!(failed[0].result.is_err(), "{failed:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
