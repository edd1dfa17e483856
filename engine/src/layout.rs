//! Shapes, strides and offsets: how a tensor's elements map onto its storage.

use crate::{Error, Result};

/// Row-major strides of a dense tensor of this shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// The shape two operands broadcast to (NumPy rules), or a [`Error::ShapeMismatch`].
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(Error::ShapeMismatch { op, lhs: a.to_vec(), rhs: b.to_vec() }),
        };
    }
    Ok(out)
}

/// Shape, strides (in elements) and starting offset of a view into a storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    /// A dense row-major layout starting at offset 0.
    pub fn contiguous(shape: &[usize]) -> Layout {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }

    /// A layout from its parts.
    pub fn new(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Layout {
        Layout { shape, strides, offset }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Stride of each axis in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// Index of the first element in the storage.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Whether the elements are dense and in row-major order (size-1 axes may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// Strides for reading this view broadcast to `target` (0 on broadcast axes).
    /// The caller has checked that `target` is a valid broadcast of this shape.
    pub fn broadcast_strides(&self, target: &[usize]) -> Vec<usize> {
        let pad = target.len() - self.shape.len();
        let mut out = vec![0; target.len()];
        for (i, (&d, &s)) in self.shape.iter().zip(&self.strides).enumerate() {
            out[pad + i] = if d == 1 { 0 } else { s };
        }
        out
    }
}
