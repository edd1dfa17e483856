//! Misuse of the public API gives typed errors whose messages name the shapes and ids
//! involved, never a panic. Ends with a property test that throws random shapes, op choices
//! and arguments at the API and checks that nothing unwinds.

use std::panic::{catch_unwind, AssertUnwindSafe};

use half::bf16;
use polylm_engine::{DType, Device, Error, Rng, Tensor};
use proptest::prelude::*;

// ----- helpers ---------------------------------------------------------------------------------

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32).unwrap()
}

fn zeros_of(shape: &[usize], dtype: DType) -> Tensor {
    Tensor::zeros(shape, dtype).unwrap()
}

/// Asserts that `err`'s message contains every one of `parts`.
#[track_caller]
fn assert_msg(err: &Error, parts: &[&str]) {
    let msg = err.to_string();
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should contain {p:?}");
    }
}

// ----- constructors ----------------------------------------------------------------------------

#[test]
fn from_vec_with_wrong_element_count() {
    let err = Tensor::from_vec(vec![1.0f32; 5], &[2, 3]).unwrap_err();
    assert_eq!(err, Error::ElementCount { shape: vec![2, 3], expected: 6, len: 5 });
    assert_msg(&err, &["5 elements", "[2, 3]", "6 elements"]);

    let err = Tensor::from_vec(vec![1.0f64; 2], &[]).unwrap_err();
    assert_eq!(err, Error::ElementCount { shape: vec![], expected: 1, len: 2 });
    assert_msg(&err, &["2 elements", "[]"]);

    let err = Tensor::from_slice(&[bf16::ONE], &[0]).unwrap_err();
    assert!(matches!(err, Error::ElementCount { expected: 0, len: 1, .. }));

    // A shape whose element count overflows is an error, not an overflow panic.
    let err = Tensor::from_vec(vec![1.0f32; 4], &[usize::MAX, 2]).unwrap_err();
    assert!(matches!(err, Error::ElementCount { len: 4, .. }), "{err:?}");
    assert_msg(&err, &["4 elements", &format!("[{}, 2]", usize::MAX)]);
}

#[test]
fn full_with_an_overflowing_shape() {
    let err = Tensor::full(&[usize::MAX, 3], 1.0, DType::F32).unwrap_err();
    assert!(matches!(err, Error::BadShape { op: "full", .. }), "{err:?}");
    assert_msg(&err, &["full", "overflow"]);
    assert!(Tensor::zeros(&[usize::MAX / 2, 4], DType::BF16).is_err());
}

// ----- matmul ----------------------------------------------------------------------------------

#[test]
fn matmul_inner_dimension_mismatch() {
    let err = zeros(&[2, 3]).matmul(&zeros(&[4, 5])).unwrap_err();
    assert_eq!(err, Error::ShapeMismatch { op: "matmul", lhs: vec![2, 3], rhs: vec![4, 5] });
    assert_msg(&err, &["matmul", "[2, 3]", "[4, 5]"]);

    // Batched lhs with a 2-D rhs (the folded path) checks too.
    let err = zeros(&[2, 2, 3]).matmul(&zeros(&[2, 5])).unwrap_err();
    assert_msg(&err, &["matmul", "[2, 2, 3]", "[2, 5]"]);
    // A transposed view is checked with its logical shape.
    let err = zeros(&[3, 2]).t().unwrap().matmul(&zeros(&[2, 4])).unwrap_err();
    assert_msg(&err, &["[2, 3]", "[2, 4]"]);
}

#[test]
fn matmul_needs_rank_two() {
    for (a, b) in [(vec![3], vec![3, 2]), (vec![2, 3], vec![3]), (vec![], vec![1, 1]), (vec![4], vec![4])] {
        let err = zeros(&a).matmul(&zeros(&b)).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{a:?} x {b:?}: {err:?}");
        assert_msg(&err, &["matmul", "rank", &format!("{a:?}"), &format!("{b:?}")]);
    }
}

#[test]
fn matmul_dtype_mismatch() {
    let err = zeros_of(&[2, 3], DType::F32).matmul(&zeros_of(&[3, 2], DType::BF16)).unwrap_err();
    assert_eq!(err, Error::DTypeMismatch { op: "matmul", lhs: DType::F32, rhs: DType::BF16 });
    assert_msg(&err, &["matmul", "f32", "bf16"]);
    let err = zeros_of(&[2, 3], DType::F64).matmul(&zeros_of(&[3, 2], DType::F16)).unwrap_err();
    assert_msg(&err, &["f64", "f16"]);
}

#[test]
fn matmul_incompatible_batch_dims() {
    let err = zeros(&[2, 3, 4]).matmul(&zeros(&[5, 4, 6])).unwrap_err();
    // The engine names both operands' full shapes.
    assert!(matches!(err, Error::ShapeMismatch { op: "matmul (batch axes)", .. }), "{err:?}");
    assert_msg(&err, &["matmul", "batch", "[2, 3, 4]", "[5, 4, 6]"]);

    let err = zeros(&[3, 2, 2, 2]).matmul(&zeros(&[4, 2, 2])).unwrap_err();
    assert_msg(&err, &["matmul", "[3, 2, 2, 2]", "[4, 2, 2]"]);

    // Broadcastable batches are fine.
    let y = zeros(&[3, 1, 2, 4]).matmul(&zeros(&[5, 4, 6])).unwrap();
    assert_eq!(y.shape(), &[3, 5, 2, 6]);
}

// ----- elementwise -----------------------------------------------------------------------------

#[test]
fn binary_ops_with_non_broadcastable_shapes() {
    let (a, b) = (zeros(&[2, 3]), zeros(&[4]));
    type BinOp = fn(&Tensor, &Tensor) -> polylm_engine::Result<Tensor>;
    let ops: [(&str, BinOp); 4] =
        [("add", Tensor::add), ("sub", Tensor::sub), ("mul", Tensor::mul), ("div", Tensor::div)];
    for (name, f) in ops {
        let err = f(&a, &b).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { op, .. } if op == name), "{name}: {err:?}");
        assert_msg(&err, &[name, "[2, 3]", "[4]"]);
    }
    let err = zeros(&[3, 2, 4]).mul(&zeros(&[3, 4])).unwrap_err();
    assert_eq!(err, Error::ShapeMismatch { op: "mul", lhs: vec![3, 2, 4], rhs: vec![3, 4] });
    // ...while [3, 1, 4] and [3, 4] do broadcast.
    assert_eq!(zeros(&[3, 1, 4]).mul(&zeros(&[3, 4])).unwrap().shape(), &[3, 3, 4]);
    let err = zeros(&[0]).add(&zeros(&[2])).unwrap_err();
    assert_msg(&err, &["add", "[0]", "[2]"]);
    let err = zeros(&[2]).add(&zeros_of(&[2], DType::F64)).unwrap_err();
    assert_eq!(err, Error::DTypeMismatch { op: "add", lhs: DType::F32, rhs: DType::F64 });
}

#[test]
fn div_scalar_by_zero() {
    for zero in [0.0, -0.0] {
        let err = zeros(&[2]).div_scalar(zero).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { op: "div_scalar", .. }), "{err:?}");
        assert_msg(&err, &["div_scalar", "zero"]);
    }
    assert_eq!(
        zeros(&[2]).add_scalar(3.0).unwrap().div_scalar(2.0).unwrap().to_vec::<f32>().unwrap(),
        vec![1.5, 1.5]
    );
}

// ----- shape ops -------------------------------------------------------------------------------

#[test]
fn reshape_to_a_wrong_element_count() {
    let err = zeros(&[2, 3]).reshape(&[4]).unwrap_err();
    assert_eq!(err, Error::ShapeMismatch { op: "reshape", lhs: vec![2, 3], rhs: vec![4] });
    assert_msg(&err, &["reshape", "[2, 3]", "[4]"]);
    // Overflowing target shapes are errors too.
    let err = zeros(&[2, 3]).reshape(&[usize::MAX, usize::MAX]).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { op: "reshape", .. }));
    // Through a non-contiguous view.
    let err = zeros(&[2, 3]).t().unwrap().reshape(&[5]).unwrap_err();
    assert_msg(&err, &["[3, 2]", "[5]"]);
}

#[test]
fn permute_with_a_non_permutation() {
    let x = zeros(&[2, 3]);
    for order in [vec![0, 0], vec![0], vec![0, 2], vec![0, 1, 2], vec![]] {
        let err = x.permute(&order).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { op: "permute", .. }), "{order:?}: {err:?}");
        assert_msg(&err, &["permute", &format!("{order:?}"), "[2, 3]", "2 axes"]);
    }
    assert_eq!(x.permute(&[1, 0]).unwrap().shape(), &[3, 2]);
}

#[test]
fn transpose_axis_out_of_range() {
    let x = zeros(&[2, 3]);
    let err = x.transpose(0, 2).unwrap_err();
    assert_eq!(err, Error::AxisOutOfRange { op: "transpose", axis: 2, rank: 2 });
    assert_msg(&err, &["transpose", "axis 2", "rank 2"]);
    let err = x.transpose(-3, 0).unwrap_err();
    assert!(matches!(err, Error::AxisOutOfRange { op: "transpose", rank: 2, .. }));
    assert_msg(&err, &["transpose", "3", "rank 2"]);
    let err = zeros(&[4]).t().unwrap_err();
    assert!(matches!(err, Error::BadShape { op: "t", .. }));
    assert_msg(&err, &["t:", "[4]", "two axes"]);
}

#[test]
fn narrow_axis_out_of_range_and_past_the_end() {
    let x = zeros(&[2, 3]);
    let err = x.narrow(2, 0, 1).unwrap_err();
    assert_eq!(err, Error::AxisOutOfRange { op: "narrow", axis: 2, rank: 2 });
    assert_msg(&err, &["narrow", "axis 2", "rank 2"]);
    assert!(matches!(x.narrow(-3, 0, 1), Err(Error::AxisOutOfRange { op: "narrow", .. })));

    let err = x.narrow(1, 2, 2).unwrap_err();
    assert_eq!(err, Error::RangeOutOfBounds { axis: 1, start: 2, end: 4, size: 3 });
    assert_msg(&err, &["narrow", "2..4", "axis 1", "size 3"]);
    let err = x.narrow(-1, 4, 0).unwrap_err();
    assert_eq!(err, Error::RangeOutOfBounds { axis: 1, start: 4, end: 4, size: 3 });
    // start + len overflowing usize is an error, not a panic.
    let err = x.narrow(0, usize::MAX, 2).unwrap_err();
    assert!(matches!(err, Error::RangeOutOfBounds { axis: 0, size: 2, .. }), "{err:?}");
    // Narrowing a rank-0 tensor has no axis.
    assert!(matches!(
        Tensor::scalar(1.0, DType::F32).narrow(0, 0, 1),
        Err(Error::AxisOutOfRange { rank: 0, .. })
    ));
    // Empty ranges at the end are fine.
    assert_eq!(x.narrow(1, 3, 0).unwrap().shape(), &[2, 0]);
}

#[test]
fn split_with_sizes_that_do_not_add_up() {
    let err = zeros(&[2, 5]).split(1, &[2, 2]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "split", .. }));
    assert_msg(&err, &["split", "[2, 2]", "[2, 5]"]);
    assert!(matches!(zeros(&[2, 5]).split(2, &[1]), Err(Error::AxisOutOfRange { op: "split", .. })));
}

#[test]
fn squeeze_unsqueeze_expand_misuse() {
    let x = zeros(&[2, 3]);
    let err = x.squeeze(0).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "squeeze", .. }));
    assert_msg(&err, &["squeeze", "axis 0", "[2, 3]"]);
    assert!(matches!(x.squeeze(5), Err(Error::InvalidArgument { op: "squeeze", .. })));
    let err = x.unsqueeze(3).unwrap_err();
    assert_eq!(err, Error::AxisOutOfRange { op: "unsqueeze", axis: 3, rank: 2 });
    let err = x.expand(&[2, 4]).unwrap_err();
    assert_msg(&err, &["expand", "[2, 3]", "[2, 4]"]);
    let err = x.expand(&[3]).unwrap_err();
    assert_msg(&err, &["expand", "[2, 3]", "[3]"]);
    let err = x.dim(2).unwrap_err();
    assert_eq!(err, Error::AxisOutOfRange { op: "dim", axis: 2, rank: 2 });
}

#[test]
fn sum_axis_out_of_range() {
    let x = zeros(&[2, 3]);
    let err = x.sum(&[2], false).unwrap_err();
    assert_eq!(err, Error::AxisOutOfRange { op: "sum", axis: 2, rank: 2 });
    assert_msg(&err, &["sum", "axis 2", "rank 2"]);
    assert!(matches!(x.sum(&[0, 7], true), Err(Error::AxisOutOfRange { op: "sum", axis: 7, .. })));
    assert!(matches!(
        Tensor::scalar(1.0, DType::F32).sum(&[0], false),
        Err(Error::AxisOutOfRange { rank: 0, .. })
    ));
    assert!(x.mean(&[9], false).is_err());
    let err = zeros(&[2, 0]).mean(&[1], false).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "mean", .. }));
    assert_msg(&err, &["mean", "[2, 0]"]);
}

#[test]
fn concat_mismatched_and_empty() {
    let err = Tensor::concat(&[zeros(&[2, 3]), zeros(&[3, 3])], 1).unwrap_err();
    assert_eq!(err, Error::ShapeMismatch { op: "concat", lhs: vec![2, 3], rhs: vec![3, 3] });
    assert_msg(&err, &["concat", "[2, 3]", "[3, 3]"]);
    let err = Tensor::concat(&[zeros(&[2, 3]), zeros(&[2, 3, 1])], 0).unwrap_err();
    assert_msg(&err, &["concat", "[2, 3]", "[2, 3, 1]"]);
    let err = Tensor::concat(&[zeros(&[2, 3]), zeros(&[2])], 0).unwrap_err();
    assert_msg(&err, &["concat", "[2, 3]", "[2]"]);
    let err = Tensor::concat(&[zeros(&[2]), zeros_of(&[2], DType::BF16)], 0).unwrap_err();
    assert_eq!(err, Error::DTypeMismatch { op: "concat", lhs: DType::F32, rhs: DType::BF16 });
    let err = Tensor::concat(&[zeros(&[2, 3])], 2).unwrap_err();
    assert_eq!(err, Error::AxisOutOfRange { op: "concat", axis: 2, rank: 2 });

    let err = Tensor::concat(&[], 0).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "concat", .. }));
    assert_msg(&err, &["concat", "no tensors"]);
    assert!(matches!(
        Tensor::concat(&[Tensor::scalar(1.0, DType::F32)], 0),
        Err(Error::AxisOutOfRange { .. })
    ));
}

// ----- embedding -------------------------------------------------------------------------------

#[test]
fn embedding_id_out_of_range_names_id_and_position() {
    let table = zeros(&[4, 2]);
    let err = table.embedding(&[1, 3, 4, 0, 9], &[5]).unwrap_err();
    assert_eq!(err, Error::IdOutOfRange { op: "embedding", position: 2, id: 4, limit: 4 });
    assert_msg(&err, &["embedding", "id 4", "position 2", "< 4"]);
    // With a 2-D id layout the position is in the flattened list.
    let err = table.embedding(&[0, 1, 2, 3, 3, 7], &[2, 3]).unwrap_err();
    assert_msg(&err, &["id 7", "position 5"]);
    let err = table.embedding(&[u32::MAX], &[1]).unwrap_err();
    assert_msg(&err, &[&format!("id {}", u32::MAX), "position 0"]);
    // An empty table rejects every id.
    let err = zeros(&[0, 3]).embedding(&[0], &[1]).unwrap_err();
    assert_eq!(err, Error::IdOutOfRange { op: "embedding", position: 0, id: 0, limit: 0 });
}

#[test]
fn embedding_ids_length_mismatch() {
    let table = zeros(&[4, 2]);
    let err = table.embedding(&[1, 2, 3], &[2, 2]).unwrap_err();
    assert_eq!(err, Error::ElementCount { shape: vec![2, 2], expected: 4, len: 3 });
    assert_msg(&err, &["3 elements", "[2, 2]", "4 elements"]);
    let err = table.embedding(&[], &[]).unwrap_err();
    assert_eq!(err, Error::ElementCount { shape: vec![], expected: 1, len: 0 });
}

#[test]
fn embedding_table_must_be_2d() {
    for shape in [vec![4], vec![2, 2, 2], vec![]] {
        let err = zeros(&shape).embedding(&[0], &[1]).unwrap_err();
        assert!(matches!(err, Error::BadShape { op: "embedding", .. }), "{shape:?}: {err:?}");
        assert_msg(&err, &["embedding", &format!("{shape:?}"), "[rows, dim]"]);
    }
}

// ----- cross-entropy ---------------------------------------------------------------------------

#[test]
fn cross_entropy_target_out_of_range_names_id_and_position() {
    let logits = zeros(&[3, 5]);
    let err = logits.cross_entropy(&[0, 5, 2], None).unwrap_err();
    assert_eq!(err, Error::IdOutOfRange { op: "cross_entropy", position: 1, id: 5, limit: 5 });
    assert_msg(&err, &["cross_entropy", "id 5", "position 1", "< 5"]);
    // An ignore index that doesn't match does not excuse other out-of-range targets.
    let err = logits.cross_entropy(&[0, 1, 100], Some(99)).unwrap_err();
    assert_msg(&err, &["id 100", "position 2"]);
    // Batched logits: positions count flattened rows.
    let err = zeros(&[2, 2, 3]).cross_entropy(&[0, 1, 2, 3], None).unwrap_err();
    assert_msg(&err, &["id 3", "position 3", "< 3"]);
}

#[test]
fn cross_entropy_wrong_target_count() {
    let err = zeros(&[3, 5]).cross_entropy(&[0, 1], None).unwrap_err();
    assert_eq!(err, Error::ElementCount { shape: vec![3], expected: 3, len: 2 });
    assert_msg(&err, &["2 elements", "[3]", "3 elements"]);
    let err = zeros(&[2, 3, 4]).cross_entropy(&[0; 7], None).unwrap_err();
    assert_eq!(err, Error::ElementCount { shape: vec![2, 3], expected: 6, len: 7 });
}

#[test]
fn cross_entropy_bad_logit_shapes() {
    let err = Tensor::scalar(0.0, DType::F32).cross_entropy(&[0], None).unwrap_err();
    assert!(matches!(err, Error::BadShape { op: "cross_entropy", .. }));
    let err = zeros(&[3, 0]).cross_entropy(&[0, 0, 0], None).unwrap_err();
    assert!(matches!(err, Error::BadShape { op: "cross_entropy", .. }));
    assert_msg(&err, &["cross_entropy", "[3, 0]", "vocabulary"]);
}

#[test]
fn cross_entropy_ignored_rows_are_fine() {
    let vocab = 5;
    // Zero logits: every row's loss is ln(vocab) whatever the target.
    let logits = zeros(&[3, vocab]).requires_grad();
    let loss = logits.cross_entropy(&[0, 99, 4], Some(99)).unwrap();
    assert!((loss.to_scalar().unwrap() - (vocab as f64).ln()).abs() < 1e-6);
    loss.backward().unwrap();
    let g = logits.grad().unwrap().to_vec_f64();
    // Rows 0 and 2 count (mean over 2): (1/vocab − onehot)/2; the ignored row has zero gradient.
    for (c, gv) in g.iter().enumerate() {
        let (row, col) = (c / vocab, c % vocab);
        let want = match row {
            1 => 0.0,
            _ => (0.2 - if (row == 0 && col == 0) || (row == 2 && col == 4) { 1.0 } else { 0.0 }) / 2.0,
        };
        assert!((gv - want).abs() < 1e-6, "grad[{row}][{col}] = {gv}, want {want}");
    }

    // An ignore index inside the vocabulary: rows with that target are skipped.
    let logits = t32_rows(&[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]);
    let loss = logits.cross_entropy(&[2, 1], Some(1)).unwrap().to_scalar().unwrap();
    let want = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 3.0;
    assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");

    // Every row ignored: loss 0, zero gradient.
    let logits = zeros(&[2, 3]).requires_grad();
    let loss = logits.cross_entropy(&[7, 7], Some(7)).unwrap();
    assert_eq!(loss.to_scalar().unwrap(), 0.0);
    loss.backward().unwrap();
    assert_eq!(logits.grad().unwrap().to_vec_f64(), vec![0.0; 6]);
}

fn t32_rows<const N: usize>(rows: &[[f32; N]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, &[rows.len(), N]).unwrap()
}

// ----- layer norm, gelu, attention, softmax ----------------------------------------------------

#[test]
fn layer_norm_wrong_weight_shape() {
    let x = zeros(&[2, 4]);
    let (w, b) = (zeros(&[4]), zeros(&[4]));
    let err = x.layer_norm(&zeros(&[3]), &b, 1e-5).unwrap_err();
    assert_eq!(err, Error::ShapeMismatch { op: "layer_norm", lhs: vec![2, 4], rhs: vec![3] });
    assert_msg(&err, &["layer_norm", "[2, 4]", "[3]"]);
    let err = x.layer_norm(&w, &zeros(&[1, 4]), 1e-5).unwrap_err();
    assert_msg(&err, &["layer_norm", "[2, 4]", "[1, 4]"]);
    let err = x.layer_norm(&w, &zeros_of(&[4], DType::BF16), 1e-5).unwrap_err();
    assert_eq!(err, Error::DTypeMismatch { op: "layer_norm", lhs: DType::F32, rhs: DType::BF16 });
    let err = Tensor::scalar(1.0, DType::F32).layer_norm(&w, &b, 1e-5).unwrap_err();
    assert!(matches!(err, Error::BadShape { op: "layer_norm", .. }));
}

#[test]
fn layer_norm_non_positive_eps() {
    let (x, w, b) = (zeros(&[2, 4]), zeros(&[4]), zeros(&[4]));
    for eps in [0.0, -1e-5, f64::NAN, f64::NEG_INFINITY] {
        let err = x.layer_norm(&w, &b, eps).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { op: "layer_norm", .. }), "eps {eps}: {err:?}");
        assert_msg(&err, &["layer_norm", "eps", &format!("{eps}")]);
    }
    assert!(x.layer_norm(&w, &b, 1e-5).is_ok());
}

#[test]
fn bias_gelu_wrong_bias_shape() {
    let x = zeros(&[2, 4]);
    for bias in [vec![3], vec![1, 4], vec![2, 4], vec![]] {
        let err = x.bias_gelu(&zeros(&bias)).unwrap_err();
        assert_eq!(err, Error::ShapeMismatch { op: "bias_gelu", lhs: vec![2, 4], rhs: bias.clone() });
        assert_msg(&err, &["bias_gelu", "[2, 4]", &format!("{bias:?}")]);
    }
    let err = Tensor::scalar(1.0, DType::F32).bias_gelu(&zeros(&[1])).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { op: "bias_gelu", .. }));
    let err = x.bias_gelu(&zeros_of(&[4], DType::F64)).unwrap_err();
    assert!(matches!(err, Error::DTypeMismatch { op: "bias_gelu", .. }));
}

#[test]
fn causal_attention_mismatched_shapes() {
    let q = zeros(&[1, 2, 4, 8]);
    let err = Tensor::causal_attention(&q, &zeros(&[1, 2, 4, 4]), &q).unwrap_err();
    assert_eq!(
        err,
        Error::ShapeMismatch { op: "causal_attention", lhs: vec![1, 2, 4, 8], rhs: vec![1, 2, 4, 4] }
    );
    assert_msg(&err, &["causal_attention", "[1, 2, 4, 8]", "[1, 2, 4, 4]"]);
    let err = Tensor::causal_attention(&q, &q, &zeros(&[1, 2, 5, 8])).unwrap_err();
    assert_msg(&err, &["causal_attention", "[1, 2, 4, 8]", "[1, 2, 5, 8]"]);
    let err = Tensor::causal_attention(&q, &zeros_of(&[1, 2, 4, 8], DType::BF16), &q).unwrap_err();
    assert!(matches!(err, Error::DTypeMismatch { op: "causal_attention", .. }));
    let v = zeros(&[8]);
    let err = Tensor::causal_attention(&v, &v, &v).unwrap_err();
    assert!(matches!(err, Error::BadShape { op: "causal_attention", .. }));
    assert_msg(&err, &["causal_attention", "[8]"]);
}

#[test]
fn softmax_and_flatten_of_a_rank0_tensor() {
    let s = Tensor::scalar(1.0, DType::F32);
    assert!(matches!(s.softmax(), Err(Error::BadShape { op: "softmax", .. })));
    assert!(matches!(s.flatten_to_2d(), Err(Error::BadShape { op: "flatten_to_2d", .. })));
}

// ----- data access and devices -----------------------------------------------------------------

#[test]
fn to_vec_with_the_wrong_type() {
    let x = zeros(&[2]);
    let err = x.to_vec::<f64>().unwrap_err();
    assert_eq!(err, Error::DTypeAccess { requested: DType::F64, actual: DType::F32 });
    assert_msg(&err, &["f32", "f64"]);
    let err = x.to_vec::<bf16>().unwrap_err();
    assert_eq!(err, Error::DTypeAccess { requested: DType::BF16, actual: DType::F32 });
    assert_eq!(x.to_vec::<f32>().unwrap(), vec![0.0, 0.0]);
}

#[test]
fn to_scalar_of_a_multi_element_tensor() {
    let err = zeros(&[2, 2]).to_scalar().unwrap_err();
    assert!(matches!(err, Error::BadShape { op: "to_scalar", .. }));
    assert_msg(&err, &["to_scalar", "[2, 2]", "one element"]);
    assert!(matches!(zeros(&[0]).to_scalar(), Err(Error::BadShape { .. })));
    assert_eq!(Tensor::full(&[1, 1], 2.5, DType::BF16).unwrap().to_scalar().unwrap(), 2.5);
}

#[test]
fn a_missing_cuda_device_is_a_clear_error() {
    // Without a GPU every ordinal fails; with one, a far-off ordinal still does.
    let ordinal = if Device::cuda(0).is_ok() { 4096 } else { 0 };
    let err = Device::cuda(ordinal).unwrap_err();
    assert!(
        matches!(err, Error::DeviceUnavailable { device: Device::Cuda(o), .. } if o == ordinal),
        "{err:?}"
    );
    assert_msg(&err, &[&format!("cuda:{ordinal}"), "not available"]);

    let x = zeros(&[2]);
    let err = x.to_device(Device::Cuda(ordinal)).unwrap_err();
    assert!(matches!(err, Error::DeviceUnavailable { .. }));
    assert_msg(&err, &[&format!("cuda:{ordinal}"), "not available"]);
    let same = x.to_device(Device::Cpu).unwrap();
    assert!(same.shares_storage_with(&x));
    assert_eq!(same.device(), Device::Cpu);
}

#[test]
fn errors_leave_the_graph_usable() {
    let x = zeros(&[2, 3]).add_scalar(1.0).unwrap().requires_grad();
    assert!(x.matmul(&zeros(&[2, 3])).is_err());
    assert!(x.reshape(&[7]).is_err());
    assert!(x.narrow(1, 2, 5).is_err());
    x.mul_scalar(2.0).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec_f64(), vec![2.0; 6]);
}

// ----- regression tests of fixed engine bugs -------------------------------------------------

#[test]
fn matmul_batched_lhs_with_empty_inner_dimension() {
    let a = zeros(&[2, 3, 0]);
    let b = zeros(&[0, 4]);
    let r = catch_unwind(AssertUnwindSafe(|| a.matmul(&b).map(|y| (y.shape().to_vec(), y.to_vec_f64()))));
    let (shape, values) = r.expect("matmul with k = 0 must not panic").expect("k = 0 is a valid product");
    assert_eq!(shape, vec![2, 3, 4]);
    assert_eq!(values, vec![0.0; 24], "an empty sum is zero");
}

#[test]
fn matmul_batched_lhs_with_empty_output_columns_backward() {
    let a = zeros(&[2, 3, 4]).requires_grad();
    let b = zeros(&[4, 0]).requires_grad();
    let r = catch_unwind(AssertUnwindSafe(|| {
        let y = a.matmul(&b)?;
        y.sum_all()?.backward()?;
        Ok::<_, Error>((a.grad().map(|g| g.to_vec_f64()), b.grad().map(|g| g.shape().to_vec())))
    }));
    let (ga, gb) = r.expect("backward must not panic").expect("backward of an empty product is valid");
    assert_eq!(ga, Some(vec![0.0; 24]));
    assert_eq!(gb, Some(vec![4, 0]));
}

#[test]
fn flatten_to_2d_with_an_empty_last_axis_keeps_the_row_count() {
    assert_eq!(zeros(&[2, 3, 0]).flatten_to_2d().unwrap().shape(), &[6, 0]);
}

#[test]
fn mean_with_a_repeated_axis_is_an_error_or_the_mean() {
    let x = Tensor::from_vec(vec![1.0f32, 3.0], &[2]).unwrap();
    assert_eq!(x.sum(&[0, 0], false).unwrap().to_scalar().unwrap(), 4.0, "sum deduplicates axes");
    match x.mean(&[0, 0], false) {
        Err(e) => assert!(matches!(e, Error::InvalidArgument { op: "mean", .. }), "{e:?}"),
        Ok(m) => assert_eq!(m.to_scalar().unwrap(), 2.0, "mean over axis 0 (listed twice)"),
    }
}

#[test]
fn matmul_2d_with_empty_inner_dimension_is_zero() {
    let y = zeros(&[3, 0]).matmul(&zeros(&[0, 4])).unwrap();
    assert_eq!(y.shape(), &[3, 4]);
    assert_eq!(y.to_vec_f64(), vec![0.0; 12]);
}

// ----- property test: random misuse never panics -----------------------------------------------

/// 64 cases, or `POLYLM_ERRORS_CASES` for a longer hunt.
fn cases() -> u32 {
    std::env::var("POLYLM_ERRORS_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];

fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..5, 0..4)
}

#[derive(Debug, Clone)]
struct Case {
    a: Vec<usize>,
    b: Vec<usize>,
    c: Vec<usize>,
    dtype_a: usize,
    dtype_b: usize,
    grad: bool,
    axis: isize,
    axes: Vec<usize>,
    start: usize,
    len: usize,
    ids: Vec<u32>,
    ignore: Option<u32>,
    eps: f64,
    seed: u64,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        (shape_strategy(), shape_strategy(), shape_strategy()),
        (0usize..4, prop_oneof![3 => Just(None), 1 => (0usize..4).prop_map(Some)], any::<bool>()),
        (-5isize..5, prop::collection::vec(0usize..5, 0..4), 0usize..6, 0usize..6),
        (prop::collection::vec(0u32..8, 0..70), prop::option::of(0u32..8)),
        (prop_oneof![Just(1e-5), Just(0.0), Just(-1.0), Just(f64::NAN)], any::<u64>()),
    )
        .prop_map(
            |((a, b, c), (dtype_a, dtype_b, grad), (axis, axes, start, len), (ids, ignore), (eps, seed))| {
                Case {
                    a,
                    b,
                    c,
                    dtype_a,
                    dtype_b: dtype_b.unwrap_or(dtype_a),
                    grad,
                    axis,
                    axes,
                    start,
                    len,
                    ids,
                    ignore,
                    eps,
                    seed,
                }
            },
        )
}

/// Consumes an op's result: reads every value, and when it is part of a graph, reduces it
/// and runs backward, reading the gradients too. Errors anywhere are fine.
fn consume(r: polylm_engine::Result<Tensor>, leaves: &[&Tensor]) {
    let Ok(y) = r else { return };
    let _ = y.to_vec_f64();
    let _ = format!("{y:?}");
    if y.requires_grad_flag() {
        if let Ok(s) = y.sum_all() {
            let _ = s.backward();
        }
        for l in leaves {
            if let Some(g) = l.grad() {
                assert_eq!(g.shape(), l.shape(), "gradient shape equals the leaf's shape");
                let _ = g.to_vec_f64();
            }
            l.zero_grad();
        }
    }
}

/// Runs every op on the case's operands (many calls are invalid on purpose).
fn exercise(case: &Case) {
    let mut rng = Rng::new(case.seed);
    let make = |shape: &[usize], dtype: DType, rng: &mut Rng| {
        let t = Tensor::randn(shape, 1.0, dtype, rng).expect("valid shape");
        if case.grad {
            t.requires_grad()
        } else {
            t
        }
    };
    let (da, db) = (DTYPES[case.dtype_a], DTYPES[case.dtype_b]);
    let a = make(&case.a, da, &mut rng);
    let b = make(&case.b, db, &mut rng);
    let c = make(&case.c, db, &mut rng);
    let leaves = [&a, &b, &c];
    let ids = &case.ids[..case.ids.len().min(a.numel().max(c.numel()) + 1)];

    consume(a.matmul(&b), &leaves);
    if let Ok(at) = a.t() {
        consume(at.matmul(&b), &leaves);
    }
    consume(a.add(&b), &leaves);
    consume(a.mul(&b), &leaves);
    consume(a.sub(&c), &leaves);
    consume(a.div(&c), &leaves);
    consume(a.reshape(&case.b), &leaves);
    consume(a.reshape(&case.c), &leaves);
    consume(a.narrow(case.axis, case.start, case.len), &leaves);
    consume(a.transpose(case.axis, case.start as isize), &leaves);
    consume(a.permute(&case.axes), &leaves);
    consume(a.sum(&case.axes, case.grad), &leaves);
    consume(a.mean(&case.axes, !case.grad), &leaves);
    consume(a.sum_all(), &leaves);
    consume(a.softmax(), &leaves);
    consume(a.layer_norm(&b, &c, case.eps), &leaves);
    consume(a.bias_gelu(&b), &leaves);
    consume(a.gelu(), &leaves);
    consume(a.expand(&case.b), &leaves);
    consume(a.unsqueeze(case.start), &leaves);
    consume(a.squeeze(case.start), &leaves);
    consume(a.to_dtype(db), &leaves);
    consume(a.flatten_to_2d(), &leaves);
    consume(a.sum_to_shape(&case.b), &leaves);
    consume(a.powf(case.eps), &leaves);
    consume(Tensor::concat(&[a.clone(), b.clone()], case.axis), &leaves);
    consume(a.split(case.axis, &case.axes).map(|mut v| v.pop().unwrap_or(a.clone())), &leaves);
    consume(Tensor::causal_attention(&a, &b, &c), &leaves);
    consume(a.cross_entropy(ids, case.ignore), &leaves);
    consume(a.cross_entropy(ids, None), &leaves);
    // Embedding with random ids laid out as shape c (often the wrong count) and as a flat list.
    consume(a.embedding(ids, &case.c), &leaves);
    consume(a.embedding(ids, &[ids.len()]), &leaves);
    consume(Tensor::from_vec(vec![0.0f32; case.ids.len()], &case.a), &leaves);
    let _ = a.to_scalar();
    let _ = a.to_vec::<f32>();
    let _ = a.div_scalar(case.eps);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_calls_return_ok_or_err_but_never_panic(case in case_strategy()) {
        let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&case)));
        prop_assert!(outcome.is_ok(), "a call panicked for {:?}", case);
    }

    /// Shapes that are made to fit (so the ops really run) rather than random misuse.
    #[test]
    fn valid_random_shapes_never_panic(
        rows in 0usize..5, cols in 0usize..5, inner in 0usize..5, batch in 0usize..4, seed: u64, grad: bool,
        targets in prop::collection::vec(0u32..7, 0..25),
    ) {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut rng = Rng::new(seed);
            let mk = |s: &[usize], rng: &mut Rng| {
                let t = Tensor::randn(s, 1.0, DType::F32, rng).unwrap();
                if grad { t.requires_grad() } else { t }
            };
            let x = mk(&[batch, rows, inner], &mut rng);
            let w = mk(&[inner, cols], &mut rng);
            let bw = mk(&[batch, inner, cols], &mut rng);
            let lw = mk(&[inner], &mut rng);
            let lb = mk(&[inner], &mut rng);
            let leaves = [&x, &w, &bw, &lw, &lb];
            consume(x.matmul(&bw), &leaves);
            consume(x.matmul(&w), &leaves);
            consume(x.t().and_then(|xt| xt.matmul(&x)), &leaves);
            consume(x.softmax(), &leaves);
            consume(x.layer_norm(&lw, &lb, 1e-5), &leaves);
            consume(x.bias_gelu(&lw), &leaves);
            consume(Tensor::causal_attention(&x, &x, &x), &leaves);
            let n_rows = batch * rows;
            let t: Vec<u32> = (0..n_rows).map(|i| targets.get(i).copied().unwrap_or(0)).collect();
            consume(x.cross_entropy(&t, Some(6)), &leaves);
            consume(w.embedding(&t, &[n_rows]), &leaves);
            consume(x.sum(&[1], false), &leaves);
            consume(x.mean(&[0, 2], true), &leaves);
        }));
        prop_assert!(outcome.is_ok(), "a call panicked");
    }
}
