//! The f64 product behind [`super::gemm_f64`]: cache-blocked and rayon-parallel over row
//! groups, but plain Rust (it serves gradient checks, where exactness matters more than speed).

use rayon::prelude::*;

use super::{MatMut, MatRef};

/// Columns of B packed at once (`k·NC·8` bytes).
const NC: usize = 256;
/// Rows of C computed together, sharing each packed row of B.
const MR: usize = 4;

pub(crate) fn gemm(alpha: f64, a: MatRef<'_, f64>, b: MatRef<'_, f64>, beta: f64, c: MatMut<'_, f64>) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let ldc = c.row_stride;
    let parallel = m * n * k >= 1 << 18 && m > MR;
    let mut bp = Vec::new();
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        // B[:, j0..j0+nc] as dense row-major k×nc.
        bp.clear();
        for p in 0..k {
            bp.extend((j0..j0 + nc).map(|j| b.at(p, j)));
        }
        let bp = &bp[..];
        let group = |(g, cg): (usize, &mut [f64])| {
            let i0 = g * MR;
            let rows = MR.min(m - i0);
            let mut acc = [[0f64; NC]; MR];
            for (p, brow) in bp.chunks_exact(nc.max(1)).enumerate().take(k) {
                for (r, accr) in acc.iter_mut().enumerate().take(rows) {
                    let av = a.at(i0 + r, p);
                    for (x, &bv) in accr.iter_mut().zip(brow) {
                        *x += av * bv;
                    }
                }
            }
            for (r, accr) in acc.iter().enumerate().take(rows) {
                let crow = &mut cg[r * ldc + j0..r * ldc + j0 + nc];
                for (cv, &x) in crow.iter_mut().zip(accr) {
                    *cv = if beta == 0.0 { alpha * x } else { alpha * x + beta * *cv };
                }
            }
        };
        let groups = m.div_ceil(MR);
        if parallel {
            c.data.par_chunks_mut(MR * ldc).take(groups).enumerate().for_each(group);
        } else {
            c.data.chunks_mut(MR * ldc).take(groups).enumerate().for_each(group);
        }
    }
}
