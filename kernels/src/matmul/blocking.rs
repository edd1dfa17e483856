//! Cache-blocking parameters and the per-call blocking plan.
//!
//! The driver (see the module docs of [`super`]) walks `k` in blocks of `kc`, `m` in blocks of
//! `mc` (one packed A block, shared read-only by all threads) and `n` in blocks of `nc` (one
//! packed B block per task, private to the thread that runs it). Sizes target a Zen 4 / Skylake
//! class core: 32-48 KiB L1d, 1-2 MiB L2, a shared L3.
//!
//! * `kc·MR·4` bytes (one A micro-panel) stays in L1 while the B micro-panels stream past it.
//! * `kc·nc·4` bytes (one B block) stays in L2 while every A micro-panel of the block is used.
//! * `mc·kc·4` bytes (one A block) is read by every task from L3.

/// Upper bounds of the three block sizes for one micro-kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockSizes {
    /// Depth of a packed block (the `k` extent of every micro-panel).
    pub kc: usize,
    /// Rows of a packed A block (a multiple of the kernel's `MR`).
    pub mc: usize,
    /// Columns of a packed B block (a multiple of the kernel's `NR`).
    pub nc: usize,
}

/// The blocking chosen for one product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Depth of each `k` block (the last one may be shorter).
    pub kc: usize,
    /// Rows of each A block, a multiple of `mr` (the last one may be shorter).
    pub mc: usize,
    /// Columns handled by one task, a multiple of `nr` (the last one may be shorter).
    pub nc: usize,
    /// Number of column groups (`ceil(n / nc)`).
    pub n_groups: usize,
}

/// Column groups per thread aimed for when parallel.
const TASKS_PER_THREAD: usize = 4;

fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

fn round_up(a: usize, to: usize) -> usize {
    ceil_div(a, to) * to
}

/// Chooses balanced blocks no larger than `max` for an `m×n×k` product on `threads` threads
/// with an `mr×nr` micro-kernel. All dimensions must be non-zero.
pub(crate) fn plan(
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
    mr: usize,
    nr: usize,
    max: BlockSizes,
) -> Plan {
    // Equal-sized k blocks: 300 = 150 + 150 rather than 256 + 44.
    let k_blocks = ceil_div(k, max.kc);
    let kc = ceil_div(k, k_blocks);

    let m_blocks = ceil_div(m, max.mc);
    let mc = round_up(ceil_div(m, m_blocks), mr);

    // Column groups: with several threads, about four per thread (so that work stealing can
    // even out a thread that is slowed down) as long as each keeps >= 4 micro-panels, and a
    // multiple of the thread count so that the last wave of tasks is not half empty.
    let n_panels = ceil_div(n, nr);
    let mut groups = ceil_div(n, max.nc);
    if threads > 1 {
        let finest = (n_panels / 4).max(threads).min(n_panels);
        groups = round_up(groups.max(TASKS_PER_THREAD * threads), threads).min(finest);
    }
    let nc = round_up(ceil_div(n, groups), nr);
    let n_groups = ceil_div(n, nc);
    Plan { kc, mc, nc, n_groups }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: BlockSizes = BlockSizes { kc: 256, mc: 4032, nc: 512 };

    #[test]
    fn plans_are_balanced_and_aligned() {
        let p = plan(2048, 2048, 2048, 1, 12, 32, MAX);
        assert_eq!((p.kc, p.mc, p.nc, p.n_groups), (256, 2052, 512, 4));
        let p = plan(2048, 768, 300, 2, 12, 32, MAX);
        assert_eq!((p.kc, p.nc, p.n_groups), (150, 128, 6));
        let p = plan(5, 7, 3, 2, 12, 32, MAX);
        assert_eq!((p.kc, p.mc, p.nc, p.n_groups), (3, 12, 32, 1));
        let p = plan(10_000, 2304, 4096, 2, 12, 32, MAX);
        assert_eq!((p.mc % 12, p.n_groups % 2), (0, 0));
        assert!(p.mc <= MAX.mc);
    }
}
