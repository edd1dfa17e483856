//! The registry of kernel sources: each `.cu` file in `kernels/cuda/`, embedded in the binary.

/// The prelude prepended to every kernel file (bf16/f16 conversions, reductions, GeLU).
pub const PRELUDE: &str = include_str!("common.cuh");

/// The Hopper prelude (mbarrier, TMA, setmaxnreg and wgmma wrappers), prepended after
/// [`PRELUDE`] to the files that need `sm_90a`.
pub const HOPPER_PRELUDE: &str = include_str!("hopper.cuh");

/// One kernel file.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// File stem, such as `layernorm`.
    pub name: &'static str,
    /// The CUDA C text (without the prelude).
    pub code: &'static str,
    /// Whether the file needs the `sm_90a` architecture-specific instructions.
    pub needs_sm90a: bool,
}

impl KernelSource {
    /// The text NVRTC compiles: the prelude (and the Hopper prelude for an `sm_90a` file),
    /// then the file.
    pub fn full_text(&self) -> String {
        let mut text = String::with_capacity(PRELUDE.len() + HOPPER_PRELUDE.len() + self.code.len() + 128);
        text.push_str(PRELUDE);
        if self.needs_sm90a {
            text.push_str("\n#line 1 \"hopper.cuh\"\n");
            text.push_str(HOPPER_PRELUDE);
        }
        text.push_str("\n#line 1 \"");
        text.push_str(self.name);
        text.push_str(".cu\"\n");
        text.push_str(self.code);
        text
    }
}

/// Declares a `KernelSource` constant for `kernels/cuda/<name>.cu`.
macro_rules! kernel_source {
    ($name:literal) => {
        $crate::cuda::source::KernelSource {
            name: $name,
            code: include_str!(concat!($name, ".cu")),
            needs_sm90a: false,
        }
    };
}
pub(crate) use kernel_source;

/// Every kernel file of the backend, for the compile gate and for warming the cache.
pub fn all_sources() -> Vec<KernelSource> {
    vec![
        super::elementwise::SOURCE,
        super::layernorm::SOURCE,
        super::gelu::SOURCE,
        super::softmax::SOURCE,
        super::cross_entropy::SOURCE,
        super::embedding::SOURCE,
        super::optim::SOURCE,
        super::matmul::SOURCE,
        super::attention::SOURCE,
        super::matmul_tc::SOURCE,
        super::matmul_wgmma::SOURCE,
        super::flash_attention::SOURCE,
        super::flash_attention_hopper::SOURCE,
    ]
}
