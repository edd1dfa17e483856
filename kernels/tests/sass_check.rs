//! Reads the SASS of the Hopper kernels (the matrix product `kernels/cuda/matmul_wgmma.cu` and the
//! flash attention forward `kernels/cuda/flash_attention_hopper.cu`), without a GPU: NVRTC
//! compiles each for `sm_90a` to a cubin, `cuobjdump --dump-sass` disassembles it, and every
//! kernel must hold the Hopper instructions the design relies on:
//!
//! - `HGMMA.64x<BN>x16.F32[.BF16]`: the wgmma tensor-core instructions (4 per K slice), with
//!   `.tnspA`/`.tnspB` exactly where the layout has an M-major A / N-major B;
//! - `UTMALDG.3D` (the matrix product) or `UTMALDG.4D` (flash attention, whose operands have
//!   batch, head and row strides): the TMA tensor loads;
//! - `SYNCS`: the mbarrier operations (arrive with a transaction count, waits);
//! - `USETMAXREG`: the producer/consumer register rebalancing;
//! - `REDG.E.ADD.F32x2` (the flash attention backward): dQ added to its f32 accumulator by
//!   pairs, never by single values;
//!
//! and no local-memory traffic (`LDL`/`STL`: spills or stack arrays would show there). It also
//! reads the one-read cross-entropy (`kernels/cuda/cross_entropy.cu`, sm_90) for its bulk
//! copies and remote stores.
//!
//! `cuobjdump` comes from the PyPI wheel `nvidia-cuda-cuobjdump` (it installs beside NVRTC in
//! `nvidia/cu13/bin`), or from a CUDA toolkit. It is looked for in `$POLYLM_CUOBJDUMP`, in the
//! `bin` folder beside each `LD_LIBRARY_PATH` entry, on `PATH` and in `/usr/local/cuda/bin`.
//! Without NVRTC or cuobjdump the test prints that it skipped, unless `POLYLM_REQUIRE_SASS=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use polylm_kernels::cuda::nvrtc::{nvrtc_available, Arch, CompileOptions};
use polylm_kernels::cuda::source::KernelSource;
use polylm_kernels::cuda::{flash_attention_hopper, matmul_wgmma};

fn required() -> bool {
    std::env::var("POLYLM_REQUIRE_SASS").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    if required() {
        panic!("POLYLM_REQUIRE_SASS=1 but {why}");
    }
    eprintln!("skipped: {why}");
}

fn runs(tool: &Path) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The first working cuobjdump among the places listed in the module documentation.
fn find_cuobjdump() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("POLYLM_CUOBJDUMP") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        for dir in std::env::split_paths(&paths) {
            candidates.push(dir.join("..").join("bin").join("cuobjdump"));
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&paths).map(|d| d.join("cuobjdump")));
    }
    candidates.push(PathBuf::from("/usr/local/cuda/bin/cuobjdump"));
    candidates.into_iter().find(|p| p.is_file() && runs(p))
}

/// Splits `cuobjdump --dump-sass` output into (function name, its SASS).
fn functions(sass: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in sass.lines() {
        if let Some(name) = line.trim().strip_prefix("Function : ") {
            out.push((name.trim().to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// The SASS of every kernel of `source` compiled for `arch` (the module the NVRTC gate stored,
/// or compiled here), each kernel's name with its SASS, or `None` (after printing why) when
/// NVRTC or cuobjdump is missing. For sm_90a every kernel must have been given 168 registers:
/// the producer/consumer `setmaxnreg` budget of a 384-thread block
/// (128·40 + 256·232 = 128·24 + 256·240 = 384·168) hangs with fewer.
fn sass_for(source: &KernelSource, arch: Arch) -> Option<Vec<(String, String)>> {
    if !nvrtc_available() {
        skip("NVRTC (libnvrtc.so.13) not found; see docs/cuda.md");
        return None;
    }
    let Some(cuobjdump) = find_cuobjdump() else {
        skip(
            "cuobjdump not found (pip install --no-deps nvidia-cuda-cuobjdump into the NVRTC venv, \
             or set POLYLM_CUOBJDUMP)",
        );
        return None;
    };
    let compiled = common::compile_or_reuse(source, &CompileOptions { arch, spills_are_errors: true })
        .unwrap_or_else(|e| panic!("{e}"));
    for k in compiled.resources().iter().filter(|_| arch == Arch::SM90A) {
        assert_eq!(
            k.registers, 168,
            "{}: {} registers, the setmaxnreg budget assumes 168",
            k.name, k.registers
        );
    }
    let path = std::env::temp_dir().join(format!("polylm-sass-{}-{}.cubin", source.name, std::process::id()));
    std::fs::write(&path, &compiled.cubin).expect("writing the cubin");
    let output = Command::new(&cuobjdump).arg("--dump-sass").arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let output = output.expect("running cuobjdump");
    assert!(output.status.success(), "cuobjdump failed: {}", String::from_utf8_lossy(&output.stderr));
    let sass = String::from_utf8_lossy(&output.stdout);
    let target = arch.to_string();
    assert!(sass.contains(&target), "the cubin is not for {target}:\n{}", &sass[..sass.len().min(400)]);
    Some(functions(&sass))
}

/// The SASS of kernel `name` in `kernels`, or `None` after recording that it is missing.
fn kernel_body<'a>(
    kernels: &'a [(String, String)],
    name: &str,
    failures: &mut Vec<String>,
) -> Option<&'a str> {
    let body = kernels.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_str());
    if body.is_none() {
        failures.push(format!("{name}: not in the cubin"));
    }
    body
}

/// The checks every Hopper kernel shares: TMA loads (`tma`, such as `UTMALDG.3D`), mbarrier
/// operations, the setmaxnreg pair, the clock reads of the mbarrier waits' timeout (a wait that
/// never completes ends the kernel instead of hanging the GPU), and no local-memory traffic.
fn check_pipeline(name: &str, body: &str, tma: &str, failures: &mut Vec<String>) {
    let count = |needle: &str| body.matches(needle).count();
    if count("SR_GLOBALTIMERLO") == 0 {
        failures.push(format!("{name}: no SR_GLOBALTIMERLO read (the mbarrier waits' timeout)"));
    }
    if count(tma) == 0 {
        failures.push(format!("{name}: no {tma} (TMA load)"));
    }
    if count("SYNCS.") == 0 {
        failures.push(format!("{name}: no SYNCS (mbarrier) instruction"));
    }
    if count("USETMAXREG") < 2 {
        failures.push(format!("{name}: setmaxnreg missing"));
    }
    if count("LDL") > 0 || count("STL") > 0 {
        failures.push(format!("{name}: local memory traffic (LDL/STL)"));
    }
}

#[test]
fn hopper_matmul_sass_has_hgmma_and_tma() {
    let Some(kernels) = sass_for(&matmul_wgmma::SOURCE, Arch::SM90A) else { return };
    let expected: Vec<String> = ["128x128", "128x256"]
        .iter()
        .flat_map(|t| {
            ["nn", "nt", "tn", "tt"]
                .iter()
                .flat_map(move |l| ["bf16", "f16"].iter().map(move |d| format!("gemm_wgmma_{t}_{l}_{d}")))
        })
        .collect();
    let mut failures = Vec::new();
    for name in &expected {
        let Some(body) = kernel_body(&kernels, name, &mut failures) else { continue };
        let bn = if name.contains("128x256") { 256 } else { 128 };
        // f16 is HGMMA's default input type and has no suffix.
        let hgmma = if name.ends_with("bf16") {
            format!("HGMMA.64x{bn}x16.F32.BF16 ")
        } else {
            format!("HGMMA.64x{bn}x16.F32 ")
        };
        // "t" A is M-major (tnspA); "n" B is N-major (tnspB).
        let layout = &name[name.len() - if name.ends_with("bf16") { 7 } else { 6 }..][..2];
        let (tnsp_a, tnsp_b) = (layout.starts_with('t'), layout.ends_with('n'));
        let count = |needle: &str| body.matches(needle).count();
        let hgmma_lines: Vec<&str> = body.lines().filter(|l| l.contains("HGMMA.")).collect();
        println!(
            "{name:<28} {:>2}× {}(tnspA {tnsp_a}, tnspB {tnsp_b}), {}× UTMALDG.3D, {}× SYNCS, {}× USETMAXREG",
            count(&hgmma),
            hgmma.trim_end(),
            count("UTMALDG.3D"),
            count("SYNCS."),
            count("USETMAXREG")
        );
        if count(&hgmma) < 4 {
            failures.push(format!("{name}: {} × {hgmma}, expected at least 4 (one K slice)", count(&hgmma)));
        }
        if hgmma_lines.len() != count(&hgmma) {
            failures.push(format!("{name}: HGMMA of another shape or type"));
        }
        if hgmma_lines.iter().any(|l| l.contains(".tnspA") != tnsp_a || l.contains(".tnspB") != tnsp_b) {
            failures.push(format!("{name}: HGMMA transposes differ from the {layout} layout"));
        }
        check_pipeline(name, body, "UTMALDG.3D", &mut failures);
    }
    println!(
        "{} of {} Hopper kernels checked",
        expected.len() - failures.len().min(expected.len()),
        expected.len()
    );
    assert!(failures.is_empty(), "SASS check failed:\n{}", failures.join("\n"));
}

#[test]
fn hopper_flash_attention_sass_has_hgmma_and_tma() {
    let Some(kernels) = sass_for(&flash_attention_hopper::SOURCE, Arch::SM90A) else { return };
    let expected: Vec<String> = ["bf16", "f16"]
        .iter()
        .flat_map(|t| [64, 128].map(|d| format!("flash_fwd_hopper_{t}_d{d}")))
        .collect();
    let mut failures = Vec::new();
    for name in &expected {
        let Some(body) = kernel_body(&kernels, name, &mut failures) else { continue };
        let count = |needle: &str| body.matches(needle).count();
        let hgmma = body.lines().filter(|l| l.contains("HGMMA.")).count();
        // S = Q·Kᵀ reads K-major operands; O += P·V reads V through an MN-major descriptor.
        let transposed_b = body.lines().filter(|l| l.contains("HGMMA.") && l.contains(".tnspB")).count();
        println!(
            "{name:<26} {hgmma:>3}× HGMMA ({transposed_b} with tnspB), {}× UTMALDG.4D, {}× SYNCS, {}× USETMAXREG",
            count("UTMALDG.4D"),
            count("SYNCS."),
            count("USETMAXREG")
        );
        if hgmma == 0 || transposed_b == 0 || transposed_b == hgmma {
            failures.push(format!("{name}: {hgmma} HGMMA, {transposed_b} with tnspB (want both kinds)"));
        }
        check_pipeline(name, body, "UTMALDG.4D", &mut failures);
    }
    // The backward: Sᵀ and dPᵀ read K-major operands, dV/dK an N-major B with A in registers,
    // dQ an M-major A (the dSᵀ rows) and an N-major B, added into the f32 accumulator by pairs.
    for name in ["bf16", "f16"].iter().flat_map(|t| [64, 128].map(|d| format!("flash_bwd_hopper_{t}_d{d}"))) {
        let Some(body) = kernel_body(&kernels, &name, &mut failures) else { continue };
        let hgmma =
            |needle: &str| body.lines().filter(|l| l.contains("HGMMA.") && l.contains(needle)).count();
        let (all, tnsp_a, tnsp_b) = (hgmma(""), hgmma(".tnspA"), hgmma(".tnspB"));
        // dQ is accumulated by pairs: vector reductions only (`REDG.E.ADD.F32x2`).
        let reductions =
            |needle: &str| body.lines().filter(|l| l.contains("REDG.") && l.contains(needle)).count();
        let (pairs, all_red) = (reductions(".ADD.F32x2"), reductions(".ADD.F32"));
        println!(
            "{name:<26} {all:>3}× HGMMA ({tnsp_a} with tnspA, {tnsp_b} with tnspB), {pairs}× REDG.ADD.F32x2"
        );
        if pairs == 0 || pairs != all_red {
            failures
                .push(format!("{name}: {all_red} f32 reductions, {pairs} of them pairs (want pairs only)"));
        }
        if tnsp_a == 0 || tnsp_b <= tnsp_a || tnsp_b == all {
            failures.push(format!("{name}: {all} HGMMA, {tnsp_a} tnspA, {tnsp_b} tnspB (want K-major, N-major and M-major reads)"));
        }
        check_pipeline(&name, body, "UTMALDG.4D", &mut failures);
    }
    assert!(failures.is_empty(), "SASS check failed:\n{}", failures.join("\n"));
}

/// The one-read cross-entropy (`cross_entropy_cluster_*`, sm_90): bulk copies (TMA) fill its
/// ring, the partials travel as `st.async` remote stores completing on mbarriers, and the only
/// cluster-wide barrier (with its GPU-scope fence) is the one at the start, not one per row.
#[test]
fn one_read_cross_entropy_sass_has_bulk_copies_and_remote_stores() {
    let Some(kernels) = sass_for(&polylm_kernels::cuda::cross_entropy::SOURCE, Arch::SM90) else { return };
    let mut failures = Vec::new();
    for t in ["f32", "bf16", "f16"] {
        let name = format!("cross_entropy_cluster_{t}");
        let Some(body) = kernel_body(&kernels, &name, &mut failures) else { continue };
        let count = |needle: &str| body.matches(needle).count();
        println!(
            "{name:<28} {}× UBLKCP, {}× STAS, {}× SYNCS, {}× UCGABAR_WAIT, {}× MEMBAR.ALL.GPU",
            count("UBLKCP"),
            count("STAS"),
            count("SYNCS."),
            count("UCGABAR_WAIT"),
            count("MEMBAR.ALL.GPU")
        );
        if count("UBLKCP") == 0 {
            failures.push(format!("{name}: no UBLKCP (bulk copy)"));
        }
        if count("STAS") == 0 {
            failures.push(format!("{name}: no STAS (st.async to a remote block)"));
        }
        if count("SYNCS.") == 0 {
            failures.push(format!("{name}: no SYNCS (mbarrier)"));
        }
        if count("UCGABAR_WAIT") > 1 || count("MEMBAR.ALL.GPU") > 1 {
            failures.push(format!("{name}: more than the one cluster barrier at the start"));
        }
        if body.contains("LDL") || body.contains("STL") {
            failures.push(format!("{name}: local-memory traffic (LDL/STL)"));
        }
    }
    assert!(failures.is_empty(), "SASS check failed:\n{}", failures.join("\n"));
}
