//! Elementwise kernels: binary ops with broadcasting, and unary maps.
//!
//! Broadcasting is expressed with strides: an operand's stride is 0 along every axis it is
//! broadcast over. The output is always contiguous in the given shape.

use rayon::prelude::*;

use crate::float::Float;

/// Elements per rayon task for flat elementwise loops.
const CHUNK: usize = 1 << 15;

/// A binary arithmetic operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
}

impl BinaryOp {
    /// Applies the operation to one pair.
    #[inline(always)]
    pub fn apply<T: Float>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
        }
    }
}

/// A strided read-only operand of a broadcast operation.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a, T> {
    /// The backing slice.
    pub data: &'a [T],
    /// Offset of element `[0, 0, ...]`.
    pub offset: usize,
    /// Stride per axis, in elements (0 on broadcast axes).
    pub strides: &'a [usize],
}

#[inline(always)]
fn apply_row<T: Float>(op: BinaryOp, a: &[T], sa: usize, b: &[T], sb: usize, out: &mut [T]) {
    macro_rules! row {
        ($f:expr) => {
            match (sa, sb) {
                (1, 1) => out.iter_mut().zip(a).zip(b).for_each(|((o, &x), &y)| *o = $f(x, y)),
                (1, 0) => {
                    let y = b[0];
                    out.iter_mut().zip(a).for_each(|(o, &x)| *o = $f(x, y))
                }
                (0, 1) => {
                    let x = a[0];
                    out.iter_mut().zip(b).for_each(|(o, &y)| *o = $f(x, y))
                }
                _ => out.iter_mut().enumerate().for_each(|(i, o)| *o = $f(a[i * sa], b[i * sb])),
            }
        };
    }
    match op {
        BinaryOp::Add => row!(|x: T, y: T| x + y),
        BinaryOp::Sub => row!(|x: T, y: T| x - y),
        BinaryOp::Mul => row!(|x: T, y: T| x * y),
        BinaryOp::Div => row!(|x: T, y: T| x / y),
    }
}

/// Offset of the start of output row `row` (all axes but the last) in a strided operand.
fn row_offset(shape: &[usize], strides: &[usize], mut row: usize) -> usize {
    let mut off = 0;
    for ax in (0..shape.len().saturating_sub(1)).rev() {
        off += (row % shape[ax]) * strides[ax];
        row /= shape[ax];
    }
    off
}

/// `out = a op b` over `shape`, with `a` and `b` broadcast through their strides.
pub fn binary<T: Float>(op: BinaryOp, shape: &[usize], a: Strided<'_, T>, b: Strided<'_, T>, out: &mut [T]) {
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return;
    }
    let Some(&inner) = shape.last() else {
        out[0] = op.apply(a.data[a.offset], b.data[b.offset]);
        return;
    };
    let last = shape.len() - 1;
    let (sa, sb) = (a.strides[last], b.strides[last]);
    let rows_per_task = (CHUNK / inner).max(1);
    out.par_chunks_mut(rows_per_task * inner).enumerate().for_each(|(t, chunk)| {
        for (r, orow) in chunk.chunks_mut(inner).enumerate() {
            let row = t * rows_per_task + r;
            let oa = a.offset + row_offset(shape, a.strides, row);
            let ob = b.offset + row_offset(shape, b.strides, row);
            apply_row(op, &a.data[oa..], sa, &b.data[ob..], sb, orow);
        }
    });
}

/// `out[i] = f(x[i])` in parallel.
pub fn map<T: Float, F: Fn(T) -> T + Sync>(x: &[T], out: &mut [T], f: F) {
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, xs)| {
        o.iter_mut().zip(xs).for_each(|(o, &v)| *o = f(v));
    });
}

/// `out[i] = f(x[i], y[i])` in parallel over equal-length slices.
pub fn zip_map<T: Float, F: Fn(T, T) -> T + Sync>(x: &[T], y: &[T], out: &mut [T], f: F) {
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK))).for_each(|(o, (xs, ys))| {
        o.iter_mut().zip(xs.iter().zip(ys)).for_each(|(o, (&a, &b))| *o = f(a, b));
    });
}

/// `acc[i] += x[i]` in parallel.
pub fn add_assign<T: Float>(acc: &mut [T], x: &[T]) {
    acc.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(a, xs)| {
        a.iter_mut().zip(xs).for_each(|(a, &v)| *a += v);
    });
}
