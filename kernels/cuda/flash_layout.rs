//! Where the flash attention kernels find their operands: every `[batch, heads, seq, head_dim]`
//! tensor they read or write ([`HeadLayout`]: an offset and strides for batch, head and row,
//! `head_dim` contiguous), the checks that make a layout safe for the kernels' 16-byte copies,
//! TMA and stores, and the `FlashDims` parameter the kernels take (`common.cuh`).
//!
//! Strided operands let the engine skip every copy around attention: the queries, keys and
//! values are read in place from a fused QKV projection's `[batch, seq, 3, heads, head_dim]`
//! output, the output is written as `[batch, seq, heads, head_dim]` (ready for the output
//! projection), and dQ, dK, dV land in one `[batch, seq, 3, heads, head_dim]` gradient.

use std::cell::Cell;

use cudarc::driver::DeviceRepr;

use super::device::{DeviceBuf, FloatElem};
use super::error::{CudaError, CudaResult};
use super::flash_attention::FlashShape;

/// The furthest element index (exclusive) an operand may reach: the portable backward holds
/// head offsets as 32-bit counts of 16-byte vectors (8 two-byte elements).
const MAX_REACH: usize = 1 << 35;

/// Where one `[batch, heads, seq, head_dim]` operand lies in its buffer: element (b, h, t, c) is
/// at `offset + b·batch + h·head + t·row + c` (all in elements).
///
/// The kernels copy whole rows as 16-byte vectors, so the offset and the strides must be
/// multiples of 8 elements, and a row must not overlap the next (`row ≥ head_dim`); an operand
/// the kernels write must not overlap itself at all. [`HeadLayout::dense`] is the contiguous
/// layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLayout {
    /// Element index of (0, 0, 0, 0).
    pub offset: usize,
    /// Elements from one sequence of the batch to the next.
    pub batch: usize,
    /// Elements from one head to the next.
    pub head: usize,
    /// Elements from one position to the next.
    pub row: usize,
}

impl HeadLayout {
    /// The contiguous `[batch, heads, seq, head_dim]` layout from element 0.
    pub fn dense(shape: &FlashShape) -> HeadLayout {
        let row = shape.head_dim;
        HeadLayout { offset: 0, batch: shape.heads * shape.seq * row, head: shape.seq * row, row }
    }

    /// Part `i` (0 for q, 1 for k, 2 for v) of a fused QKV projection's
    /// `[batch, seq, 3, heads, head_dim]` output, the layout a PolyLM block reads in place.
    pub fn packed_qkv(shape: &FlashShape, i: usize) -> HeadLayout {
        let hd = shape.heads * shape.head_dim;
        HeadLayout { offset: i * hd, batch: shape.seq * 3 * hd, head: shape.head_dim, row: 3 * hd }
    }

    /// `[batch, seq, heads, head_dim]` from element 0: the attention output a PolyLM block
    /// reshapes to `[batch, seq, heads·head_dim]`.
    pub fn token_major(shape: &FlashShape) -> HeadLayout {
        let hd = shape.heads * shape.head_dim;
        HeadLayout { offset: 0, batch: shape.seq * hd, head: shape.head_dim, row: hd }
    }

    /// One past the last element index the operand reaches, or `None` on overflow.
    pub fn end(&self, s: &FlashShape) -> Option<usize> {
        let reach = |n: usize, stride: usize| n.checked_sub(1)?.checked_mul(stride);
        self.offset
            .checked_add(reach(s.batch, self.batch)?)?
            .checked_add(reach(s.heads, self.head)?)?
            .checked_add(reach(s.seq, self.row)?)?
            .checked_add(s.head_dim)
    }

    /// The (stride, extent) of the axes of more than one element, innermost first.
    fn axes(&self, s: &FlashShape) -> Vec<(usize, usize)> {
        let mut axes: Vec<(usize, usize)> = [(self.batch, s.batch), (self.head, s.heads), (self.row, s.seq)]
            .into_iter()
            .filter(|&(_, n)| n > 1)
            .collect();
        axes.sort_unstable();
        axes
    }

    /// Whether no two elements share an index: each axis's stride reaches past everything the
    /// axes inside it span (a sufficient condition, exact for permutations of dense layouts).
    pub fn is_one_to_one(&self, s: &FlashShape) -> bool {
        let mut span = s.head_dim;
        for (stride, n) in self.axes(s) {
            if stride < span {
                return false;
            }
            span += stride * (n - 1);
        }
        true
    }

    /// The span of one position across all heads, when the heads lie side by side within a row
    /// (as in a `[batch, seq, heads, head_dim]` or packed QKV layout): `(heads − 1)·head +
    /// head_dim`, if that is at most the row stride and every position of every sequence has a
    /// row slot of its own (the batch stride a whole number of rows, at least `seq` of them).
    fn row_footprint(&self, s: &FlashShape) -> Option<usize> {
        let foot = (s.heads - 1).checked_mul(self.head)?.checked_add(s.head_dim)?;
        let own_slots =
            s.batch == 1 || (self.batch.is_multiple_of(self.row) && self.batch / self.row >= s.seq);
        (foot <= self.row && own_slots).then_some(foot)
    }

    /// Whether this operand and `other` provably share no element: their index ranges are
    /// disjoint, or they have the same strides with their heads side by side within each row
    /// and offsets that keep their rows' footprints apart (the q, k and v parts of a packed
    /// QKV tensor).
    pub fn is_disjoint_from(&self, other: &HeadLayout, s: &FlashShape) -> bool {
        let (Some(end_a), Some(end_b)) = (self.end(s), other.end(s)) else { return false };
        if end_a <= other.offset || end_b <= self.offset {
            return true;
        }
        let same_strides = (self.batch, self.head, self.row) == (other.batch, other.head, other.row);
        match self.row_footprint(s) {
            Some(foot) if same_strides => {
                let delta = self.offset.abs_diff(other.offset);
                delta >= foot && delta + foot <= self.row
            }
            _ => false,
        }
    }

    /// Checks this layout of operand `what` against a buffer of `len` elements of `T`: 16-byte
    /// aligned rows, rows that do not overlap, row strides in 32 bits, strides TMA can express,
    /// inside the buffer, and (for an operand the kernels write) one element per index.
    ///
    /// # Errors
    ///
    /// [`CudaError::Invalid`] saying what does not fit.
    pub fn check<T: FloatElem>(
        &self,
        op: &'static str,
        what: &str,
        len: usize,
        s: &FlashShape,
        written: bool,
    ) -> CudaResult<()> {
        let per_vector = 16 / std::mem::size_of::<T>();
        let fields = [("offset", self.offset), ("batch stride", self.batch), ("head stride", self.head)];
        for (name, value) in fields.into_iter().chain([("row stride", self.row)]) {
            if !value.is_multiple_of(per_vector) {
                return Err(CudaError::invalid(
                    op,
                    format!(
                        "{what}'s {name} {value} is not a multiple of {per_vector} elements (16-byte rows)"
                    ),
                ));
            }
        }
        if self.row < s.head_dim || self.row > i32::MAX as usize {
            return Err(CudaError::invalid(
                op,
                format!("{what}'s row stride {} must be from head_dim {} to 2³¹ − 1", self.row, s.head_dim),
            ));
        }
        let max_stride_bytes = 1usize << 40;
        if [self.batch, self.head, self.row]
            .iter()
            .any(|&x| x.saturating_mul(std::mem::size_of::<T>()) >= max_stride_bytes)
        {
            return Err(CudaError::invalid(op, format!("{what}'s strides {self:?} reach past 2⁴⁰ bytes")));
        }
        match self.end(s) {
            // The portable backward holds head offsets as 32-bit counts of 16-byte vectors.
            Some(end) if end > MAX_REACH => {
                return Err(CudaError::invalid(
                    op,
                    format!(
                        "{what} ({self:?} for {s:?}) reaches past 2³⁵ elements, beyond the kernels' offsets"
                    ),
                ))
            }
            Some(end) if end <= len => {}
            _ => {
                return Err(CudaError::invalid(
                    op,
                    format!("{what} ({self:?} for {s:?}) reaches past its buffer of {len} elements"),
                ))
            }
        }
        if written && !self.is_one_to_one(s) {
            return Err(CudaError::invalid(
                op,
                format!("{what}'s layout {self:?} writes some elements twice"),
            ));
        }
        Ok(())
    }

    /// Checks dQ, dK and dV laid out as `[dq, dk, dv]` in one buffer of `len` elements of `T`:
    /// each written one to one inside it ([`HeadLayout::check`]) and no two overlapping
    /// ([`HeadLayout::is_disjoint_from`]).
    ///
    /// # Errors
    ///
    /// [`CudaError::Invalid`] saying which layout does not fit or which two may overlap.
    pub fn check_packed<T: FloatElem>(
        op: &'static str,
        layouts: &[HeadLayout; 3],
        len: usize,
        s: &FlashShape,
    ) -> CudaResult<()> {
        const NAMES: [&str; 3] = ["dq", "dk", "dv"];
        for (what, layout) in NAMES.iter().zip(layouts) {
            layout.check::<T>(op, what, len, s, true)?;
        }
        for (i, j) in [(0, 1), (0, 2), (1, 2)] {
            if !layouts[i].is_disjoint_from(&layouts[j], s) {
                return Err(CudaError::invalid(
                    op,
                    format!(
                        "{} and {} may overlap in their buffer: {:?} and {:?}",
                        NAMES[i], NAMES[j], layouts[i], layouts[j]
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// An operand the kernels read: a buffer and where in it the values lie.
#[derive(Clone, Copy, Debug)]
pub struct HeadView<'a, T: FloatElem> {
    /// The buffer.
    pub buf: &'a DeviceBuf<T>,
    /// Where in it.
    pub layout: HeadLayout,
}

impl<'a, T: FloatElem> HeadView<'a, T> {
    /// `buf` as a contiguous `[batch, heads, seq, head_dim]` tensor.
    pub fn dense(buf: &'a DeviceBuf<T>, shape: &FlashShape) -> HeadView<'a, T> {
        HeadView { buf, layout: HeadLayout::dense(shape) }
    }

    /// The checked operand (see [`HeadLayout::check`]).
    pub(crate) fn operand(&self, op: &'static str, what: &str, s: &FlashShape) -> CudaResult<Operand> {
        Operand::checked(self.buf, self.layout, op, what, s, false)
    }
}

/// An operand the kernels write: a buffer and where in it the values go.
#[derive(Debug)]
pub struct HeadViewMut<'a, T: FloatElem> {
    /// The buffer.
    pub buf: &'a mut DeviceBuf<T>,
    /// Where in it.
    pub layout: HeadLayout,
}

impl<'a, T: FloatElem> HeadViewMut<'a, T> {
    /// `buf` as a contiguous `[batch, heads, seq, head_dim]` tensor.
    pub fn dense(buf: &'a mut DeviceBuf<T>, shape: &FlashShape) -> HeadViewMut<'a, T> {
        HeadViewMut { buf, layout: HeadLayout::dense(shape) }
    }

    /// The checked operand, written one to one (see [`HeadLayout::check`]).
    pub(crate) fn operand(&self, op: &'static str, what: &str, s: &FlashShape) -> CudaResult<Operand> {
        Operand::checked(self.buf, self.layout, op, what, s, true)
    }
}

/// Where a backward pass writes dQ, dK and dV.
#[derive(Debug)]
pub enum GradTargets<'a, T: FloatElem> {
    /// Three buffers, each at its own layout.
    Separate {
        /// Receives dQ.
        dq: HeadViewMut<'a, T>,
        /// Receives dK.
        dk: HeadViewMut<'a, T>,
        /// Receives dV.
        dv: HeadViewMut<'a, T>,
    },
    /// One buffer holding all three.
    Packed(PackedGrads<'a, T>),
}

impl<T: FloatElem> GradTargets<'_, T> {
    /// The checked operands dQ, dK, dV (see [`HeadViewMut::operand`] and
    /// [`PackedGrads::operands`]).
    pub(crate) fn operands(&self, op: &'static str, s: &FlashShape) -> CudaResult<[Operand; 3]> {
        match self {
            GradTargets::Separate { dq, dk, dv } => {
                Ok([dq.operand(op, "dq", s)?, dk.operand(op, "dk", s)?, dv.operand(op, "dv", s)?])
            }
            GradTargets::Packed(p) => p.operands(op, s),
        }
    }

    /// The device the gradients live on.
    pub(crate) fn device(&self) -> &std::sync::Arc<super::CudaDevice> {
        match self {
            GradTargets::Separate { dq, .. } => dq.buf.device(),
            GradTargets::Packed(p) => p.buf.device(),
        }
    }
}

/// The three gradients of a backward pass written into one buffer, each at its own layout (for
/// example the q, k and v parts of a packed `[batch, seq, 3, heads, head_dim]` gradient). The
/// layouts must provably not overlap ([`HeadLayout::is_disjoint_from`]).
#[derive(Debug)]
pub struct PackedGrads<'a, T: FloatElem> {
    /// The buffer receiving dQ, dK and dV.
    pub buf: &'a mut DeviceBuf<T>,
    /// Where dQ goes.
    pub dq: HeadLayout,
    /// Where dK goes.
    pub dk: HeadLayout,
    /// Where dV goes.
    pub dv: HeadLayout,
}

impl<T: FloatElem> PackedGrads<'_, T> {
    /// The checked operands dQ, dK, dV: each written one to one, inside the buffer, and no two
    /// of them overlapping.
    pub(crate) fn operands(&self, op: &'static str, s: &FlashShape) -> CudaResult<[Operand; 3]> {
        let layouts = [self.dq, self.dk, self.dv];
        HeadLayout::check_packed::<T>(op, &layouts, self.buf.len(), s)?;
        Ok(layouts.map(|layout| Operand::at(self.buf, layout)))
    }
}

/// A checked operand as the kernels take it: the device address of element (0, 0, 0, 0) and
/// the strides.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operand {
    /// Device address of the first element.
    pub ptr: u64,
    /// Its strides (the offset is in `ptr`).
    pub layout: HeadLayout,
}

impl Operand {
    /// Operand `what` at `layout` in `buf`, checked ([`HeadLayout::check`]).
    pub(crate) fn checked<T: FloatElem>(
        buf: &DeviceBuf<T>,
        layout: HeadLayout,
        op: &'static str,
        what: &str,
        s: &FlashShape,
        written: bool,
    ) -> CudaResult<Operand> {
        layout.check::<T>(op, what, buf.len(), s, written)?;
        Ok(Operand::at(buf, layout))
    }

    /// `layout` in `buf`, unchecked: the address of its first element.
    fn at<T: FloatElem>(buf: &DeviceBuf<T>, layout: HeadLayout) -> Operand {
        Operand { ptr: buf.ptr() + (layout.offset * std::mem::size_of::<T>()) as u64, layout }
    }

    fn strides(&self) -> Strides {
        let l = self.layout;
        Strides { batch: l.batch as i64, head: l.head as i64, row: l.row as i64 }
    }
}

/// `struct FaLayout` of `common.cuh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Strides {
    batch: i64,
    head: i64,
    row: i64,
}

thread_local! {
    /// The diagnostic bits the backward passes this thread launches pass their kernels
    /// ([`super::flash_attention::set_backward_probe`]).
    pub(crate) static BACKWARD_PROBE: Cell<i32> = const { Cell::new(0) };
}
/// `FA_PROBE_NO_DQ`: nothing is added into the dQ accumulator.
pub(crate) const PROBE_NO_DQ: i32 = 1;

/// `struct FlashDims` of `common.cuh`: the shape and the strides of every operand.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlashDims {
    bh: i32,
    heads: i32,
    seq: i32,
    causal: i32,
    scale: f32,
    /// Diagnostic bits (`FA_PROBE_*` in common.cuh), 0 but in a benchmark's probe.
    probe: i32,
    /// q, k, v, o, dout, dq, dk, dv.
    layouts: [Strides; 8],
}
// SAFETY: `#[repr(C)]` plain data matching `struct FlashDims` in common.cuh (six 4-byte fields,
// then eight triples of 8-byte strides: 216 bytes, 8-byte aligned).
unsafe impl DeviceRepr for FlashDims {}
const _: () = assert!(std::mem::size_of::<FlashDims>() == 216);

/// The operands every kernel call involves: the forward's inputs and output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operands {
    /// Queries.
    pub q: Operand,
    /// Keys.
    pub k: Operand,
    /// Values.
    pub v: Operand,
    /// The forward's output.
    pub o: Operand,
}

/// The further operands of a backward pass.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GradOperands {
    /// The output gradient.
    pub dout: Operand,
    /// dQ.
    pub dq: Operand,
    /// dK.
    pub dk: Operand,
    /// dV.
    pub dv: Operand,
}

impl FlashDims {
    /// The kernels' parameter for `shape` (validated) and the strides of `ops` and, for a
    /// backward pass, `grads` (zeros in a forward pass).
    pub(crate) fn new(shape: &FlashShape, ops: &Operands, grads: Option<&GradOperands>) -> FlashDims {
        let grads = grads.map(|g| [g.dout, g.dq, g.dk, g.dv]);
        let g = |i: usize| grads.map(|all| all[i].strides()).unwrap_or_default();
        FlashDims {
            bh: (shape.batch * shape.heads) as i32,
            heads: shape.heads as i32,
            seq: shape.seq as i32,
            causal: shape.causal as i32,
            scale: shape.scale,
            probe: if grads.is_some() { BACKWARD_PROBE.get() } else { 0 },
            layouts: [
                ops.q.strides(),
                ops.k.strides(),
                ops.v.strides(),
                ops.o.strides(),
                g(0),
                g(1),
                g(2),
                g(3),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(batch: usize, heads: usize, seq: usize, head_dim: usize) -> FlashShape {
        FlashShape::new(batch, heads, seq, head_dim, true)
    }

    /// The q, k, v layouts of a packed `[batch, seq, 3, heads, head_dim]` tensor.
    fn packed(s: &FlashShape) -> [HeadLayout; 3] {
        [0, 1, 2].map(|i| HeadLayout::packed_qkv(s, i))
    }

    #[test]
    fn dense_layouts_end_at_the_element_count() {
        let s = shape(3, 5, 7, 64);
        let d = HeadLayout::dense(&s);
        assert_eq!(d.end(&s), Some(s.qkv_len()));
        assert!(d.is_one_to_one(&s));
        assert!(d.check::<half::bf16>("t", "q", s.qkv_len(), &s, true).is_ok());
        assert!(d.check::<half::bf16>("t", "q", s.qkv_len() - 1, &s, true).is_err(), "one element short");
    }

    #[test]
    fn packed_parts_are_one_to_one_and_pairwise_disjoint() {
        for s in [shape(2, 4, 9, 64), shape(1, 1, 5, 128), shape(3, 2, 1, 64)] {
            let parts = packed(&s);
            let len = 3 * s.qkv_len();
            for p in &parts {
                assert!(p.is_one_to_one(&s), "{p:?}");
                assert!(p.check::<half::f16>("t", "part", len, &s, true).is_ok());
                assert_eq!(p.end(&s).map(|e| e <= len), Some(true));
            }
            for (i, j) in [(0, 1), (0, 2), (1, 2)] {
                assert!(parts[i].is_disjoint_from(&parts[j], &s), "{i} {j} {s:?}");
                assert!(parts[j].is_disjoint_from(&parts[i], &s), "{j} {i} {s:?}");
            }
            // Shifting k by one vector makes it overlap q's footprint.
            let shifted = HeadLayout { offset: parts[1].offset - 8, ..parts[1] };
            assert!(!parts[0].is_disjoint_from(&shifted, &s));
            assert!(!parts[0].is_disjoint_from(&parts[0], &s), "an operand overlaps itself");
        }
    }

    #[test]
    fn disjointness_agrees_with_enumeration() {
        // Small shapes, every offset pair in a range: the sufficient condition never claims
        // disjointness where an element is shared.
        let s = shape(2, 2, 3, 64);
        let hd = s.heads * s.head_dim;
        let base = HeadLayout { offset: 0, batch: s.seq * 3 * hd, head: s.head_dim, row: 3 * hd };
        let elements = |l: &HeadLayout| {
            let mut v = Vec::new();
            for b in 0..s.batch {
                for h in 0..s.heads {
                    for t in 0..s.seq {
                        for c in 0..s.head_dim {
                            v.push(l.offset + b * l.batch + h * l.head + t * l.row + c);
                        }
                    }
                }
            }
            v.sort_unstable();
            v
        };
        // The packed layout, and one whose sequences are packed tightly (the batch stride not a
        // whole number of rows), where a footprint can run into the next sequence's first row.
        let tight = HeadLayout { batch: (s.seq - 1) * 3 * hd + hd, ..base };
        let mut claimed = 0;
        for layout in [base, tight] {
            let a = elements(&layout);
            for off in (0..4 * hd).step_by(8) {
                let other = HeadLayout { offset: off, ..layout };
                let b = elements(&other);
                let shared = a.iter().any(|x| b.binary_search(x).is_ok());
                if layout.is_disjoint_from(&other, &s) {
                    assert!(!shared, "{layout:?} at offset {off} claimed disjoint but shares elements");
                    claimed += 1;
                }
            }
        }
        assert!(claimed >= 2, "the packed k and v offsets are claimed disjoint");
    }

    #[test]
    fn overlapping_and_misaligned_layouts_are_refused() {
        let s = shape(1, 2, 4, 64);
        let n = 4 * s.qkv_len();
        let ok = HeadLayout::dense(&s);
        let err = |l: HeadLayout, written| {
            l.check::<half::bf16>("op", "x", n, &s, written).unwrap_err().to_string()
        };
        assert!(err(HeadLayout { offset: 4, ..ok }, false).contains("offset 4"));
        assert!(err(HeadLayout { row: 68, ..ok }, false).contains("row stride 68"));
        assert!(
            err(HeadLayout { row: 32, head: 256, batch: 512, offset: 0 }, false).contains("row stride 32")
        );
        // Heads that land on each other's rows: fine to read, refused as an output.
        let folded = HeadLayout { offset: 0, batch: 1024, head: 64, row: 64 };
        assert!(folded.check::<half::bf16>("op", "x", n, &s, false).is_ok());
        assert!(err(folded, true).contains("twice"));
        assert!(err(HeadLayout { offset: n, ..ok }, false).contains("reaches past"));
        // An operand reaching past 2³⁵ elements, in a (hypothetical) buffer big enough.
        let far = HeadLayout { offset: 1 << 35, ..ok };
        let msg = far.check::<half::bf16>("op", "x", usize::MAX, &s, false).unwrap_err().to_string();
        assert!(msg.contains("2³⁵"), "{msg}");
    }

    #[test]
    fn dims_follow_the_c_struct() {
        // common.cuh: six 4-byte fields, then q, k, v, o, dout, dq, dk, dv as triples of i64.
        assert_eq!(std::mem::offset_of!(FlashDims, scale), 16);
        assert_eq!(std::mem::offset_of!(FlashDims, layouts), 24);
        let s = FlashShape { scale: 0.5, ..shape(2, 3, 5, 64) };
        let q = Operand { ptr: 0, layout: HeadLayout { offset: 0, batch: 88, head: 56, row: 64 } };
        let zero = Operand { ptr: 0, layout: HeadLayout { offset: 0, batch: 0, head: 0, row: 0 } };
        let ops = Operands { q, k: zero, v: zero, o: zero };
        let grads = GradOperands { dout: zero, dq: zero, dk: zero, dv: q };
        let d = FlashDims::new(&s, &ops, Some(&grads));
        assert_eq!((d.bh, d.heads, d.seq, d.causal), (6, 3, 5, 1));
        assert_eq!((d.layouts[0].batch, d.layouts[0].head, d.layouts[0].row), (88, 56, 64));
        assert_eq!(d.layouts[7].row, 64);
        assert!(
            d.layouts[1..7].iter().all(|l| (l.batch, l.head, l.row) == (0, 0, 0)),
            "absent operands are zero"
        );
    }
}
