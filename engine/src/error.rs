//! The engine's error type: every misuse of the public API lands here, never in a panic.

use crate::{DType, Device};

/// Everything that can go wrong when building or differentiating a computation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Two operands whose shapes cannot be combined by this op.
    #[error("{op}: shapes {lhs:?} and {rhs:?} are incompatible")]
    ShapeMismatch {
        /// The operation that was asked for.
        op: &'static str,
        /// The first operand's shape.
        lhs: Vec<usize>,
        /// The second operand's shape.
        rhs: Vec<usize>,
    },
    /// An operand whose shape is wrong for this op on its own.
    #[error("{op}: bad shape {shape:?}: {reason}")]
    BadShape {
        /// The operation that was asked for.
        op: &'static str,
        /// The offending shape.
        shape: Vec<usize>,
        /// What the op needs.
        reason: String,
    },
    /// A buffer whose length does not match the shape it was given.
    #[error("{len} elements cannot have shape {shape:?} ({expected} elements)")]
    ElementCount {
        /// The requested shape.
        shape: Vec<usize>,
        /// Elements that shape needs.
        expected: usize,
        /// Elements supplied.
        len: usize,
    },
    /// Operands of different element types.
    #[error("{op}: dtype mismatch, {lhs} vs {rhs}")]
    DTypeMismatch {
        /// The operation that was asked for.
        op: &'static str,
        /// The first operand's dtype.
        lhs: DType,
        /// The second operand's dtype.
        rhs: DType,
    },
    /// The data was asked for as a different element type than it holds.
    #[error("tensor holds {actual}, but {requested} was requested")]
    DTypeAccess {
        /// The type asked for.
        requested: DType,
        /// The type held.
        actual: DType,
    },
    /// Operands on different devices.
    #[error("{op}: device mismatch, {lhs} vs {rhs}")]
    DeviceMismatch {
        /// The operation that was asked for.
        op: &'static str,
        /// The first operand's device.
        lhs: Device,
        /// The second operand's device.
        rhs: Device,
    },
    /// A device that cannot be used in this build or on this machine.
    #[error("device {device} is not available: {reason}")]
    DeviceUnavailable {
        /// The device asked for.
        device: Device,
        /// Why it cannot be used.
        reason: String,
    },
    /// An axis index past the tensor's rank.
    #[error("{op}: axis {axis} is out of range for a tensor of rank {rank}")]
    AxisOutOfRange {
        /// The operation that was asked for.
        op: &'static str,
        /// The axis given.
        axis: usize,
        /// The tensor's rank.
        rank: usize,
    },
    /// A range along an axis that leaves the tensor.
    #[error("narrow: range {start}..{end} of axis {axis} leaves its size {size}")]
    RangeOutOfBounds {
        /// The axis narrowed.
        axis: usize,
        /// First index of the range.
        start: usize,
        /// One past the last index of the range.
        end: usize,
        /// The axis size.
        size: usize,
    },
    /// An index (token id, target) outside the range it addresses.
    #[error("{op}: id {id} at position {position} is out of range (must be < {limit})")]
    IdOutOfRange {
        /// The operation that was asked for.
        op: &'static str,
        /// Position of the id in the flattened id list.
        position: usize,
        /// The offending id.
        id: u32,
        /// The exclusive upper bound.
        limit: usize,
    },
    /// `backward` called on a tensor with more than one element.
    #[error("backward needs a scalar (one element), got shape {shape:?}")]
    BackwardNonScalar {
        /// The shape `backward` was called on.
        shape: Vec<usize>,
    },
    /// `backward` called on a tensor outside any graph.
    #[error("backward: the tensor does not require grad (no leaf behind it requires grad, or it was made under no_grad)")]
    BackwardWithoutGraph,
    /// `backward` called twice through a graph that the first call freed.
    #[error("backward: the graph behind this tensor was already freed by an earlier backward")]
    GraphFreed,
    /// A CUDA kernel launch, allocation or copy failed.
    #[error("{op} on the GPU: {message}")]
    Cuda {
        /// The operation.
        op: &'static str,
        /// What the CUDA backend said.
        message: String,
    },
    /// An argument outside the op's domain.
    #[error("{op}: {reason}")]
    InvalidArgument {
        /// The operation that was asked for.
        op: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
