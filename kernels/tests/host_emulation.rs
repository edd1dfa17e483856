//! The CUDA kernels of `layernorm.cu`, `cross_entropy.cu`, `gelu.cu`, `embedding.cu` (the
//! lookup), the strided ops and long-axis sums of `elementwise.cu`, the
//! tensor-core matmuls and flash attention, run on the CPU by the host
//! emulation in `kernels/emu/` (one OS thread per CUDA thread, real barriers, deferred
//! `cp.async` copies, mbarriers with transaction counts, clusters with distributed shared
//! memory) and checked against the f64 CPU kernels. This tests the kernels' own text (indexing,
//! ring and pipeline bookkeeping, the cluster exchange) where there is no GPU; it says nothing
//! about speed or about the hardware's memory model beyond what the emulation models.
//!
//! Needs a C++20 compiler (`$CXX`, else `g++`); without one the tests print that they skipped,
//! unless `POLYLM_REQUIRE_EMULATION=1` (CI), which makes a missing compiler a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use half::{bf16, f16};
use polylm_kernels::cuda::flash_attention::FlashShape;
use polylm_kernels::cuda::flash_layout::HeadLayout;
use polylm_kernels::cuda::layernorm::LayerNormKernel;
use polylm_kernels::cuda::matmul_tc::Tile;
use polylm_kernels::cuda::source::{KernelSource, HOPPER_PRELUDE, PRELUDE};
use polylm_kernels::cuda::FloatElem;
use polylm_kernels::cuda::{flash_attention_hopper, matmul_wgmma};

// ---------------------------------------------------------------- building an emulator

/// Rewrites the `__shared__` declarations of a kernel file for the emulation: a static one
/// becomes a reference into the block's shared arena (`emu::shared`), the dynamic one a pointer
/// to the dynamic part.
fn rewrite_shared(code: &str) -> String {
    let mut out = String::with_capacity(code.len() + 1024);
    for line in code.lines() {
        let Some(at) = line.find("__shared__") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let indent = &line[..line.len() - line.trim_start().len()];
        let is_extern = line[..at].contains("extern");
        let mut decl = line[at + "__shared__".len()..].trim().trim_end_matches(';').trim().to_string();
        if let Some(rest) = decl.strip_prefix("__align__(") {
            decl = rest[rest.find(')').expect("__align__(n)") + 1..].trim().to_string();
        }
        let bracket = decl.find('[').expect("a __shared__ array");
        let (head, dims) = decl.split_at(bracket);
        let name_start =
            head.trim_end().rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
        let (ty, name) = (head[..name_start].trim(), head[name_start..].trim());
        if is_extern {
            out.push_str(&format!(
                "{indent}{ty}* {name} = reinterpret_cast<{ty}*>(::emu::dynamic_shared());\n"
            ));
        } else {
            out.push_str(&format!(
                "{indent}auto& {name} = ::emu::shared<{ty}{dims}>(__func__, \"{name}\");\n"
            ));
        }
    }
    out
}

/// The C++ compiler, or `None` (after printing that the test skipped) when there is none.
fn compiler(test: &str) -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    let works = Command::new(&cxx).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if works.is_ok_and(|s| s.success()) {
        return Some(cxx);
    }
    assert!(
        std::env::var("POLYLM_REQUIRE_EMULATION").map_or(true, |v| v != "1"),
        "{test}: POLYLM_REQUIRE_EMULATION=1 but there is no C++ compiler ({cxx})"
    );
    println!("{test}: skipped (no C++ compiler `{cxx}`; set CXX)");
    None
}

/// Builds the emulator of `source` able to launch `kernels`; the path of its binary.
fn build(cxx: &str, source: &KernelSource, kernels: &[String]) -> PathBuf {
    let emu_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("emu");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("host_emulation");
    std::fs::create_dir_all(&dir).expect("emulation directory");
    let registry: String =
        kernels.iter().map(|k| format!("        {{\"{k}\", emu::kernel(&{k})}},\n")).collect();
    let hopper = if source.needs_sm90a {
        format!(
            "#line 1 \"hopper.cuh\"\n{HOPPER_PRELUDE}\n#include \"{}/emu_hopper.hpp\"\n",
            emu_dir.display()
        )
    } else {
        String::new()
    };
    let unit = format!(
        "#include \"{emu}/emu.hpp\"\n#line 1 \"common.cuh\"\n{PRELUDE}\n#include \"{emu}/emu_convert.hpp\"\n\
         {hopper}#line 1 \"{name}.cu\"\n{code}\n#include \"{emu}/emu_main.hpp\"\n\
         std::map<std::string, emu::Launcher> emu_kernels() {{\n    return {{\n{registry}    }};\n}}\n",
        emu = emu_dir.display(),
        name = source.name,
        code = rewrite_shared(source.code),
    );
    let cpp = dir.join(format!("{}.cpp", source.name));
    let bin = dir.join(format!("{}-emu", source.name));
    std::fs::write(&cpp, unit).expect("write the translation unit");
    let out = Command::new(cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-w", "-o"])
        .arg(&bin)
        .arg(&cpp)
        .output()
        .expect("run the C++ compiler");
    assert!(
        out.status.success(),
        "compiling the emulation of {}.cu failed:\n{}",
        source.name,
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// `{stem}_{type}` for each stem and each float element type: the kernels of one family.
fn typed<S: AsRef<str>>(stems: &[S]) -> Vec<String> {
    stems.iter().flat_map(|k| ["f32", "bf16", "f16"].map(|t| format!("{}_{t}", k.as_ref()))).collect()
}

/// The emulator in `cell` (built on first use, `None` without a compiler) of `source`,
/// able to launch the kernels `names` lists.
fn emulator(
    cell: &'static OnceLock<Option<PathBuf>>,
    source: &KernelSource,
    names: impl FnOnce() -> Vec<String>,
) -> Option<&'static Path> {
    cell.get_or_init(|| {
        let cxx = compiler("host_emulation")?;
        Some(build(&cxx, source, &names()))
    })
    .as_deref()
}

// ---------------------------------------------------------------- element types and scripts

/// A storage type of the kernels with its bytes, its rounding and the tolerances of the GPU
/// tests (`tests/cuda_kernels.rs`).
trait Elem: FloatElem {
    const RTOL: f64;
    const ATOL: f64;
    fn round(v: f64) -> f64;
    fn bytes(v: &[f64]) -> Vec<u8>;
    fn values(bytes: &[u8]) -> Vec<f64>;
}
impl Elem for f32 {
    const RTOL: f64 = 2e-5;
    const ATOL: f64 = 2e-6;
    fn round(v: f64) -> f64 {
        f64::from(v as f32)
    }
    fn bytes(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect()
    }
    fn values(b: &[u8]) -> Vec<f64> {
        b.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
    }
}
impl Elem for bf16 {
    const RTOL: f64 = 1.6e-2;
    const ATOL: f64 = 8e-3;
    fn round(v: f64) -> f64 {
        bf16::from_f64(v).to_f64()
    }
    fn bytes(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| bf16::from_f64(*x).to_le_bytes()).collect()
    }
    fn values(b: &[u8]) -> Vec<f64> {
        b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect()
    }
}
impl Elem for f16 {
    const RTOL: f64 = 3e-3;
    const ATOL: f64 = 1.5e-3;
    fn round(v: f64) -> f64 {
        f16::from_f64(v).to_f64()
    }
    fn bytes(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| f16::from_f64(*x).to_le_bytes()).collect()
    }
    fn values(b: &[u8]) -> Vec<f64> {
        b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64()).collect()
    }
}

fn f32_bytes(v: &[f64]) -> Vec<u8> {
    <f32 as Elem>::bytes(v)
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (-scale, scale), never exactly 0.
    fn value(&mut self, scale: f64) -> f64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let v = (2.0 * u - 1.0) * scale;
        if v == 0.0 {
            scale * 0.5
        } else {
            v
        }
    }
    fn values<T: Elem>(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| T::round(self.value(scale))).collect()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One kernel launch's script: buffers (inputs written to files, outputs poisoned), arguments
/// and the launch; `run` executes it and returns the named buffers' bytes.
struct Script {
    dir: PathBuf,
    lines: Vec<String>,
    buffers: usize,
    dumps: Vec<(usize, PathBuf)>,
}
impl Script {
    fn new(tag: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("host_emulation").join(tag);
        std::fs::create_dir_all(&dir).expect("script directory");
        Self { dir, lines: Vec::new(), buffers: 0, dumps: Vec::new() }
    }
    /// A buffer holding `bytes`; its index.
    fn input(&mut self, bytes: &[u8]) -> usize {
        let path = self.dir.join(format!("in{}", self.buffers));
        std::fs::write(&path, bytes).expect("write an input");
        self.lines.push(format!("buf {} {} {}", self.buffers, bytes.len(), path.display()));
        self.buffers += 1;
        self.buffers - 1
    }
    /// A buffer of `bytes` poisoned with 0xFF (NaN in every float type); its index.
    fn output(&mut self, bytes: usize) -> usize {
        self.lines.push(format!("buf {} {bytes} poison", self.buffers));
        self.buffers += 1;
        self.buffers - 1
    }
    fn arg(&mut self, arg: &str) -> &mut Self {
        self.lines.push(format!("arg {arg}"));
        self
    }
    fn ptr(&mut self, buf: usize) -> &mut Self {
        self.arg(&format!("ptr {buf}"))
    }
    /// A structure passed by value: its bytes.
    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.arg(&format!("bytes {hex}"))
    }
    fn launch(&mut self, kernel: &str, grid: usize, block: usize, cluster: usize, dynamic: usize) {
        self.launch3(kernel, [grid, 1, 1], block, cluster, dynamic);
    }
    fn launch3(&mut self, kernel: &str, grid: [usize; 3], block: usize, cluster: usize, dynamic: usize) {
        let [x, y, z] = grid;
        self.lines.push(format!("launch {kernel} {x} {y} {z} {block} {cluster} {dynamic}"));
    }
    /// Runs the script on `emulator`; the bytes of buffers `read`, in order.
    fn run(mut self, emulator: &Path, read: &[usize]) -> Vec<Vec<u8>> {
        for &b in read {
            let path = self.dir.join(format!("out{b}"));
            self.lines.push(format!("dump {b} {}", path.display()));
            self.dumps.push((b, path));
        }
        let mut child = Command::new(emulator)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the emulator");
        let script = self.lines.join("\n") + "\n";
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), script.as_bytes())
            .expect("script");
        let out = child.wait_with_output().expect("emulator");
        assert!(
            out.status.success(),
            "emulator failed on\n{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.dumps.iter().map(|(_, p)| std::fs::read(p).expect("read an output")).collect()
    }
}

#[track_caller]
fn check<T: Elem>(what: &str, got: &[f64], want: &[f64]) {
    check_with(&format!("{what}<{}>", T::NAME), got, want, T::RTOL, T::ATOL);
}

/// Every element within `rtol` relative or `atol` × the largest reference magnitude; every
/// element written (a NaN left by the poison fails). The inputs are of order 1, so the scale is
/// floored at 1e-4: a result that is exactly 0 (dQ over a single key) is compared at that
/// scale, not at its rounding noise.
#[track_caller]
fn check_with(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-4);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= rtol * w.abs() + atol * scale;
        assert!(ok, "{what}: element {i} is {g}, expected {w}");
    }
}

// ---------------------------------------------------------------- layernorm

/// Which launch of a layernorm kernel family: its name stem, and its block size and grid for
/// `rows` × `cols` (small persistent grids, so that every block takes several rows).
#[derive(Clone, Copy, Debug, PartialEq)]
enum LnKernel {
    General,
    Cached,
    Streamed,
}

fn layernorm_emulator() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    emulator(&BIN, &polylm_kernels::cuda::layernorm::SOURCE, || {
        let stems: Vec<String> = ["fwd", "bwd"]
            .iter()
            .flat_map(|d| ["", "_cached", "_streamed"].map(move |v| format!("layernorm_{d}{v}")))
            .collect();
        typed(&stems)
    })
}

fn layernorm_case<T: Elem>(emu: &Path, kernel: LnKernel, rows: usize, cols: usize, fused: bool, seed: u64) {
    let mut rng = Rng(seed);
    let tag = format!("layernorm-{kernel:?}-{}-{rows}x{cols}-{fused}", T::NAME);
    let n = rows * cols;
    let size = std::mem::size_of::<T>();
    let (x, r) = (rng.values::<T>(n, 2.0), rng.values::<T>(n, 2.0));
    let (w, b) = (rng.values::<T>(cols, 1.5), rng.values::<T>(cols, 0.5));
    let eps = 1e-5;
    let input: Vec<f64> =
        if fused { x.iter().zip(&r).map(|(a, c)| T::round(a + c)).collect() } else { x.clone() };
    let (mut want, mut wmean, mut wrstd) = (vec![0.0; n], vec![0.0; rows], vec![0.0; rows]);
    polylm_kernels::layernorm::layernorm_forward(
        &input, &w, &b, eps, cols, &mut want, &mut wmean, &mut wrstd,
    );

    // The blocks the CUDA wrapper launches (kernels/cuda/layernorm.rs), on small grids: the
    // forward's general and cached kernels take a warp or a block per row, the others a few
    // blocks that each take a run of rows.
    let which = match kernel {
        LnKernel::General => LayerNormKernel::General,
        LnKernel::Cached => LayerNormKernel::Cached,
        LnKernel::Streamed => LayerNormKernel::Streamed,
    };
    let block = |backward| which.block::<T>(cols, backward, fused).expect("the kernel takes these rows");
    let ((fwd_threads, fwd_ring, stem), (bwd_threads, bwd_ring, _)) = (block(false), block(true));
    let fwd_grid = match kernel {
        LnKernel::General => rows.div_ceil(4),
        LnKernel::Cached => rows,
        LnKernel::Streamed => 3,
    };
    let bwd_grid = 3;
    let (fwd_threads, fwd_ring, bwd_threads, bwd_ring) =
        (fwd_threads as usize, fwd_ring as usize, bwd_threads as usize, bwd_ring as usize);

    let mut s = Script::new(&tag);
    let (bx, br, bw, bb) =
        (s.input(&T::bytes(&x)), s.input(&T::bytes(&r)), s.input(&T::bytes(&w)), s.input(&T::bytes(&b)));
    let (bout, bsum, bmean, brstd) =
        (s.output(n * size), s.output(n * size), s.output(rows * 4), s.output(rows * 4));
    s.ptr(bx);
    if fused {
        s.ptr(br);
    } else {
        s.arg("null");
    }
    s.ptr(bw).ptr(bb).ptr(bout);
    if fused {
        s.ptr(bsum);
    } else {
        s.arg("null");
    }
    s.ptr(bmean)
        .ptr(brstd)
        .arg(&format!("i32 {rows}"))
        .arg(&format!("i32 {cols}"))
        .arg(&format!("f32 {eps}"));
    s.launch(&format!("layernorm_fwd{stem}_{}", T::NAME), fwd_grid, fwd_threads, 1, fwd_ring);
    let got = s.run(emu, &[bout, bsum, bmean, brstd]);
    check::<T>(&format!("{tag} out"), &T::values(&got[0]), &want);
    check_with(&format!("{tag} mean"), &<f32 as Elem>::values(&got[2]), &wmean, 1e-4, 1e-5);
    check_with(&format!("{tag} rstd"), &<f32 as Elem>::values(&got[3]), &wrstd, 1e-4, 1e-5);
    if fused {
        assert_eq!(T::values(&got[1]), input, "{tag}: sum_out is x + residual rounded");
    }

    // Backward from the reference statistics, with the residual stream's gradient when fused.
    let (dout, dres) = (rng.values::<T>(n, 1.0), rng.values::<T>(n, 1.0));
    let (mut wdx, mut wdw, mut wdb) = (vec![0.0; n], vec![0.0; cols], vec![0.0; cols]);
    polylm_kernels::layernorm::layernorm_backward(
        &input, &w, &wmean, &wrstd, &dout, cols, &mut wdx, &mut wdw, &mut wdb,
    );
    if fused {
        wdx.iter_mut().zip(&dres).for_each(|(d, e)| *d += e);
    }
    let mut s = Script::new(&format!("{tag}-bwd"));
    let bx = s.input(&T::bytes(&input));
    let bw = s.input(&T::bytes(&w));
    let (bm, brs) = (s.input(&f32_bytes(&wmean)), s.input(&f32_bytes(&wrstd)));
    let (bd, bdr) = (s.input(&T::bytes(&dout)), s.input(&T::bytes(&dres)));
    let (bdx, bpart) = (s.output(n * size), s.output(bwd_grid * 2 * cols * 4));
    s.ptr(bx).ptr(bw).ptr(bm).ptr(brs).ptr(bd);
    if fused {
        s.ptr(bdr);
    } else {
        s.arg("null");
    }
    s.ptr(bdx).ptr(bpart).arg(&format!("i32 {rows}")).arg(&format!("i32 {cols}"));
    s.launch(&format!("layernorm_bwd{stem}_{}", T::NAME), bwd_grid, bwd_threads, 1, bwd_ring);
    let got = s.run(emu, &[bdx, bpart]);
    check::<T>(&format!("{tag} dx"), &T::values(&got[0]), &wdx);
    // The per-block partials, summed here (the GPU's `column_sum` kernel is not emulated).
    let partial = <f32 as Elem>::values(&got[1]);
    let (mut dw, mut db) = (vec![0.0; cols], vec![0.0; cols]);
    for blk in partial.chunks_exact(2 * cols) {
        dw.iter_mut().zip(&blk[..cols]).for_each(|(a, p)| *a += p);
        db.iter_mut().zip(&blk[cols..]).for_each(|(a, p)| *a += p);
    }
    check_with(&format!("{tag} dweight"), &dw, &wdw, 2e-5, 2e-6);
    check_with(&format!("{tag} dbias"), &db, &wdb, 2e-5, 2e-6);
}

fn layernorm_all<T: Elem>(emu: &Path, seed: u64) {
    let width = 16 / std::mem::size_of::<T>();
    // Rows of whole vectors for the cached and streamed kernels, a ragged row count and a
    // ragged last warp (packs not a multiple of 32); a ragged width for the general kernels.
    let cols = 33 * width;
    for fused in [false, true] {
        for kernel in [LnKernel::General, LnKernel::Cached, LnKernel::Streamed] {
            layernorm_case::<T>(emu, kernel, 37, cols, fused, seed);
        }
        layernorm_case::<T>(emu, LnKernel::General, 13, 45, fused, seed + 1);
    }
}

#[test]
fn layernorm_kernels_match_the_cpu_under_emulation() {
    let Some(emu) = layernorm_emulator() else { return };
    layernorm_all::<f32>(emu, 11);
    layernorm_all::<bf16>(emu, 12);
    layernorm_all::<f16>(emu, 13);
}

// ---------------------------------------------------------------- cross-entropy

const CE_CLUSTER: usize = 8;
const CE_THREADS: usize = 64;

fn cross_entropy_emulator() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    emulator(&BIN, &polylm_kernels::cuda::cross_entropy::SOURCE, || {
        typed(&["cross_entropy", "cross_entropy_cluster"])
    })
}

/// Where the gradient goes in a cross-entropy launch.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Grad {
    None,
    Separate,
    InPlace,
}

#[allow(clippy::too_many_arguments)]
fn cross_entropy_case<T: Elem>(
    emu: &Path,
    cluster: bool,
    rows: usize,
    vocab: usize,
    grad: Grad,
    per_row: bool,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let tag = format!("ce-{cluster}-{}-{rows}x{vocab}-{grad:?}-{per_row}", T::NAME);
    let size = std::mem::size_of::<T>();
    let n = rows * vocab;
    let logits = rng.values::<T>(n, 6.0);
    let ignore = 3u32.min(vocab as u32 - 1);
    // Ignored rows, and the last row's target outside the vocabulary (its loss is NaN).
    let targets: Vec<u32> = (0..rows)
        .map(|r| match r % 5 {
            _ if r == rows - 1 => vocab as u32,
            2 => ignore,
            _ => rng.below(vocab as u64) as u32,
        })
        .collect();
    let dloss: Vec<f64> = (0..rows).map(|_| rng.value(1.0) as f32 as f64).collect();
    let scale = 1.0 / rows as f32;

    let mut s = Script::new(&tag);
    let bl = s.input(&T::bytes(&logits));
    let bt = s.input(&targets.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<_>>());
    let (bloss, blse) = (s.output(rows * 4), s.output(rows * 4));
    let bdl = s.input(&f32_bytes(&dloss));
    let bg = if grad == Grad::Separate { s.output(n * size) } else { bl };
    s.ptr(bl).ptr(bt);
    if grad == Grad::None {
        s.arg("null");
    } else {
        s.ptr(bg);
    }
    s.ptr(bloss).ptr(blse);
    if per_row {
        s.ptr(bdl);
    } else {
        s.arg("null");
    }
    s.arg(&format!("f32 {scale}"));
    if cluster {
        let width = 16 / size;
        let chunk = vocab.div_ceil(CE_CLUSTER).div_ceil(width) * width;
        let stages = (200 * 1024 / (chunk * size)).min(4);
        s.arg(&format!("i32 {rows}"))
            .arg(&format!("i32 {vocab}"))
            .arg(&format!("i32 {chunk}"))
            .arg(&format!("i32 {stages}"));
        s.arg(&format!("u32 {ignore}")).arg("i32 1");
        // Two clusters, so that each takes several rows and wraps its ring.
        s.launch(
            &format!("cross_entropy_cluster_{}", T::NAME),
            2 * CE_CLUSTER,
            CE_THREADS,
            CE_CLUSTER,
            stages * chunk * size,
        );
    } else {
        s.arg(&format!("i32 {vocab}")).arg(&format!("u32 {ignore}")).arg("i32 1");
        s.launch(&format!("cross_entropy_{}", T::NAME), rows, CE_THREADS, 1, 0);
    }
    let got = s.run(emu, &[bloss, blse, bg]);

    let valid = rows - 1;
    let (mut wloss, mut wlse) = (vec![0.0; valid], vec![0.0; valid]);
    let lv = &logits[..valid * vocab];
    polylm_kernels::cross_entropy::cross_entropy_forward(
        lv,
        &targets[..valid],
        vocab,
        Some(ignore),
        &mut wloss,
        &mut wlse,
    );
    let loss = <f32 as Elem>::values(&got[0]);
    let lse = <f32 as Elem>::values(&got[1]);
    check_with(&format!("{tag} loss"), &loss[..valid], &wloss, 1e-5, 1e-5);
    assert!(
        loss[valid].is_nan(),
        "{tag}: a target outside the vocabulary gives a NaN loss, not {}",
        loss[valid]
    );
    check_with(&format!("{tag} lse"), &lse[..valid], &wlse, 1e-5, 1e-5);
    if grad == Grad::None {
        return;
    }
    let scales: Vec<f64> = if per_row { dloss[..valid].to_vec() } else { vec![f64::from(scale); valid] };
    let mut wd = vec![0.0; valid * vocab];
    polylm_kernels::cross_entropy::cross_entropy_backward(
        lv,
        &targets[..valid],
        &wlse,
        &scales,
        vocab,
        Some(ignore),
        &mut wd,
    );
    check::<T>(&format!("{tag} dlogits"), &T::values(&got[2])[..valid * vocab], &wd);
}

fn cross_entropy_all<T: Elem>(emu: &Path, seed: u64) {
    let width = 16 / std::mem::size_of::<T>();
    for (grad, per_row) in [(Grad::Separate, false), (Grad::InPlace, true), (Grad::None, false)] {
        // The row kernel on a ragged vocabulary (its scalar path) and a whole-vector one.
        cross_entropy_case::<T>(emu, false, 7, 301, grad, per_row, seed);
        cross_entropy_case::<T>(emu, false, 7, 125 * width, grad, per_row, seed + 1);
        // The cluster kernel: 13 rows over 2 clusters wrap a 4-slot ring; at 25 vectors the
        // last block of each cluster gets no columns at all.
        cross_entropy_case::<T>(emu, true, 13, 125 * width, grad, per_row, seed + 2);
        cross_entropy_case::<T>(emu, true, 13, 25 * width, grad, per_row, seed + 3);
    }
}

#[test]
fn cross_entropy_kernels_match_the_cpu_under_emulation() {
    let Some(emu) = cross_entropy_emulator() else { return };
    cross_entropy_all::<f32>(emu, 21);
    cross_entropy_all::<bf16>(emu, 22);
    cross_entropy_all::<f16>(emu, 23);
}

#[test]
fn shared_declarations_are_rewritten_for_the_arena() {
    let code = "    __shared__ float scratch[32 * LN_ROWS];\n    extern __shared__ __align__(16) unsigned char ring[];\n    __shared__ __align__(8) float2 partials[2][CE_CLUSTER];\nint x;";
    let out = rewrite_shared(code);
    assert_eq!(
        out,
        "    auto& scratch = ::emu::shared<float[32 * LN_ROWS]>(__func__, \"scratch\");\n    unsigned char* ring = reinterpret_cast<unsigned char*>(::emu::dynamic_shared());\n    auto& partials = ::emu::shared<float2[2][CE_CLUSTER]>(__func__, \"partials\");\nint x;\n"
    );
}

// ---------------------------------------------------------------- bias + GeLU

fn gelu_emulator() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    emulator(&BIN, &polylm_kernels::cuda::gelu::SOURCE, || typed(&["bias_gelu_fwd", "bias_gelu_bwd"]))
}

/// The backward on the grid the wrapper launches for `multiprocessors` SMs: dx against the CPU
/// kernel, and the column partial sums of every split, added up, against its bias gradient.
fn gelu_backward_case<T: Elem>(emu: &Path, rows: usize, cols: usize, multiprocessors: usize, seed: u64) {
    use polylm_kernels::cuda::gelu::{backward_grid, BACKWARD_THREADS};
    let mut rng = Rng(seed);
    let n = rows * cols;
    let (x, dout, bias) = (rng.values::<T>(n, 3.0), rng.values::<T>(n, 1.0), rng.values::<T>(cols, 1.0));
    let (mut wdx, mut wdb) = (vec![0.0; n], vec![0.0; cols]);
    polylm_kernels::gelu::bias_gelu_backward(&x, Some(&bias), &dout, cols, &mut wdx, Some(&mut wdb));
    let wdx: Vec<f64> = wdx.into_iter().map(T::round).collect();
    // The wrapper's choice: vectors when the rows are whole 16-byte vectors (the emulator's
    // buffers are aligned).
    let vector = cols.is_multiple_of(16 / std::mem::size_of::<T>());
    let grid = backward_grid::<T>(rows, cols, vector, multiprocessors);
    let tag = format!("gelu-bwd-{}-{rows}x{cols}-{multiprocessors}", T::NAME);
    let mut script = Script::new(&tag);
    let (bx, bb, bd) =
        (script.input(&T::bytes(&x)), script.input(&T::bytes(&bias)), script.input(&T::bytes(&dout)));
    let size = std::mem::size_of::<T>();
    let (bdx, bp) = (script.output(n * size), script.output(grid.splits * cols * 4));
    script.ptr(bx).ptr(bb).ptr(bd).ptr(bdx).ptr(bp);
    script.arg(&format!("i32 {rows}")).arg(&format!("i32 {cols}")).arg(&format!("i32 {}", i32::from(vector)));
    let kernel = format!("bias_gelu_bwd_{}", T::NAME);
    script.launch3(&kernel, [grid.col_blocks, grid.splits, 1], BACKWARD_THREADS as usize, 1, 0);
    let got = script.run(emu, &[bdx, bp]);
    check::<T>(&format!("{tag} dx"), &T::values(&got[0]), &wdx);
    let partial = <f32 as Elem>::values(&got[1]);
    let dbias: Vec<f64> = (0..cols).map(|c| (0..grid.splits).map(|s| partial[s * cols + c]).sum()).collect();
    check::<f32>(&format!("{tag} dbias (splits {})", grid.splits), &dbias, &wdb);
}

/// The forward on two blocks of 256 threads (so the grid-stride loop takes several steps).
fn gelu_forward_case<T: Elem>(emu: &Path, rows: usize, cols: usize, seed: u64) {
    let mut rng = Rng(seed);
    let n = rows * cols;
    let (x, bias) = (rng.values::<T>(n, 3.0), rng.values::<T>(cols, 1.0));
    let mut want = vec![0.0; n];
    polylm_kernels::gelu::bias_gelu_forward(&x, Some(&bias), cols, &mut want);
    let want: Vec<f64> = want.into_iter().map(T::round).collect();
    let tag = format!("gelu-fwd-{}-{rows}x{cols}", T::NAME);
    let mut script = Script::new(&tag);
    let (bx, bb) = (script.input(&T::bytes(&x)), script.input(&T::bytes(&bias)));
    let bo = script.output(n * std::mem::size_of::<T>());
    script.ptr(bx).ptr(bb).ptr(bo).arg(&format!("i64 {n}")).arg(&format!("i32 {cols}"));
    script.launch(&format!("bias_gelu_fwd_{}", T::NAME), 2, 256, 1, 0);
    let got = script.run(emu, &[bo]);
    check::<T>(&format!("{tag} out"), &T::values(&got[0]), &want);
}

fn gelu_all<T: Elem>(emu: &Path, seed: u64) {
    let width = 16 / std::mem::size_of::<T>();
    // Forward: the vector path (whole-vector rows) and the scalar one.
    gelu_forward_case::<T>(emu, 29, 24 * width, seed);
    gelu_forward_case::<T>(emu, 29, 24 * width + 3, seed + 1);
    let width = 16 / std::mem::size_of::<T>();
    // The vector path with a partial last block of columns, the scalar path on ragged widths,
    // one row, and row splits that leave the last split short or empty.
    for (rows, cols, sms) in
        [(37, 40 * width, 4), (37, 40 * width + 1, 4), (1, 5, 1), (61, 3 * width, 132), (20, 257, 2)]
    {
        gelu_backward_case::<T>(emu, rows, cols, sms, seed + rows as u64 + cols as u64);
    }
}

#[test]
fn bias_gelu_matches_the_cpu_under_emulation() {
    let Some(emu) = gelu_emulator() else { return };
    gelu_all::<f32>(emu, 31);
    gelu_all::<bf16>(emu, 32);
    gelu_all::<f16>(emu, 33);
}

// ---------------------------------------------------------------- sums along a long axis

fn elementwise_emulator() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    emulator(&BIN, &polylm_kernels::cuda::elementwise::SOURCE, || {
        let mut names = typed(&["sum_rows_partial", "binary", "gather", "scatter"]);
        for from in ["f32", "bf16", "f16"] {
            names.extend(["f32", "bf16", "f16"].map(|to| format!("cast_{from}_to_{to}")));
        }
        names
    })
}

/// `sum_rows_partial` on the plan `sum_axis` launches for `multiprocessors` SMs: the splits'
/// partial sums, added up (as `column_sum` adds them), against f64 sums.
fn sum_axis_case<T: Elem>(
    emu: &Path,
    outer: usize,
    len: usize,
    inner: usize,
    multiprocessors: usize,
    seed: u64,
) {
    use polylm_kernels::cuda::elementwise::{sum_axis_plan, SUM_THREADS};
    let mut rng = Rng(seed);
    let x = rng.values::<T>(outer * len * inner, 2.0);
    let vector = inner.is_multiple_of(16 / std::mem::size_of::<T>());
    let plan = sum_axis_plan::<T>(outer, len, inner, vector, multiprocessors).expect("a long axis");
    let tag = format!("sum-axis-{}-{outer}x{len}x{inner}-{multiprocessors}", T::NAME);
    let mut script = Script::new(&tag);
    let bx = script.input(&T::bytes(&x));
    let bp = script.output(plan.splits * outer * inner * 4);
    script.ptr(bx).ptr(bp).arg(&format!("i64 {len}")).arg(&format!("i64 {inner}"));
    script.arg(&format!("i32 {}", i32::from(vector)));
    let kernel = format!("sum_rows_partial_{}", T::NAME);
    script.launch3(&kernel, [plan.col_blocks, plan.splits, outer], SUM_THREADS as usize, 1, 0);
    let partial = <f32 as Elem>::values(&script.run(emu, &[bp])[0]);
    let width = outer * inner;
    let got: Vec<f64> = (0..width).map(|c| (0..plan.splits).map(|s| partial[s * width + c]).sum()).collect();
    let want: Vec<f64> = (0..width)
        .map(|j| {
            let (o, i) = (j / inner, j % inner);
            (0..len).map(|l| x[(o * len + l) * inner + i]).sum()
        })
        .collect();
    // Sums of `len` f32 values of order 1: the tolerance of f32 accumulation.
    check_with(&format!("{tag} (splits {})", plan.splits), &got, &want, 1e-5, 1e-5);
}

fn sum_axis_all<T: Elem>(emu: &Path, seed: u64) {
    let width = 16 / std::mem::size_of::<T>();
    // Vector and scalar columns, a partial last column block, several outer entries, splits
    // whose rows are not a multiple of the four-row step, and a short last split.
    for (outer, len, inner, sms) in
        [(1, 300, 40 * width, 4), (1, 300, 37, 4), (3, 97, 2 * width, 8), (2, 64, 300, 1), (1, 1000, 3, 132)]
    {
        sum_axis_case::<T>(emu, outer, len, inner, sms, seed + (outer * len + inner) as u64);
    }
}

#[test]
fn long_axis_sums_match_f64_under_emulation() {
    let Some(emu) = elementwise_emulator() else { return };
    sum_axis_all::<f32>(emu, 41);
    sum_axis_all::<bf16>(emu, 42);
    sum_axis_all::<f16>(emu, 43);
}

// ---------------------------------------------------------------- strided elementwise

/// `binary` (add, then mul) over strided operands against f64, and `gather` of the first
/// operand bit for bit: a view of `shape` with strides `a_strides` over buffer `a` and
/// `b_strides` over `b` (the index split into coordinates by the kernels' fast division).
fn binary_case<T: Elem>(emu: &Path, shape: &[usize], a_strides: &[usize], b_strides: &[usize], seed: u64) {
    use polylm_kernels::cuda::elementwise::strided_shape_bytes;
    let mut rng = Rng(seed);
    let n: usize = shape.iter().product();
    let span = |strides: &[usize]| 1 + shape.iter().zip(strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>();
    let (a, b) = (rng.values::<T>(span(a_strides), 2.0), rng.values::<T>(span(b_strides), 2.0));
    let at = |strides: &[usize], mut i: usize| {
        let mut off = 0;
        for d in (0..shape.len()).rev() {
            off += (i % shape[d]) * strides[d];
            i /= shape[d];
        }
        off
    };
    let shape_bytes = strided_shape_bytes(shape, &[(a_strides, 0, a.len()), (b_strides, 0, b.len())])
        .expect("a valid view");
    for (code, f) in [(0, BinaryFn::from(|x, y| x + y)), (2, BinaryFn::from(|x, y| x * y))] {
        let tag = file_tag(&format!("binary{code}-{}-{shape:?}-{a_strides:?}-{b_strides:?}", T::NAME));
        let mut script = Script::new(&tag);
        let (ba, bb) = (script.input(&T::bytes(&a)), script.input(&T::bytes(&b)));
        let bo = script.output(n * std::mem::size_of::<T>());
        script
            .bytes(&shape_bytes)
            .ptr(ba)
            .ptr(bb)
            .ptr(bo)
            .arg(&format!("i64 {n}"))
            .arg(&format!("i32 {code}"));
        script.launch(&format!("binary_{}", T::NAME), 3, 128, 1, 0);
        let got = T::values(&script.run(emu, &[bo])[0]);
        let want: Vec<f64> = (0..n).map(|i| T::round(f(a[at(a_strides, i)], b[at(b_strides, i)]))).collect();
        check::<T>(&tag, &got, &want);
    }
    let tag = file_tag(&format!("gather-{}-{shape:?}-{a_strides:?}", T::NAME));
    let mut script = Script::new(&tag);
    let ba = script.input(&T::bytes(&a));
    let bo = script.output(n * std::mem::size_of::<T>());
    let gather_bytes = strided_shape_bytes(shape, &[(a_strides, 0, a.len())]).expect("a valid view");
    script.bytes(&gather_bytes).ptr(ba).ptr(bo).arg(&format!("i64 {n}"));
    script.launch(&format!("gather_{}", T::NAME), 2, 128, 1, 0);
    let got = T::values(&script.run(emu, &[bo])[0]);
    let want: Vec<f64> = (0..n).map(|i| a[at(a_strides, i)]).collect();
    assert_eq!(got, want, "{tag}");
    // And back: the dense values scattered into the first operand's view, bit for bit.
    let tag = file_tag(&format!("scatter-{}-{shape:?}-{a_strides:?}", T::NAME));
    let dense: Vec<usize> = (0..shape.len()).map(|d| shape[d + 1..].iter().product()).collect();
    let src = rng.values::<T>(n, 2.0);
    let mut script = Script::new(&tag);
    let bs = script.input(&T::bytes(&src));
    let bo = script.output(a.len() * std::mem::size_of::<T>());
    let scatter_bytes =
        strided_shape_bytes(shape, &[(&dense, 0, n), (a_strides, 0, a.len())]).expect("a valid view");
    script.bytes(&scatter_bytes).ptr(bs).ptr(bo).arg(&format!("i64 {n}"));
    script.launch(&format!("scatter_{}", T::NAME), 2, 128, 1, 0);
    let got = T::values(&script.run(emu, &[bo])[0]);
    for (i, &v) in src.iter().enumerate() {
        assert_eq!(got[at(a_strides, i)], v, "{tag}: element {i}");
    }
}

/// An f64 binary op (the reference of one `binary` op code).
type BinaryFn = fn(f64, f64) -> f64;

/// `text` with every character but letters, digits and `-` made `_` (a directory name).
fn file_tag(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

fn strided_all<T: Elem>(emu: &Path, seed: u64) {
    // Dense (one merged axis: the vector path, with a ragged tail), a bias broadcast over rows,
    // a transposed operand, and the model's [B, T, 3, H, D] → [3, B, H, T, D] permutation
    // (element (s, b, h, t, d) of the view at b·T·3HD + t·3HD + s·HD + h·D + d) against a
    // dense operand.
    binary_case::<T>(emu, &[7, 37], &[37, 1], &[37, 1], seed);
    binary_case::<T>(emu, &[13, 24], &[24, 1], &[0, 1], seed + 1);
    binary_case::<T>(emu, &[9, 11], &[1, 9], &[11, 1], seed + 2);
    let (b, t, h, d) = (2, 5, 3, 8);
    let permuted = [h * d, t * 3 * h * d, d, 3 * h * d, 1];
    let dense = [b * h * t * d, h * t * d, t * d, d, 1];
    binary_case::<T>(emu, &[3, b, h, t, d], &permuted, &dense, seed + 3);
    // A contiguous last axis of whole vectors whose other strides are not (the scalar path), and
    // the attention output's [B, H, T, D] → [B, T, H, D] permutation (the vector path).
    binary_case::<T>(emu, &[5, 16], &[17, 1], &[16, 1], seed + 4);
    binary_case::<T>(emu, &[b, t, h, d], &[h * t * d, d, t * d, 1], &[t * h * d, h * d, d, 1], seed + 5);
}

#[test]
fn strided_elementwise_kernels_match_f64_under_emulation() {
    let Some(emu) = elementwise_emulator() else { return };
    strided_all::<f32>(emu, 51);
    strided_all::<bf16>(emu, 52);
    strided_all::<f16>(emu, 53);
}

/// `cast` from `S` to `D` on a ragged length (the vector groups and the tail), bit for bit.
fn cast_case<S: Elem, D: Elem>(emu: &Path, n: usize, seed: u64) {
    let mut rng = Rng(seed);
    let x = rng.values::<S>(n, 3.0);
    let tag = format!("cast-{}-{}-{n}", S::NAME, D::NAME);
    let mut script = Script::new(&tag);
    let bx = script.input(&S::bytes(&x));
    let bo = script.output(n * std::mem::size_of::<D>());
    script.ptr(bx).ptr(bo).arg(&format!("i64 {n}"));
    script.launch(&format!("cast_{}_to_{}", S::NAME, D::NAME), 2, 32, 1, 0);
    let got = D::values(&script.run(emu, &[bo])[0]);
    let want: Vec<f64> = x.iter().map(|&v| D::round(v)).collect();
    assert_eq!(got, want, "{tag}");
}

#[test]
fn casts_round_to_nearest_even_under_emulation() {
    let Some(emu) = elementwise_emulator() else { return };
    macro_rules! to_all {
        ($s:ty, $seed:expr) => {
            cast_case::<$s, f32>(emu, 203, $seed);
            cast_case::<$s, bf16>(emu, 203, $seed + 1);
            cast_case::<$s, f16>(emu, 203, $seed + 2);
        };
    }
    to_all!(f32, 71);
    to_all!(bf16, 74);
    to_all!(f16, 77);
}

// ---------------------------------------------------------------- embedding lookup

fn embedding_emulator() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    emulator(&BIN, &polylm_kernels::cuda::embedding::SOURCE, || typed(&["embedding_fwd"]))
}

/// The lookup on a grid smaller than the tokens (so blocks stride over them), bit for bit.
fn embedding_case<T: Elem>(emu: &Path, vocab: usize, dim: usize, tokens: usize, seed: u64) {
    let mut rng = Rng(seed);
    let table = rng.values::<T>(vocab * dim, 1.0);
    let ids: Vec<u32> = (0..tokens).map(|_| rng.below(vocab as u64) as u32).collect();
    let tag = format!("embedding-{}-{vocab}x{dim}-{tokens}", T::NAME);
    let mut script = Script::new(&tag);
    let bt = script.input(&T::bytes(&table));
    let bi = script.input(&ids.iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>());
    let bo = script.output(tokens * dim * std::mem::size_of::<T>());
    script.ptr(bt).ptr(bi).ptr(bo).arg(&format!("i64 {}", tokens * dim)).arg(&format!("i32 {dim}"));
    script.launch(&format!("embedding_fwd_{}", T::NAME), 3, 64, 1, 0);
    let got = T::values(&script.run(emu, &[bo])[0]);
    let want: Vec<f64> =
        ids.iter().flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].to_vec()).collect();
    assert_eq!(got, want, "{tag}");
}

#[test]
fn embedding_lookup_matches_under_emulation() {
    let Some(emu) = embedding_emulator() else { return };
    // Whole 16-byte rows (more vectors than threads) and ragged rows.
    embedding_case::<f32>(emu, 11, 4 * 70, 7, 61);
    embedding_case::<f32>(emu, 11, 37, 7, 62);
    embedding_case::<bf16>(emu, 13, 8 * 9, 5, 63);
    embedding_case::<f16>(emu, 13, 19, 5, 64);
}

// ---------------------------------------------------------------- tensor-core matmul

const GEMM_FLAG_BIAS: i32 = 1;
const GEMM_FLAG_GELU: i32 = 2;
const GEMM_FLAG_PRE: i32 = 4;
const GEMM_FLAG_VEC: i32 = 8;

fn matmul_emulator() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    emulator(&BIN, &polylm_kernels::cuda::matmul_tc::SOURCE, || {
        let mut names = Vec::new();
        for t in ["bf16", "f16"] {
            for tile in ["128x128", "64x64"] {
                for lay in ["nn", "nt", "tn", "tt"] {
                    names.push(format!("gemm_tc_{tile}_{lay}_{t}"));
                }
            }
            names.push(format!("gemm_tc_generic_{t}"));
        }
        names
    })
}

/// Which kernel of `matmul_tc.cu` a case runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum TcKernel {
    Large,
    Small,
    Generic,
    /// matmul_wgmma.cu, 128×128 and 128×256 tiles.
    Hopper128,
    Hopper256,
}

/// The tanh form of GeLU, as the kernels compute it.
fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

/// One product: `a_kmajor` stores A as [M, K] (else [K, M]), `b_kmajor` B as [N, K] (else
/// [K, N]), with leading strides padded to `pad` elements past the dimension and batches
/// `batch_pad` elements apart beyond the matrix; output type `O`.
#[allow(clippy::too_many_arguments)]
fn matmul_case<T: Elem, O: Elem>(
    emu: &Path,
    kernel: TcKernel,
    (m, n, k, batch, b_broadcast): (usize, usize, usize, usize, bool),
    a_kmajor: bool,
    b_kmajor: bool,
    flags: i32,
    (alpha, beta): (f32, f32),
    seed: u64,
) {
    let mut rng = Rng(seed);
    let tag = format!(
        "gemm-{kernel:?}-{}{}-{}-{}-{m}x{n}x{k}x{batch}{}-f{flags}",
        a_kmajor,
        b_kmajor,
        T::NAME,
        O::NAME,
        if b_broadcast { "-bcast" } else { "" }
    );
    // Leading strides: multiples of 8 for the 16-byte path, odd for the generic kernel.
    let lead = |dim: usize| if kernel == TcKernel::Generic { dim + 3 } else { dim.div_ceil(8) * 8 + 8 };
    let (a_ld, b_ld) = (lead(if a_kmajor { k } else { m }), lead(if b_kmajor { k } else { n }));
    let a_rows = if a_kmajor { m } else { k };
    let b_rows = if b_kmajor { n } else { k };
    let a_bs = a_rows * a_ld + if kernel == TcKernel::Generic { 5 } else { 16 };
    // A broadcast B (batch stride 0) is one matrix for every batch entry.
    let b_bs = if b_broadcast { 0 } else { b_rows * b_ld + if kernel == TcKernel::Generic { 5 } else { 16 } };
    let a = rng.values::<T>(batch * a_bs, 1.0);
    let b = rng.values::<T>((batch * b_bs).max(b_rows * b_ld), 1.0);
    let bias = rng.values::<O>(n, 0.5);
    let c0 = rng.values::<O>(batch * m * n, 1.0);
    let (a_rs, a_cs) = if a_kmajor { (a_ld, 1) } else { (1, a_ld) };
    let (b_rs, b_cs) = if b_kmajor { (1, b_ld) } else { (b_ld, 1) };
    let tile = match kernel {
        TcKernel::Large => Tile::Large128x128,
        TcKernel::Small => Tile::Small64x64,
        TcKernel::Generic => Tile::Generic64x64,
        TcKernel::Hopper128 => Tile::Hopper128x128,
        TcKernel::Hopper256 => Tile::Hopper128x256,
    };
    let (bm, bn) = tile.block();
    let (tiles_m, tiles_n) = (m.div_ceil(bm), n.div_ceil(bn));
    let out_kind = match O::NAME {
        "f32" => 0i32,
        "bf16" => 1,
        _ => 2,
    };
    // `struct TcShape` of matmul_tc.cu: eleven i64, two f32, four i32.
    let mut shape = Vec::new();
    for v in [m, n, k, a_rs, a_cs, a_bs, b_rs, b_cs, b_bs, n, m * n] {
        shape.extend((v as i64).to_le_bytes());
    }
    shape.extend(alpha.to_le_bytes());
    shape.extend(beta.to_le_bytes());
    for v in [tiles_m as i32, tiles_n as i32, out_kind, flags] {
        shape.extend(v.to_le_bytes());
    }

    let osize = std::mem::size_of::<O>();
    let mut s = Script::new(&tag);
    let (ba, bb, bbias) = (s.input(&T::bytes(&a)), s.input(&T::bytes(&b)), s.input(&O::bytes(&bias)));
    let bc = s.input(&O::bytes(&c0));
    let bpre = s.output(batch * m * n * osize);
    if matches!(kernel, TcKernel::Hopper128 | TcKernel::Hopper256) {
        // The tensor maps and the shape as matmul_wgmma.rs makes them.
        let a_op = matmul_wgmma::tma_operand(0, 2, k, m, a_cs, a_rs, a_bs, batch).expect("A takes TMA");
        let b_op = matmul_wgmma::tma_operand(0, 2, k, n, b_rs, b_cs, b_bs, batch).expect("B takes TMA");
        assert_eq!((a_op.k_major, b_op.k_major), (a_kmajor, b_kmajor));
        let tmap = |buf: usize, op: &matmul_wgmma::TmaOperand, outer: usize| {
            let [d0, d1, d2] = op.dims;
            let [s1, s2] = op.strides;
            format!("tmap {buf} 0 2 3 {d0} {d1} {d2} {s1} {s2} 64 {outer} 1")
        };
        s.arg(&tmap(ba, &a_op, if a_kmajor { 128 } else { 64 }));
        s.arg(&tmap(bb, &b_op, if b_kmajor { bn } else { 64 }));
        // `struct WgShape`: m, n, k, ldc, c_bs (i64), alpha, beta (f32), batch, tiles_m, tiles_n,
        // a_batched, b_batched, out_kind, flags (i32), padded to 8 bytes.
        let mut wg = Vec::new();
        for v in [m, n, k, n, m * n] {
            wg.extend((v as i64).to_le_bytes());
        }
        wg.extend(alpha.to_le_bytes());
        wg.extend(beta.to_le_bytes());
        for v in [
            batch as i32,
            tiles_m as i32,
            tiles_n as i32,
            a_op.batched as i32,
            b_op.batched as i32,
            out_kind,
            flags,
        ] {
            wg.extend(v.to_le_bytes());
        }
        wg.extend([0u8; 4]);
        s.bytes(&wg).ptr(bc);
    } else {
        s.bytes(&shape).ptr(ba).ptr(bb).ptr(bc);
    }
    if flags & GEMM_FLAG_BIAS != 0 {
        s.ptr(bbias);
    } else {
        s.arg("null");
    }
    if flags & GEMM_FLAG_PRE != 0 {
        s.ptr(bpre);
    } else {
        s.arg("null");
    }
    // The launch as the wrappers make it (kernels/cuda/matmul_tc.rs, matmul_wgmma.rs): the tile's
    // threads and shared memory; the generic kernel loads both operands as if K-major.
    let generic = kernel == TcKernel::Generic;
    let shared = tile.shared_bytes(a_kmajor || generic, b_kmajor || generic);
    let threads = tile.threads() as usize;
    let layout = format!("{}{}", if a_kmajor { 'n' } else { 't' }, if b_kmajor { 't' } else { 'n' });
    match kernel {
        TcKernel::Generic => {
            s.launch3(
                &format!("gemm_tc_generic_{}", T::NAME),
                [tiles_m * tiles_n, 1, batch],
                threads,
                1,
                shared,
            );
        }
        TcKernel::Large | TcKernel::Small => {
            let name = format!("gemm_tc_{}_{layout}_{}", tile.prefix(), T::NAME);
            s.launch3(&name, [tiles_m * tiles_n, 1, batch], threads, 1, shared);
        }
        TcKernel::Hopper128 | TcKernel::Hopper256 => {
            // Persistent: two blocks walk every tile of every batch entry.
            s.launch(&format!("gemm_{}_{layout}_{}", tile.prefix(), T::NAME), 2, threads, 1, shared);
        }
    }
    let got = s.run(emu, &[bc, bpre]);

    let (mut want, mut want_pre) = (vec![0.0; batch * m * n], vec![0.0; batch * m * n]);
    for z in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for p in 0..k {
                    acc += a[z * a_bs + i * a_rs + p * a_cs] * b[z * b_bs + p * b_rs + j * b_cs];
                }
                let mut v = f64::from(alpha) * acc;
                if flags & GEMM_FLAG_BIAS != 0 {
                    v += bias[j];
                }
                let at = z * m * n + i * n + j;
                want_pre[at] = v;
                if flags & GEMM_FLAG_GELU != 0 {
                    v = gelu(v);
                }
                want[at] = v + f64::from(beta) * c0[at];
            }
        }
    }
    let (rtol, atol) = if O::NAME == "f32" { (1e-5, 1e-5) } else { (O::RTOL, O::ATOL) };
    check_with(&format!("{tag} C<{}>", O::NAME), &O::values(&got[0]), &want, rtol, atol);
    if flags & GEMM_FLAG_PRE != 0 {
        check_with(&format!("{tag} pre<{}>", O::NAME), &O::values(&got[1]), &want_pre, rtol, atol);
    }
}

/// bias + GeLU with the pre-activation, stored in pairs.
const GELU_PRE: i32 = GEMM_FLAG_BIAS | GEMM_FLAG_GELU | GEMM_FLAG_PRE | GEMM_FLAG_VEC;

/// One product of the matmul emulation tests: the kernel, (m, n, k, batch, B broadcast over
/// the batch), the layouts (A K-major, B K-major; `None`: all four), f32 output (else the input
/// type), the epilogue flags, and (alpha, beta).
type GemmCase = (TcKernel, (usize, usize, usize, usize, bool), Option<(bool, bool)>, bool, i32, (f32, f32));

/// Runs every case in `cases` with seeds from `seed`.
fn run_gemm_cases<T: Elem>(emu: &Path, cases: &[GemmCase], seed: u64) {
    const LAYOUTS: [(bool, bool); 4] = [(true, false), (true, true), (false, false), (false, true)];
    for (c, &(kernel, dims, layouts, f32_out, flags, scalars)) in cases.iter().enumerate() {
        let layouts = layouts.map_or(LAYOUTS.to_vec(), |l| vec![l]);
        for (i, (ak, bk)) in layouts.into_iter().enumerate() {
            let seed = seed + 10 * c as u64 + i as u64;
            if f32_out {
                matmul_case::<T, f32>(emu, kernel, dims, ak, bk, flags, scalars, seed);
            } else {
                matmul_case::<T, T>(emu, kernel, dims, ak, bk, flags, scalars, seed);
            }
        }
    }
}

/// The portable kernels: ragged in every dimension (M, N not multiples of the tile, K not of
/// 32), batches, every epilogue, the generic kernel, a single element, a B shared by every
/// batch entry.
const TC_CASES: [GemmCase; 7] = [
    (TcKernel::Small, (70, 66, 40, 2, false), None, true, GEMM_FLAG_VEC, (0.75, 0.5)),
    (TcKernel::Small, (33, 72, 56, 1, false), None, false, GELU_PRE, (1.0, 0.0)),
    (TcKernel::Large, (130, 72, 40, 1, false), None, false, GEMM_FLAG_BIAS | GEMM_FLAG_VEC, (1.0, 1.0)),
    (TcKernel::Generic, (37, 29, 45, 2, false), Some((true, true)), true, GEMM_FLAG_BIAS, (1.0, 0.0)),
    (TcKernel::Small, (1, 1, 1, 1, false), Some((true, false)), true, 0, (1.0, 0.0)),
    (TcKernel::Large, (140, 24, 48, 3, true), Some((false, true)), true, 0, (1.0, 0.0)),
    (
        TcKernel::Generic,
        (20, 70, 17, 1, false),
        Some((false, false)),
        false,
        GELU_PRE & !GEMM_FLAG_VEC,
        (0.5, 0.25),
    ),
];

fn wgmma_emulator() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    emulator(&BIN, &matmul_wgmma::SOURCE, || {
        let mut names = Vec::new();
        for t in ["bf16", "f16"] {
            for tile in ["128x128", "128x256"] {
                for lay in ["nn", "nt", "tn", "tt"] {
                    names.push(format!("gemm_wgmma_{tile}_{lay}_{t}"));
                }
            }
        }
        names
    })
}

/// The Hopper kernels: ragged M, N and K (K = 100: a full 64-deep slice and a zero-filled
/// tail), batches, a single element, a B shared by every batch entry, K = 320 (five slices: the
/// 128×256 tile's four-stage ring wraps within one tile).
const WGMMA_CASES: [GemmCase; 5] = [
    (TcKernel::Hopper128, (200, 150, 100, 2, false), None, true, GEMM_FLAG_VEC, (0.75, 0.5)),
    (TcKernel::Hopper256, (130, 264, 72, 1, false), None, false, GELU_PRE, (1.0, 0.0)),
    (TcKernel::Hopper128, (1, 1, 1, 1, false), Some((true, true)), true, 0, (1.0, 0.0)),
    (TcKernel::Hopper128, (150, 40, 64, 3, true), Some((false, false)), true, 0, (1.0, 0.0)),
    (TcKernel::Hopper256, (64, 200, 320, 1, false), Some((true, false)), false, GEMM_FLAG_VEC, (1.0, 0.0)),
];

#[test]
fn hopper_matmul_matches_f64_under_emulation() {
    let Some(emu) = wgmma_emulator() else { return };
    run_gemm_cases::<bf16>(emu, &WGMMA_CASES, 61);
    run_gemm_cases::<f16>(emu, &WGMMA_CASES, 161);
}

#[test]
fn tensor_core_matmul_matches_f64_under_emulation() {
    let Some(emu) = matmul_emulator() else { return };
    run_gemm_cases::<bf16>(emu, &TC_CASES, 31);
    run_gemm_cases::<f16>(emu, &TC_CASES, 131);
}

// ---------------------------------------------------------------- flash attention

fn flash_emulator() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    emulator(&BIN, &polylm_kernels::cuda::flash_attention::SOURCE, || {
        let mut names = Vec::new();
        for t in ["bf16", "f16"] {
            for d in [64, 128] {
                names.push(format!("flash_fwd_{t}_d{d}"));
                names.push(format!("flash_bwd_{t}_d{d}"));
            }
            names.push(format!("flash_bwd_prep_{t}"));
            names.push(format!("flash_bwd_dq_{t}"));
        }
        names
    })
}

/// Attention in f64 over [bh, seq, d]: the output, the log-sum-exp, and the gradients of q, k, v
/// for the upstream gradient `dout`.
#[allow(clippy::type_complexity)]
fn attention_reference(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    (bh, seq, d): (usize, usize, usize),
    causal: bool,
    scale: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut out, mut lse) = (vec![0.0; bh * seq * d], vec![0.0; bh * seq]);
    let (mut dq, mut dk, mut dv) =
        (vec![0.0; bh * seq * d], vec![0.0; bh * seq * d], vec![0.0; bh * seq * d]);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for h in 0..bh {
        let row = |t: &[f64], i: usize| t[(h * seq + i) * d..(h * seq + i + 1) * d].to_vec();
        for i in 0..seq {
            let keys = if causal { i + 1 } else { seq };
            let s: Vec<f64> = (0..keys).map(|j| scale * dot(&row(q, i), &row(k, j))).collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = s.iter().map(|x| (x - mx).exp()).sum();
            lse[h * seq + i] = mx + total.ln();
            let p: Vec<f64> = s.iter().map(|x| (x - lse[h * seq + i]).exp()).collect();
            let o = (h * seq + i) * d;
            for (j, pj) in p.iter().enumerate() {
                for c in 0..d {
                    out[o + c] += pj * v[(h * seq + j) * d + c];
                }
            }
            let g = row(dout, i);
            let big_d = dot(&g, &out[o..o + d]);
            for (j, pj) in p.iter().enumerate() {
                let kj = (h * seq + j) * d;
                let dp = dot(&g, &row(v, j));
                let ds = pj * (dp - big_d);
                for c in 0..d {
                    dv[kj + c] += pj * g[c];
                    dq[o + c] += scale * ds * k[kj + c];
                    dk[kj + c] += scale * ds * q[o + c];
                }
            }
        }
    }
    (out, lse, dq, dk, dv)
}

/// One flash test: its shape, type, and where its operands lie. Dense cases put q, k, v
/// (and dQ, dK, dV) at offsets 0, n, 2n of one buffer, the output and its gradient dense;
/// packed cases lay them out as the engine does for a PolyLM block: q, k, v read in place from
/// one `[batch, seq, 3, heads, d]` buffer, the output and its gradient `[batch, seq, heads, d]`,
/// the gradients packed like the inputs.
#[derive(Clone, Copy, Debug)]
struct FlashCase {
    batch: usize,
    heads: usize,
    seq: usize,
    d: usize,
    causal: bool,
    f16: bool,
    packed: bool,
}

/// The layouts of a [`FlashCase`]'s operands.
struct FlashLayouts {
    shape: FlashShape,
    /// q, k, v in the input buffer (and dQ, dK, dV in the gradient buffer, laid out alike).
    qkv: [HeadLayout; 3],
    /// The output, and the output gradient in its own buffer.
    out: HeadLayout,
}

impl FlashCase {
    fn layouts(&self) -> FlashLayouts {
        let shape = FlashShape::new(self.batch, self.heads, self.seq, self.d, self.causal);
        let n = shape.qkv_len();
        if self.packed {
            let qkv = [0, 1, 2].map(|i| HeadLayout::packed_qkv(&shape, i));
            FlashLayouts { shape, qkv, out: HeadLayout::token_major(&shape) }
        } else {
            let dense = HeadLayout::dense(&shape);
            let part = |i: usize| HeadLayout { offset: i * n, ..dense };
            FlashLayouts { shape, qkv: [part(0), part(1), part(2)], out: dense }
        }
    }

    fn tag(&self, kind: &str, elem: &str) -> String {
        let FlashCase { batch, heads, seq, d, causal, packed, .. } = *self;
        let layout = if packed { "packed" } else { "dense" };
        format!("{kind}-{elem}-{batch}x{heads}x{seq}x{d}-{causal}-{layout}")
    }
}

/// Writes dense `[batch, heads, seq, d]` values into `buf` at `l`.
fn place(values: &[f64], l: &HeadLayout, s: &FlashShape, buf: &mut [f64]) {
    for (row, chunk) in values.chunks(s.head_dim).enumerate() {
        let (bh, t) = (row / s.seq, row % s.seq);
        let at = l.offset + (bh / s.heads) * l.batch + (bh % s.heads) * l.head + t * l.row;
        buf[at..at + s.head_dim].copy_from_slice(chunk);
    }
}

/// Reads the dense `[batch, heads, seq, d]` values at `l` out of `buf`.
fn take(buf: &[f64], l: &HeadLayout, s: &FlashShape) -> Vec<f64> {
    let mut out = Vec::with_capacity(s.qkv_len());
    for row in 0..s.batch * s.heads * s.seq {
        let (bh, t) = (row / s.seq, row % s.seq);
        let at = l.offset + (bh / s.heads) * l.batch + (bh % s.heads) * l.head + t * l.row;
        out.extend_from_slice(&buf[at..at + s.head_dim]);
    }
    out
}

/// `struct FlashDims` of common.cuh, written by hand from the C declaration: bh, heads, seq,
/// causal (i32), scale (f32), a 4-byte pad, then the batch, head and row strides (i64) of q, k,
/// v, o, dout, dq, dk, dv (zeros where a kernel takes no such operand).
fn flash_dims(s: &FlashShape, layouts: [Option<&HeadLayout>; 8]) -> Vec<u8> {
    let mut dims = Vec::new();
    for x in [(s.batch * s.heads) as i32, s.heads as i32, s.seq as i32, s.causal as i32] {
        dims.extend(x.to_le_bytes());
    }
    dims.extend(s.scale.to_le_bytes());
    dims.extend(0i32.to_le_bytes());
    for l in layouts {
        let (b, h, r) = l.map_or((0, 0, 0), |l| (l.batch, l.head, l.row));
        for x in [b, h, r] {
            dims.extend((x as i64).to_le_bytes());
        }
    }
    dims
}

/// The elements a buffer needs to hold every layout in `ls`.
fn span(ls: &[HeadLayout], s: &FlashShape) -> usize {
    ls.iter().map(|l| l.end(s).expect("a small layout")).max().unwrap_or(0)
}

/// The random inputs of a case and the f64 reference on them: q, k, v, dout dense, then
/// out, lse, dq, dk, dv.
#[allow(clippy::type_complexity)]
fn flash_inputs<T: Elem>(
    c: &FlashCase,
    seed: u64,
) -> ([Vec<f64>; 4], (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>)) {
    let mut rng = Rng(seed);
    let n = c.batch * c.heads * c.seq * c.d;
    let inputs = [(); 4].map(|_| rng.values::<T>(n, 1.0));
    let [q, k, v, dout] = &inputs;
    let scale = 1.0 / (c.d as f32).sqrt();
    let want =
        attention_reference(q, k, v, dout, (c.batch * c.heads, c.seq, c.d), c.causal, f64::from(scale));
    (inputs, want)
}

/// A buffer holding each operand's dense values at its layout (gaps, if any, filled with junk
/// that a kernel reading outside its operand would pick up).
fn laid_out<const N: usize>(s: &FlashShape, values: [&[f64]; N], layouts: &[HeadLayout; N]) -> Vec<f64> {
    let mut buf = vec![1.0e4; span(layouts, s)];
    for (v, layout) in values.into_iter().zip(layouts) {
        place(v, layout, s, &mut buf);
    }
    buf
}

fn flash_case<T: Elem>(emu: &Path, c: &FlashCase, seed: u64) {
    let tag = c.tag("flash", T::NAME);
    let size = std::mem::size_of::<T>();
    let ([q, k, v, dout], (want_out, want_lse, want_dq, want_dk, want_dv)) = flash_inputs::<T>(c, seed);
    let l = c.layouts();
    let s = &l.shape;
    let (bh, n, d) = (c.batch * c.heads, s.qkv_len(), c.d);
    let [lq, lk, lv] = &l.qkv;
    let lo = &l.out;
    let at = |buf: usize, layout: &HeadLayout| format!("at {buf} {}", layout.offset * size);
    // Launch shapes of kernels/cuda/flash_attention.rs.
    let (block_m, pad) = (64, 8);
    let tiles = c.seq.div_ceil(block_m) * bh;
    let fwd_shared = (block_m + 4 * 64) * (d + pad) * 2;
    let bwd_shared = 6 * block_m * (d + pad) * 2 + 64 * (block_m + pad) * 2 + 4 * block_m * 4;

    let mut sc = Script::new(&tag);
    let bin = sc.input(&T::bytes(&laid_out(s, [&q, &k, &v], &l.qkv)));
    let bd = sc.input(&T::bytes(&laid_out(s, [&dout], &[*lo])));
    let (bo, bl) = (sc.output(span(&[*lo], s) * size), sc.output(bh * c.seq * 4));
    let (bdot, bacc) = (sc.output(bh * c.seq * 4), sc.output(n * 4));
    let bgrad = sc.output(span(&l.qkv, s) * size);
    let fwd_dims = flash_dims(s, [Some(lq), Some(lk), Some(lv), Some(lo), None, None, None, None]);
    sc.bytes(&fwd_dims).arg(&at(bin, lq)).arg(&at(bin, lk)).arg(&at(bin, lv)).ptr(bo).ptr(bl);
    sc.launch(&format!("flash_fwd_{}_d{d}", T::NAME), tiles, 128, 1, fwd_shared);
    let [gq, gk, gv] = &l.qkv;
    let bwd_dims =
        flash_dims(s, [Some(lq), Some(lk), Some(lv), Some(lo), Some(lo), Some(gq), Some(gk), Some(gv)]);
    sc.bytes(&bwd_dims).arg(&format!("i32 {d}")).ptr(bo).ptr(bd).ptr(bdot).ptr(bacc);
    sc.launch(&format!("flash_bwd_prep_{}", T::NAME), (bh * c.seq).div_ceil(8), 256, 1, 0);
    sc.bytes(&bwd_dims).arg(&at(bin, lq)).arg(&at(bin, lk)).arg(&at(bin, lv)).ptr(bd).ptr(bl);
    sc.ptr(bdot).ptr(bacc).arg(&at(bgrad, gk)).arg(&at(bgrad, gv));
    sc.launch(&format!("flash_bwd_{}_d{d}", T::NAME), tiles, 128, 1, bwd_shared);
    sc.bytes(&bwd_dims).arg(&format!("i32 {d}")).ptr(bacc).arg(&at(bgrad, gq));
    sc.launch(&format!("flash_bwd_dq_{}", T::NAME), (n / 4).div_ceil(256), 256, 1, 0);
    let got = sc.run(emu, &[bo, bl, bgrad]);
    let (out, grads) = (T::values(&got[0]), T::values(&got[2]));
    check::<T>(&format!("{tag} out"), &take(&out, lo, s), &want_out);
    check_with(&format!("{tag} lse"), &<f32 as Elem>::values(&got[1]), &want_lse, 1e-3, 1e-3);
    check::<T>(&format!("{tag} dq"), &take(&grads, gq, s), &want_dq);
    check::<T>(&format!("{tag} dk"), &take(&grads, gk, s), &want_dk);
    check::<T>(&format!("{tag} dv"), &take(&grads, gv, s), &want_dv);
    // Every element of both output buffers belongs to an operand, so each was checked as
    // written; and nothing else was touched (no NaN left anywhere).
    assert!(out.iter().chain(&grads).all(|x| !x.is_nan()), "{tag}: an element left unwritten");
}

fn flash_hopper_emulator() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    emulator(&BIN, &flash_attention_hopper::SOURCE, || {
        let names: Vec<String> = ["bf16", "f16"]
            .iter()
            .flat_map(|t| {
                [64, 128]
                    .map(|d| [format!("flash_fwd_hopper_{t}_d{d}"), format!("flash_bwd_hopper_{t}_d{d}")])
            })
            .flatten()
            .collect();
        names
    })
}

/// The tensor map flash_attention_hopper.rs makes for an operand at `l` in buffer `buf`:
/// {d, seq, heads, batch} at the operand's strides, boxes of 64 columns × `rows` rows.
fn flash_tmap(buf: usize, l: &HeadLayout, s: &FlashShape, size: usize, rows: usize) -> String {
    format!(
        "tmap {buf} {} {size} 4 {} {} {} {} {} {} {} 64 {rows} 1 1",
        l.offset * size,
        s.head_dim,
        s.seq,
        s.heads,
        s.batch,
        l.row * size,
        l.head * size,
        l.batch * size
    )
}

/// The Hopper forward (flash_attention_hopper.cu): output and log-sum-exp against f64.
fn flash_hopper_case<T: Elem>(emu: &Path, c: &FlashCase, seed: u64) {
    let tag = c.tag("flash-hopper", T::NAME);
    let size = std::mem::size_of::<T>();
    let ([q, k, v, _], (want_out, want_lse, ..)) = flash_inputs::<T>(c, seed);
    let l = c.layouts();
    let s = &l.shape;
    let bh = c.batch * c.heads;
    let [lq, lk, lv] = &l.qkv;
    let lo = &l.out;
    let mut sc = Script::new(&tag);
    let bin = sc.input(&T::bytes(&laid_out(s, [&q, &k, &v], &l.qkv)));
    let (bo, bl) = (sc.output(span(&[*lo], s) * size), sc.output(bh * c.seq * 4));
    let tmap = |layout| flash_tmap(bin, layout, s, size, flash_attention_hopper::BLOCK_M);
    let dims = flash_dims(s, [Some(lq), Some(lk), Some(lv), Some(lo), None, None, None, None]);
    sc.bytes(&dims).arg(&tmap(lq)).arg(&tmap(lk)).arg(&tmap(lv)).ptr(bo).ptr(bl);
    let blocks = c.seq.div_ceil(128) * bh;
    let shared = flash_attention_hopper::shared_bytes(c.d);
    sc.launch(&format!("flash_fwd_hopper_{}_d{}", T::NAME, c.d), blocks, 384, 1, shared);
    let got = sc.run(emu, &[bo, bl]);
    let out = T::values(&got[0]);
    check::<T>(&format!("{tag} out"), &take(&out, lo, s), &want_out);
    check_with(&format!("{tag} lse"), &<f32 as Elem>::values(&got[1]), &want_lse, 1e-3, 1e-3);
    assert!(out.iter().all(|x| !x.is_nan()), "{tag}: an element left unwritten");
}

/// The Hopper backward's main kernel (flash_attention_hopper.cu) between a host-side pre-pass
/// (the row dots from the reference output, dq_acc zeroed) and dQ = scale·dq_acc: dQ, dK and dV
/// against f64.
fn flash_hopper_backward_case<T: Elem>(emu: &Path, c: &FlashCase, seed: u64) {
    let tag = c.tag("flash-hopper-bwd", T::NAME);
    let size = std::mem::size_of::<T>();
    let ([q, k, v, dout], (out, lse, want_dq, want_dk, want_dv)) = flash_inputs::<T>(c, seed);
    let l = c.layouts();
    let s = &l.shape;
    let (bh, n, d) = (c.batch * c.heads, s.qkv_len(), c.d);
    let scale = f64::from(s.scale);
    // What the pre-pass computes: D = rowsum(dO∘O) over the stored (rounded) output.
    let dot: Vec<f64> = (0..bh * c.seq)
        .map(|r| (0..d).map(|j| dout[r * d + j] * T::round(out[r * d + j])).sum::<f64>() as f32 as f64)
        .collect();
    let [lq, lk, lv] = &l.qkv;
    let lo = &l.out;
    let mut sc = Script::new(&tag);
    let bin = sc.input(&T::bytes(&laid_out(s, [&q, &k, &v], &l.qkv)));
    let bd = sc.input(&T::bytes(&laid_out(s, [&dout], &[*lo])));
    let (bl, bdot) = (sc.input(&f32_bytes(&lse)), sc.input(&f32_bytes(&dot)));
    let bacc = sc.input(&vec![0u8; n * 4]);
    let bgrad = sc.output(span(&l.qkv, s) * size);
    // Tensor maps as flash_attention_hopper.rs makes them: boxes of 64 query rows for Q and dO,
    // 128 key rows for K and V.
    let (bm, bn) = (flash_attention_hopper::BACKWARD_BLOCK_M, flash_attention_hopper::BACKWARD_BLOCK_N);
    let [gq, gk, gv] = &l.qkv;
    let dims =
        flash_dims(s, [Some(lq), Some(lk), Some(lv), Some(lo), Some(lo), Some(gq), Some(gk), Some(gv)]);
    sc.bytes(&dims);
    sc.arg(&flash_tmap(bin, lq, s, size, bm)).arg(&flash_tmap(bin, lk, s, size, bn));
    sc.arg(&flash_tmap(bin, lv, s, size, bn)).arg(&flash_tmap(bd, lo, s, size, bm));
    let at = |layout: &HeadLayout| format!("at {bgrad} {}", layout.offset * size);
    sc.ptr(bl).ptr(bdot).ptr(bacc).arg(&at(gk)).arg(&at(gv));
    let blocks = c.seq.div_ceil(bn) * bh;
    let shared = flash_attention_hopper::backward_shared_bytes(d);
    sc.launch(&format!("flash_bwd_hopper_{}_d{d}", T::NAME), blocks, 384, 1, shared);
    let got = sc.run(emu, &[bacc, bgrad]);
    let dq: Vec<f64> = <f32 as Elem>::values(&got[0]).iter().map(|a| T::round(a * scale)).collect();
    let grads = T::values(&got[1]);
    check::<T>(&format!("{tag} dq"), &dq, &want_dq);
    check::<T>(&format!("{tag} dk"), &take(&grads, gk, s), &want_dk);
    check::<T>(&format!("{tag} dv"), &take(&grads, gv, s), &want_dv);
    // dQ's part of the gradient buffer is the dQ kernel's to write: the main kernel left it.
    assert!(take(&grads, gq, s).iter().all(|x| x.is_nan()), "{tag}: the main kernel wrote into dQ's part");
}

/// The attention shapes every flash test runs: ragged lengths over more than one tile of every
/// kernel (64 and 128 rows), one query, lengths just past a tile, both head dimensions, causal
/// and not, bf16 and f16; then the engine's packed layout (q, k, v read in place from a fused
/// projection, heads side by side within each row) with several sequences and heads.
const ATTENTION_CASES: [FlashCase; 10] = {
    const fn dense(bh: usize, seq: usize, d: usize, causal: bool, f16: bool) -> FlashCase {
        FlashCase { batch: 1, heads: bh, seq, d, causal, f16, packed: false }
    }
    const fn packed(batch: usize, heads: usize, seq: usize, d: usize, causal: bool, f16: bool) -> FlashCase {
        FlashCase { batch, heads, seq, d, causal, f16, packed: true }
    }
    [
        dense(2, 150, 64, true, false),
        dense(1, 200, 128, false, false),
        dense(1, 140, 128, true, true),
        dense(2, 70, 64, false, true),
        dense(1, 1, 64, true, false),
        dense(1, 129, 128, true, false),
        dense(1, 65, 64, true, true),
        packed(2, 3, 70, 64, true, false),
        packed(2, 2, 129, 128, true, true),
        packed(3, 1, 40, 64, false, false),
    ]
};

/// Runs `case` (a generic test function) on every [`ATTENTION_CASES`] entry with seeds from
/// `seed`.
macro_rules! attention_cases {
    ($emu:expr, $case:ident, $seed:expr) => {
        for (i, c) in ATTENTION_CASES.iter().enumerate() {
            if c.f16 {
                $case::<f16>($emu, c, $seed + i as u64);
            } else {
                $case::<bf16>($emu, c, $seed + i as u64);
            }
        }
    };
}

#[test]
fn hopper_flash_attention_backward_matches_f64_under_emulation() {
    let Some(emu) = flash_hopper_emulator() else { return };
    attention_cases!(emu, flash_hopper_backward_case, 91);
}

#[test]
fn hopper_flash_attention_forward_matches_f64_under_emulation() {
    let Some(emu) = flash_hopper_emulator() else { return };
    attention_cases!(emu, flash_hopper_case, 81);
}

#[test]
fn flash_attention_matches_f64_under_emulation() {
    let Some(emu) = flash_emulator() else { return };
    attention_cases!(emu, flash_case, 51);
}
