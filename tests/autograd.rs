//! The semantics of reverse-mode autograd, checked against values computed by hand (or by a
//! plain loop in the test): which tensors get gradients, accumulation and reset, fan-out and
//! diamonds, no-grad scopes, detach, backward errors and graph freeing, gradients through
//! every view op, broadcasting, dtypes, clone/storage sharing and thread safety.

use half::bf16;
use polylm_engine::{is_grad_enabled, no_grad, with_no_grad, DType, Error, Tensor};

// ----- helpers ---------------------------------------------------------------------------------

/// An f32 tensor of `shape` from `values`.
fn t32(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape).expect("element count matches shape")
}

/// An f64 tensor of `shape` from `values`.
fn t64(values: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape).expect("element count matches shape")
}

/// An f32 tensor of `shape` holding `0, 1, 2, ...` in row-major order.
fn arange(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
    t32(&v, shape)
}

/// An f32 tensor of `shape` holding `1, 2, 3, ...`, used as distinct per-element loss weights.
fn weights(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i + 1) as f32).collect();
    t32(&v, shape)
}

/// The accumulated gradient of `x` as f64 values, panicking if there is none.
#[track_caller]
fn grad(x: &Tensor) -> Vec<f64> {
    x.grad().expect("leaf should have a gradient").to_vec_f64()
}

/// `Σ (y ⊙ w)`: a scalar whose gradient with respect to `y` is exactly `w`.
fn weighted_sum(y: &Tensor, w: &Tensor) -> Tensor {
    y.mul(w).unwrap().sum_all().unwrap()
}

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: got {g}, want {w} (got {got:?}, want {want:?})"
        );
    }
}

// ----- which tensors get gradients ---------------------------------------------------------

#[test]
fn leaves_that_require_grad_get_gradients_others_do_not() {
    let x = t32(&[1.0, 2.0, 3.0], &[3]).requires_grad();
    let c = t32(&[4.0, 5.0, 6.0], &[3]);
    assert!(x.is_leaf() && x.requires_grad_flag());
    assert!(c.is_leaf() && !c.requires_grad_flag());

    let y = x.mul(&c).unwrap();
    assert!(!y.is_leaf(), "an op result is not a leaf");
    assert!(y.requires_grad_flag(), "an op on a requiring input requires grad");
    let loss = y.sum_all().unwrap();
    assert_eq!(loss.shape(), &[] as &[usize]);
    assert_eq!(loss.to_scalar().unwrap(), 4.0 + 10.0 + 18.0);

    loss.backward().unwrap();
    // d/dx Σ x·c = c
    assert_eq!(x.grad().unwrap().to_vec::<f32>().unwrap(), vec![4.0, 5.0, 6.0]);
    assert_eq!(x.grad().unwrap().shape(), &[3]);
    assert!(c.grad().is_none(), "an input that does not require grad gets no gradient");
    assert!(y.grad().is_none(), "an intermediate tensor does not store its gradient");
    assert!(loss.grad().is_none(), "the root (non-leaf) does not store its gradient");
}

#[test]
fn ops_on_inputs_without_grad_record_nothing() {
    let a = t32(&[1.0, 2.0], &[2]);
    let b = t32(&[3.0, 4.0], &[2]);
    let s = a.mul(&b).unwrap().sum_all().unwrap();
    assert!(!s.requires_grad_flag());
    assert!(s.is_leaf(), "nothing recorded: the result is a plain leaf");
    assert_eq!(s.backward(), Err(Error::BackwardWithoutGraph));
}

#[test]
fn only_the_requiring_operand_of_a_binary_op_gets_a_gradient() {
    let a = t32(&[1.0, 2.0], &[2]);
    let b = t32(&[3.0, 5.0], &[2]).requires_grad();
    a.div(&b).unwrap().sum_all().unwrap().backward().unwrap();
    // d/db (a / b) = -a / b²
    assert_close(&grad(&b), &[-1.0 / 9.0, -2.0 / 25.0], 1e-6);
    assert!(a.grad().is_none());
}

#[test]
fn a_scalar_leaf_is_its_own_root() {
    let x = Tensor::scalar(3.0, DType::F32).requires_grad();
    x.backward().unwrap();
    assert_eq!(grad(&x), vec![1.0]);
    // A leaf has no graph to free: backward again just accumulates.
    x.backward().unwrap();
    assert_eq!(grad(&x), vec![2.0]);
}

// ----- accumulation and reset --------------------------------------------------------------

#[test]
fn gradients_accumulate_across_backward_passes_and_zero_grad_resets() {
    let x = t32(&[1.0, -2.0, 0.5], &[3]).requires_grad();
    let pass = || x.sqr().unwrap().sum_all().unwrap().backward().unwrap();

    pass();
    assert_eq!(grad(&x), vec![2.0, -4.0, 1.0]); // 2x
    pass();
    assert_eq!(grad(&x), vec![4.0, -8.0, 2.0], "second identical pass doubles the gradient");
    pass();
    assert_eq!(grad(&x), vec![6.0, -12.0, 3.0]);

    x.zero_grad();
    assert!(x.grad().is_none(), "zero_grad forgets the gradient");
    pass();
    assert_eq!(grad(&x), vec![2.0, -4.0, 1.0], "after zero_grad, accumulation starts afresh");
}

#[test]
fn accumulation_sums_different_losses() {
    let x = t32(&[1.0, 2.0], &[2]).requires_grad();
    x.mul_scalar(3.0).unwrap().sum_all().unwrap().backward().unwrap();
    x.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    // 3 + 2x
    assert_eq!(grad(&x), vec![5.0, 7.0]);
}

// ----- fan-out and diamonds ----------------------------------------------------------------

#[test]
fn a_tensor_used_several_times_sums_its_gradients() {
    let x = t32(&[1.0, 2.0, 3.0], &[3]).requires_grad();
    // loss = Σ x·x + x, so dloss/dx = 2x + 1
    let loss = x.mul(&x).unwrap().add(&x).unwrap().sum_all().unwrap();
    assert_eq!(loss.to_scalar().unwrap(), (1.0 + 1.0) + (4.0 + 2.0) + (9.0 + 3.0));
    loss.backward().unwrap();
    assert_eq!(grad(&x), vec![3.0, 5.0, 7.0]);
}

#[test]
fn the_same_tensor_as_both_operands_of_add() {
    let x = t32(&[1.0, 2.0], &[2]).requires_grad();
    x.add(&x).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(grad(&x), vec![2.0, 2.0]);
}

#[test]
fn diamond_graph_sums_both_paths() {
    let x = t32(&[1.0, 2.0], &[2]).requires_grad();
    let a = x.mul_scalar(2.0).unwrap(); //      a = 2x
    let b = a.mul_scalar(3.0).unwrap(); //      b = 3a
    let c = a.sqr().unwrap(); //                c = a²
    let loss = b.add(&c).unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    // dloss/da = 3 + 2a, da/dx = 2, so dloss/dx = 6 + 4a = 6 + 8x
    assert_eq!(grad(&x), vec![14.0, 22.0]);
    assert!(a.grad().is_none() && b.grad().is_none() && c.grad().is_none());
}

#[test]
fn deep_diamond_with_a_skip_connection() {
    // h1 = x·w, h2 = h1 + h1·h1, out = h2·x + h1 (x also reaches the root directly)
    let x = t64(&[0.5, -1.0, 2.0], &[3]).requires_grad();
    let w = t64(&[2.0, 3.0, -1.0], &[3]).requires_grad();
    let h1 = x.mul(&w).unwrap();
    let h2 = h1.add(&h1.mul(&h1).unwrap()).unwrap();
    let out = h2.mul(&x).unwrap().add(&h1).unwrap().sum_all().unwrap();
    out.backward().unwrap();
    let (xs, ws) = ([0.5, -1.0, 2.0], [2.0, 3.0, -1.0]);
    let mut want_x = vec![];
    let mut want_w = vec![];
    for i in 0..3 {
        let (xi, wi) = (xs[i], ws[i]);
        let h1 = xi * wi;
        let h2 = h1 + h1 * h1;
        // dout/dh1 = x·(1 + 2h1) + 1; dout/dx = dout/dh1·w + h2; dout/dw = dout/dh1·x
        let dh1 = xi * (1.0 + 2.0 * h1) + 1.0;
        want_x.push(dh1 * wi + h2);
        want_w.push(dh1 * xi);
    }
    assert_close(&grad(&x), &want_x, 1e-12);
    assert_close(&grad(&w), &want_w, 1e-12);
}

// ----- no_grad -----------------------------------------------------------------------------

#[test]
fn no_grad_guard_records_nothing_and_restores_the_mode() {
    let x = t32(&[1.0, 2.0], &[2]).requires_grad();
    assert!(is_grad_enabled());
    let y = {
        let _guard = no_grad();
        assert!(!is_grad_enabled());
        let y = x.mul_scalar(3.0).unwrap().sum_all().unwrap();
        assert!(!y.requires_grad_flag(), "results under no_grad do not require grad");
        assert!(y.is_leaf(), "nothing is recorded under no_grad");
        assert_eq!(y.backward(), Err(Error::BackwardWithoutGraph));
        y
    };
    assert!(is_grad_enabled(), "mode restored when the guard drops");
    assert_eq!(y.to_scalar().unwrap(), 9.0);
    assert!(x.grad().is_none());

    // Recording resumes after the guard.
    let z = x.mul_scalar(3.0).unwrap().sum_all().unwrap();
    assert!(z.requires_grad_flag());
    z.backward().unwrap();
    assert_eq!(grad(&x), vec![3.0, 3.0]);
}

#[test]
fn nested_no_grad_guards_restore_their_previous_mode() {
    assert!(is_grad_enabled());
    {
        let _outer = no_grad();
        assert!(!is_grad_enabled());
        {
            let _inner = no_grad();
            assert!(!is_grad_enabled());
        }
        assert!(!is_grad_enabled(), "dropping the inner guard keeps the outer scope's no-grad mode");
        let inside = with_no_grad(is_grad_enabled);
        assert!(!inside);
        assert!(!is_grad_enabled(), "with_no_grad inside no_grad leaves grad disabled");
    }
    assert!(is_grad_enabled(), "dropping the outer guard re-enables grad");
}

#[test]
fn with_no_grad_returns_the_closure_value_and_restores_the_mode() {
    let x = t32(&[1.0, 2.0, 3.0], &[3]).requires_grad();
    let (y, was_enabled) = with_no_grad(|| (x.sqr().unwrap(), is_grad_enabled()));
    assert!(!was_enabled);
    assert!(is_grad_enabled());
    assert!(!y.requires_grad_flag());
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![1.0, 4.0, 9.0]);

    // Nested closures.
    let depth = with_no_grad(|| with_no_grad(|| !is_grad_enabled()) && !is_grad_enabled());
    assert!(depth);
    assert!(is_grad_enabled());

    // Err results propagate unchanged.
    let r = with_no_grad(|| x.reshape(&[4]));
    assert!(matches!(r, Err(Error::ShapeMismatch { op: "reshape", .. })));
    assert!(is_grad_enabled());
}

#[test]
fn no_grad_result_mixed_into_a_recorded_graph_is_a_constant() {
    let x = t32(&[1.0, 2.0], &[2]).requires_grad();
    let frozen = with_no_grad(|| x.mul_scalar(10.0).unwrap());
    // loss = Σ x · frozen, frozen treated as a constant (10x, not differentiated)
    x.mul(&frozen).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(grad(&x), vec![10.0, 20.0]);
}

// ----- detach ------------------------------------------------------------------------------

#[test]
fn detach_cuts_the_graph() {
    let x = t32(&[1.0, 2.0, 3.0], &[3]).requires_grad();
    let y = x.mul_scalar(2.0).unwrap();
    let d = y.detach();
    assert!(!d.requires_grad_flag());
    assert!(d.is_leaf());
    assert!(d.shares_storage_with(&y), "detach shares the data");
    assert_ne!(d.id(), y.id());
    assert_eq!(d.to_vec::<f32>().unwrap(), vec![2.0, 4.0, 6.0]);
    // loss = Σ x·d with d = 2x held constant: dloss/dx = d = 2x (not 4x)
    x.mul(&d).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(grad(&x), vec![2.0, 4.0, 6.0]);
    assert!(d.grad().is_none());
}

#[test]
fn detached_only_path_cannot_backward() {
    let x = t32(&[1.0, 2.0], &[2]).requires_grad();
    let loss = x.sum_all().unwrap().detach();
    assert_eq!(loss.backward(), Err(Error::BackwardWithoutGraph));
    assert!(x.grad().is_none());
}

// ----- backward errors and graph freeing ---------------------------------------------------

#[test]
fn backward_from_a_non_scalar_names_its_shape() {
    let x = arange(&[2, 3]).requires_grad();
    let y = x.mul_scalar(2.0).unwrap();
    let err = y.backward().unwrap_err();
    assert_eq!(err, Error::BackwardNonScalar { shape: vec![2, 3] });
    assert!(err.to_string().contains("[2, 3]"), "{err}");
    assert!(err.to_string().contains("scalar"), "{err}");
    assert!(x.grad().is_none());
    // The graph is intact: reducing and going backward works.
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grad(&x), vec![2.0; 6]);
}

#[test]
fn backward_from_an_empty_tensor_is_non_scalar() {
    let x = Tensor::zeros(&[0], DType::F32).unwrap().requires_grad();
    assert_eq!(x.backward(), Err(Error::BackwardNonScalar { shape: vec![0] }));
}

#[test]
fn backward_from_a_one_element_non_rank0_tensor_is_fine() {
    let x = t32(&[2.0], &[1, 1]).requires_grad();
    let y = x.sqr().unwrap(); // shape [1, 1]
    y.backward().unwrap();
    assert_eq!(grad(&x), vec![4.0]);
    assert_eq!(x.grad().unwrap().shape(), &[1, 1]);
}

#[test]
fn backward_without_grad_is_an_error() {
    let x = t32(&[1.0], &[]);
    let err = x.backward().unwrap_err();
    assert_eq!(err, Error::BackwardWithoutGraph);
    assert!(err.to_string().contains("does not require grad"), "{err}");
}

#[test]
fn second_backward_through_a_freed_graph_is_an_error_and_a_new_forward_works() {
    let x = t32(&[1.0, 2.0], &[2]).requires_grad();
    let loss = x.sqr().unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    assert_eq!(grad(&x), vec![2.0, 4.0]);

    let err = loss.backward().unwrap_err();
    assert_eq!(err, Error::GraphFreed);
    assert!(err.to_string().contains("freed"), "{err}");
    assert_eq!(grad(&x), vec![2.0, 4.0], "the failed backward changed nothing");
    // The tensor's value is still readable.
    assert_eq!(loss.to_scalar().unwrap(), 5.0);

    // A fresh forward builds a fresh graph.
    let loss2 = x.sqr().unwrap().sum_all().unwrap();
    loss2.backward().unwrap();
    assert_eq!(grad(&x), vec![4.0, 8.0]);
}

#[test]
fn backward_from_an_intermediate_of_a_freed_graph_is_an_error() {
    let x = t32(&[1.0, 2.0], &[2]).requires_grad();
    let y = x.sum_all().unwrap();
    let z = y.mul_scalar(3.0).unwrap();
    z.backward().unwrap();
    assert_eq!(grad(&x), vec![3.0, 3.0]);
    assert_eq!(y.backward(), Err(Error::GraphFreed));
    assert_eq!(grad(&x), vec![3.0, 3.0]);
}

#[test]
fn backward_through_a_shared_intermediate_freed_by_an_earlier_backward() {
    let x = t32(&[1.0, 2.0], &[2]).requires_grad();
    let y = x.mul_scalar(2.0).unwrap();
    y.sum_all().unwrap().backward().unwrap(); // frees y's node
    assert_eq!(grad(&x), vec![2.0, 2.0]);

    // A new root that reuses y: its path to x was freed.
    let loss2 = y.mul_scalar(3.0).unwrap().sum_all().unwrap();
    let r = loss2.backward();
    assert!(y.grad().is_none(), "an intermediate must never store a gradient, got {:?}", y.grad());
    match r {
        Err(e) => assert_eq!(e, Error::GraphFreed),
        // Or, if the engine chose to keep enough of the graph, x must get the full gradient.
        Ok(()) => assert_eq!(grad(&x), vec![8.0, 8.0]),
    }
}

// ----- gradients through views ---------------------------------------------------------------

#[test]
fn reshape_gradient() {
    let x = arange(&[2, 3]).requires_grad();
    let y = x.reshape(&[3, 2]).unwrap();
    assert!(y.shares_storage_with(&x));
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    weighted_sum(&y, &weights(&[3, 2])).backward().unwrap();
    assert_eq!(x.grad().unwrap().shape(), &[2, 3]);
    assert_eq!(grad(&x), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

#[test]
fn reshape_of_a_non_contiguous_view_gradient() {
    // x.t() is [3, 2] non-contiguous; reshaping it to [6] copies in the transposed order.
    let x = arange(&[2, 3]).requires_grad();
    let y = x.t().unwrap().reshape(&[6]).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    weighted_sum(&y, &weights(&[6])).backward().unwrap();
    // y[k] = x[k % 2][k / 2], so grad x[i][j] = w[2j + i]
    assert_eq!(grad(&x), vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
}

#[test]
fn transpose_and_t_gradients() {
    let w = weights(&[3, 2]); // [[1,2],[3,4],[5,6]]
    for which in 0..3 {
        let x = arange(&[2, 3]).requires_grad();
        let y = match which {
            0 => x.t().unwrap(),
            1 => x.transpose(0, 1).unwrap(),
            _ => x.transpose(-1, -2).unwrap(),
        };
        assert_eq!(y.shape(), &[3, 2]);
        assert!(!y.is_contiguous() && y.shares_storage_with(&x));
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        weighted_sum(&y, &w).backward().unwrap();
        // grad x[i][j] = w[j][i]
        assert_eq!(grad(&x), vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0], "variant {which}");
    }
}

#[test]
fn permute_gradient() {
    let x = arange(&[2, 3, 4]).requires_grad();
    let y = x.permute(&[2, 0, 1]).unwrap(); // y[a, b, c] = x[b, c, a]
    assert_eq!(y.shape(), &[4, 2, 3]);
    let yv = y.to_vec::<f32>().unwrap();
    let mut want_y = vec![];
    let mut want_g = vec![0.0; 24];
    for a in 0..4 {
        for b in 0..2 {
            for c in 0..3 {
                want_y.push((b * 12 + c * 4 + a) as f32);
                // weight of y[a, b, c] is its flat index + 1
                want_g[b * 12 + c * 4 + a] = (a * 6 + b * 3 + c + 1) as f64;
            }
        }
    }
    assert_eq!(yv, want_y);
    weighted_sum(&y, &weights(&[4, 2, 3])).backward().unwrap();
    assert_eq!(grad(&x), want_g);
}

#[test]
fn narrow_gradient_is_zero_outside_the_range() {
    let x = arange(&[3, 4]).requires_grad();
    let y = x.narrow(1, 1, 2).unwrap();
    assert_eq!(y.shape(), &[3, 2]);
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 5.0, 6.0, 9.0, 10.0]);
    weighted_sum(&y, &weights(&[3, 2])).backward().unwrap();
    #[rustfmt::skip]
    let want = vec![
        0.0, 1.0, 2.0, 0.0,
        0.0, 3.0, 4.0, 0.0,
        0.0, 5.0, 6.0, 0.0,
    ];
    assert_eq!(grad(&x), want);

    // Along axis 0 (negative index), touching the end.
    let x = arange(&[3, 2]).requires_grad();
    let y = x.narrow(-2, 1, 2).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![2.0, 3.0, 4.0, 5.0]);
    weighted_sum(&y, &weights(&[2, 2])).backward().unwrap();
    assert_eq!(grad(&x), vec![0.0, 0.0, 1.0, 2.0, 3.0, 4.0]);

    // Starting at 0.
    let x = arange(&[4]).requires_grad();
    weighted_sum(&x.narrow(0, 0, 2).unwrap(), &weights(&[2])).backward().unwrap();
    assert_eq!(grad(&x), vec![1.0, 2.0, 0.0, 0.0]);
}

#[test]
fn split_gradient_routes_each_piece() {
    let x = arange(&[2, 5]).requires_grad();
    let parts = x.split(1, &[2, 3]).unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].to_vec::<f32>().unwrap(), vec![0.0, 1.0, 5.0, 6.0]);
    assert_eq!(parts[1].to_vec::<f32>().unwrap(), vec![2.0, 3.0, 4.0, 7.0, 8.0, 9.0]);
    assert!(parts.iter().all(|p| p.shares_storage_with(&x)));
    // loss = Σ p0 · [[1,2],[3,4]] + 10·Σ p1
    let loss = weighted_sum(&parts[0], &weights(&[2, 2]))
        .add(&parts[1].sum_all().unwrap().mul_scalar(10.0).unwrap())
        .unwrap();
    loss.backward().unwrap();
    assert_eq!(grad(&x), vec![1.0, 2.0, 10.0, 10.0, 10.0, 3.0, 4.0, 10.0, 10.0, 10.0]);

    // Only one piece used: the other positions get zero.
    let x = arange(&[6]).requires_grad();
    let parts = x.split(0, &[1, 2, 3]).unwrap();
    weighted_sum(&parts[1], &weights(&[2])).backward().unwrap();
    assert_eq!(grad(&x), vec![0.0, 1.0, 2.0, 0.0, 0.0, 0.0]);
}

#[test]
fn concat_gradient_splits_back() {
    let a = t32(&[1.0, 2.0], &[2, 1]).requires_grad();
    let b = t32(&[3.0, 4.0, 5.0, 6.0], &[2, 2]).requires_grad();
    let c = Tensor::concat(&[a.clone(), b.clone()], 1).unwrap();
    assert_eq!(c.shape(), &[2, 3]);
    assert_eq!(c.to_vec::<f32>().unwrap(), vec![1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
    weighted_sum(&c, &weights(&[2, 3])).backward().unwrap();
    assert_eq!(grad(&a), vec![1.0, 4.0]);
    assert_eq!(grad(&b), vec![2.0, 3.0, 5.0, 6.0]);
    assert_eq!(a.grad().unwrap().shape(), &[2, 1]);

    // Axis 0, the same tensor twice, and a non-requiring piece in between.
    let x = t32(&[1.0, 2.0], &[1, 2]).requires_grad();
    let k = t32(&[7.0, 8.0], &[1, 2]);
    let c = Tensor::concat(&[x.clone(), k.clone(), x.clone()], -2).unwrap();
    assert_eq!(c.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 7.0, 8.0, 1.0, 2.0]);
    weighted_sum(&c, &weights(&[3, 2])).backward().unwrap();
    assert_eq!(grad(&x), vec![1.0 + 5.0, 2.0 + 6.0]);
    assert!(k.grad().is_none());
}

#[test]
fn expand_gradient_sums_over_broadcast_axes() {
    let x = t32(&[1.0, 2.0, 3.0], &[3, 1]).requires_grad();
    let y = x.expand(&[2, 3, 4]).unwrap();
    assert_eq!(y.shape(), &[2, 3, 4]);
    assert!(y.shares_storage_with(&x));
    let yv = y.to_vec::<f32>().unwrap();
    for a in 0..2 {
        for j in 0..3 {
            for k in 0..4 {
                assert_eq!(yv[a * 12 + j * 4 + k], (j + 1) as f32);
            }
        }
    }
    weighted_sum(&y, &weights(&[2, 3, 4])).backward().unwrap();
    // grad x[j] = Σ_{a,k} w[a, j, k] with w = flat index + 1
    let want: Vec<f64> = (0..3)
        .map(|j| (0..2).flat_map(|a| (0..4).map(move |k| (a * 12 + j * 4 + k + 1) as f64)).sum())
        .collect();
    assert_eq!(grad(&x), want);
    assert_eq!(x.grad().unwrap().shape(), &[3, 1]);
}

#[test]
fn unsqueeze_and_squeeze_gradients() {
    let x = t32(&[1.0, 2.0, 3.0], &[3]).requires_grad();
    let u0 = x.unsqueeze(0).unwrap();
    assert_eq!(u0.shape(), &[1, 3]);
    let u1 = x.unsqueeze(1).unwrap();
    assert_eq!(u1.shape(), &[3, 1]);
    let s = u0.squeeze(0).unwrap();
    assert_eq!(s.shape(), &[3]);
    assert!(u0.shares_storage_with(&x) && u1.shares_storage_with(&x) && s.shares_storage_with(&x));
    // loss = Σ u0·[1,2,3] + Σ u1·[10,20,30] + Σ s·[100,100,100]
    let l0 = weighted_sum(&u0, &weights(&[1, 3]));
    let l1 = weighted_sum(&u1, &weights(&[3, 1]).mul_scalar(10.0).unwrap());
    let l2 = s.sum_all().unwrap().mul_scalar(100.0).unwrap();
    l0.add(&l1).unwrap().add(&l2).unwrap().backward().unwrap();
    assert_eq!(grad(&x), vec![111.0, 122.0, 133.0]);
}

#[test]
fn contiguous_gradient() {
    let x = arange(&[2, 3]).requires_grad();
    let xt = x.t().unwrap();
    let c = xt.contiguous().unwrap();
    assert!(c.is_contiguous());
    assert!(!c.shares_storage_with(&x), "contiguous of a non-contiguous view copies");
    assert_eq!(c.to_vec::<f32>().unwrap(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    weighted_sum(&c, &weights(&[3, 2])).backward().unwrap();
    assert_eq!(grad(&x), vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);

    // contiguous of a contiguous tensor is the tensor itself
    let y = arange(&[2, 2]);
    let yc = y.contiguous().unwrap();
    assert!(yc.shares_storage_with(&y));
}

#[test]
fn chained_views_gradient() {
    // narrow → transpose → reshape → expand, then a weighted sum.
    let x = arange(&[3, 4]).requires_grad();
    let y = x.narrow(0, 1, 2).unwrap(); // rows 1..3: [[4,5,6,7],[8,9,10,11]]
    let y = y.t().unwrap(); // [4, 2]
    let y = y.reshape(&[8]).unwrap(); // [4, 8, 5, 9, 6, 10, 7, 11]
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![4.0, 8.0, 5.0, 9.0, 6.0, 10.0, 7.0, 11.0]);
    let y = y.unsqueeze(0).unwrap().expand(&[2, 8]).unwrap();
    weighted_sum(&y, &weights(&[2, 8])).backward().unwrap();
    // y2[r][k] = row-major element k of the transposed narrow; weight w[r][k] = 8r + k + 1;
    // summed over r: 2k + 10. Element k maps back to x[1 + k % 2][k / 2].
    let mut want = vec![0.0; 12];
    for k in 0..8 {
        want[(1 + k % 2) * 4 + k / 2] = (2 * k + 10) as f64;
    }
    assert_eq!(grad(&x), want);
}

#[test]
fn matmul_with_a_transposed_operand_matches_a_materialised_transpose() {
    // x is [3, 2]; x.t() is a strided [2, 3] view.
    let xv = [1.0f32, -2.0, 0.5, 3.0, -1.5, 2.0];
    let wv = [1.0f32, 2.0, 0.0, -1.0, 0.5, 1.0, 3.0, 2.0, -2.0, 1.0, 1.0, 0.5];
    let run = |materialise: bool| {
        let x = t32(&xv, &[3, 2]).requires_grad();
        let w = t32(&wv, &[3, 4]).requires_grad();
        let xt = if materialise { x.t().unwrap().contiguous().unwrap() } else { x.t().unwrap() };
        assert_eq!(xt.is_contiguous(), materialise);
        let y = xt.matmul(&w).unwrap(); // [2, 4]
        let yv = y.to_vec::<f32>().unwrap();
        weighted_sum(&y, &weights(&[2, 4])).backward().unwrap();
        (yv, grad(&x), grad(&w))
    };
    let (y_view, gx_view, gw_view) = run(false);
    let (y_mat, gx_mat, gw_mat) = run(true);
    assert_eq!(y_view, y_mat);
    assert_eq!(gx_view, gx_mat);
    assert_eq!(gw_view, gw_mat);

    // Independent reference: y[i][j] = Σ_k x[k][i] w[k][j]; with G = weights,
    // dL/dx[k][i] = Σ_j G[i][j] w[k][j], dL/dw[k][j] = Σ_i x[k][i] G[i][j].
    let g = |i: usize, j: usize| (i * 4 + j + 1) as f64;
    let x = |k: usize, i: usize| xv[k * 2 + i] as f64;
    let w = |k: usize, j: usize| wv[k * 4 + j] as f64;
    let want_y: Vec<f32> = (0..2)
        .flat_map(|i| (0..4).map(move |j| (0..3).map(|k| x(k, i) * w(k, j)).sum::<f64>() as f32))
        .collect();
    let want_gx: Vec<f64> =
        (0..3).flat_map(|k| (0..2).map(move |i| (0..4).map(|j| g(i, j) * w(k, j)).sum())).collect();
    let want_gw: Vec<f64> =
        (0..3).flat_map(|k| (0..4).map(move |j| (0..2).map(|i| x(k, i) * g(i, j)).sum())).collect();
    assert_eq!(y_view, want_y);
    assert_close(&gx_view, &want_gx, 1e-6);
    assert_close(&gw_view, &want_gw, 1e-6);
}

#[test]
fn matmul_with_a_transposed_rhs_matches_a_materialised_transpose() {
    let av = [1.0f64, 2.0, -1.0, 0.5, 3.0, -2.0];
    let bv = [2.0f64, -1.0, 1.0, 0.0, 4.0, 1.5, -3.0, 2.0, 0.25, 1.0, 1.0, -1.0];
    let run = |materialise: bool| {
        let a = t64(&av, &[2, 3]).requires_grad();
        let b = t64(&bv, &[4, 3]).requires_grad();
        let bt = if materialise { b.t().unwrap().contiguous().unwrap() } else { b.t().unwrap() };
        let y = a.matmul(&bt).unwrap(); // [2, 4]
        let yv = y.to_vec_f64();
        weighted_sum(&y, &t64(&[1.0, -1.0, 2.0, 0.5, 3.0, 1.0, -2.0, 1.5], &[2, 4])).backward().unwrap();
        (yv, grad(&a), grad(&b))
    };
    let (y1, ga1, gb1) = run(false);
    let (y2, ga2, gb2) = run(true);
    assert_close(&y1, &y2, 1e-14);
    assert_close(&ga1, &ga2, 1e-14);
    assert_close(&gb1, &gb2, 1e-14);
    // y[i][j] = Σ_k a[i][k] b[j][k]
    let want_y: Vec<f64> = (0..2)
        .flat_map(|i| (0..4).map(move |j| (0..3).map(|k| av[i * 3 + k] * bv[j * 3 + k]).sum()))
        .collect();
    assert_close(&y1, &want_y, 1e-14);
}

#[test]
fn batched_matmul_gradient_against_a_loop() {
    // a: [2, 2, 3] (batched), b: [3, 2] (shared): exercises the folded-batch path and dB's fold.
    let a = arange(&[2, 2, 3]).requires_grad();
    let bv = [1.0f32, -1.0, 2.0, 0.5, -0.5, 3.0];
    let b = t32(&bv, &[3, 2]).requires_grad();
    let y = a.matmul(&b).unwrap();
    assert_eq!(y.shape(), &[2, 2, 2]);
    weighted_sum(&y, &weights(&[2, 2, 2])).backward().unwrap();
    let av: Vec<f64> = (0..12).map(|i| i as f64).collect();
    let g = |n: usize, i: usize, j: usize| (n * 4 + i * 2 + j + 1) as f64;
    let mut ga = vec![0.0; 12];
    let mut gb = vec![0.0; 6];
    for n in 0..2 {
        for i in 0..2 {
            for j in 0..2 {
                for k in 0..3 {
                    ga[n * 6 + i * 3 + k] += g(n, i, j) * bv[k * 2 + j] as f64;
                    gb[k * 2 + j] += av[n * 6 + i * 3 + k] * g(n, i, j);
                }
            }
        }
    }
    assert_close(&grad(&a), &ga, 1e-6);
    assert_close(&grad(&b), &gb, 1e-6);
}

#[test]
fn embedding_gradient_scatter_adds_repeated_ids() {
    let table = arange(&[3, 2]).requires_grad();
    let y = table.embedding(&[0, 2, 0, 0], &[2, 2]).unwrap();
    assert_eq!(y.shape(), &[2, 2, 2]);
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0, 1.0, 4.0, 5.0, 0.0, 1.0, 0.0, 1.0]);
    weighted_sum(&y, &weights(&[2, 2, 2])).backward().unwrap();
    // row 0 is picked at positions 0, 2, 3; row 2 at position 1; row 1 never.
    assert_eq!(grad(&table), vec![1.0 + 5.0 + 7.0, 2.0 + 6.0 + 8.0, 0.0, 0.0, 3.0, 4.0]);
}

// ----- broadcasting --------------------------------------------------------------------------

#[test]
fn add_broadcast_gradients_reduce_to_each_operand() {
    let a = arange(&[3, 1, 4]).requires_grad();
    let b = arange(&[2, 4]).mul_scalar(10.0).unwrap().requires_grad();
    let y = a.add(&b).unwrap();
    assert_eq!(y.shape(), &[3, 2, 4]);
    let yv = y.to_vec::<f32>().unwrap();
    for i in 0..3 {
        for j in 0..2 {
            for k in 0..4 {
                assert_eq!(yv[i * 8 + j * 4 + k], (i * 4 + k) as f32 + 10.0 * (j * 4 + k) as f32);
            }
        }
    }
    weighted_sum(&y, &weights(&[3, 2, 4])).backward().unwrap();
    let w = |i: usize, j: usize, k: usize| (i * 8 + j * 4 + k + 1) as f64;
    // grad a[i, 0, k] = Σ_j w[i, j, k]; grad b[j, k] = Σ_i w[i, j, k]
    let want_a: Vec<f64> =
        (0..3).flat_map(|i| (0..4).map(move |k| (0..2).map(|j| w(i, j, k)).sum())).collect();
    let want_b: Vec<f64> =
        (0..2).flat_map(|j| (0..4).map(move |k| (0..3).map(|i| w(i, j, k)).sum())).collect();
    assert_eq!(a.grad().unwrap().shape(), &[3, 1, 4]);
    assert_eq!(b.grad().unwrap().shape(), &[2, 4]);
    assert_eq!(grad(&a), want_a);
    assert_eq!(grad(&b), want_b);

    // With an unweighted sum: every a element is used twice, every b element three times.
    a.zero_grad();
    b.zero_grad();
    a.add(&b).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(grad(&a), vec![2.0; 12]);
    assert_eq!(grad(&b), vec![3.0; 8]);
}

#[test]
fn mul_broadcast_gradients_reduce_to_each_operand() {
    let av: Vec<f64> = (0..12).map(|i| (i as f64) * 0.5 - 2.0).collect();
    let bv: Vec<f64> = (0..8).map(|i| 1.0 + i as f64).collect();
    let a = t64(&av, &[3, 1, 4]).requires_grad();
    let b = t64(&bv, &[2, 4]).requires_grad();
    let y = a.mul(&b).unwrap();
    assert_eq!(y.shape(), &[3, 2, 4]);
    let wv: Vec<f64> = (0..24).map(|i| ((i * 7) % 5) as f64 - 2.0).collect();
    let w = t64(&wv, &[3, 2, 4]);
    weighted_sum(&y, &w).backward().unwrap();
    let wf = |i: usize, j: usize, k: usize| wv[i * 8 + j * 4 + k];
    let (av, bv) = (&av, &bv);
    // grad a[i, 0, k] = Σ_j w[i,j,k]·b[j,k]; grad b[j, k] = Σ_i w[i,j,k]·a[i,0,k]
    let want_a: Vec<f64> = (0..3)
        .flat_map(|i| (0..4).map(move |k| (0..2).map(|j| wf(i, j, k) * bv[j * 4 + k]).sum::<f64>()))
        .collect();
    let want_b: Vec<f64> = (0..2)
        .flat_map(|j| (0..4).map(move |k| (0..3).map(|i| wf(i, j, k) * av[i * 4 + k]).sum::<f64>()))
        .collect();
    assert_close(&grad(&a), &want_a, 1e-14);
    assert_close(&grad(&b), &want_b, 1e-14);
}

#[test]
fn scalar_and_rank_extending_broadcast_gradients() {
    // A rank-0 operand broadcast against a matrix collects the full sum.
    let s = Tensor::scalar(2.0, DType::F32).requires_grad();
    let m = arange(&[2, 3]).requires_grad();
    m.mul(&s).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(grad(&s), vec![15.0]); // Σ m
    assert_eq!(s.grad().unwrap().shape(), &[] as &[usize]);
    assert_eq!(grad(&m), vec![2.0; 6]);

    // sub with a row vector: d/db Σ (a − b) = −rows
    let a = arange(&[4, 3]).requires_grad();
    let b = t32(&[1.0, 2.0, 3.0], &[3]).requires_grad();
    a.sub(&b).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(grad(&b), vec![-4.0; 3]);
    assert_eq!(grad(&a), vec![1.0; 12]);
}

// ----- dtypes --------------------------------------------------------------------------------

#[test]
fn bf16_leaf_gets_bf16_gradients() {
    let v: Vec<bf16> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|&x| bf16::from_f32(x)).collect();
    let x = Tensor::from_vec(v, &[2, 2]).unwrap().requires_grad();
    let loss = x.matmul(&x).unwrap().sum_all().unwrap();
    assert_eq!(loss.dtype(), DType::BF16);
    assert_eq!(loss.to_scalar().unwrap(), 7.0 + 10.0 + 15.0 + 22.0);
    loss.backward().unwrap();
    let g = x.grad().unwrap();
    assert_eq!(g.dtype(), DType::BF16);
    // d/dX Σ X·X = 1·Xᵀ + Xᵀ·1 (all-ones 2×2)
    let want: Vec<bf16> = [7.0f32, 11.0, 9.0, 13.0].iter().map(|&x| bf16::from_f32(x)).collect();
    assert_eq!(g.to_vec::<bf16>().unwrap(), want);
    assert!(matches!(
        g.to_vec::<f32>(),
        Err(Error::DTypeAccess { requested: DType::F32, actual: DType::BF16 })
    ));
}

#[test]
fn to_dtype_backward_casts_the_gradient_back() {
    // f32 leaf → bf16 compute: the leaf's gradient is f32.
    let x = t32(&[1.5, -2.0, 3.0], &[3]).requires_grad();
    let y = x.to_dtype(DType::BF16).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    assert!(y.requires_grad_flag() && !y.is_leaf());
    let loss = y.sqr().unwrap().sum_all().unwrap();
    assert_eq!(loss.dtype(), DType::BF16);
    loss.backward().unwrap();
    let g = x.grad().unwrap();
    assert_eq!(g.dtype(), DType::F32);
    assert_eq!(g.to_vec::<f32>().unwrap(), vec![3.0, -4.0, 6.0]);

    // bf16 leaf → f32 compute: the leaf's gradient is bf16.
    let v: Vec<bf16> = [1.0f32, 2.0].iter().map(|&x| bf16::from_f32(x)).collect();
    let x = Tensor::from_vec(v, &[2]).unwrap().requires_grad();
    x.to_dtype(DType::F32).unwrap().mul_scalar(0.5).unwrap().sum_all().unwrap().backward().unwrap();
    let g = x.grad().unwrap();
    assert_eq!(g.dtype(), DType::BF16);
    assert_eq!(g.to_vec::<bf16>().unwrap(), vec![bf16::from_f32(0.5); 2]);

    // f64 → f32 → f64 round trip: gradients land in f64.
    let x = t64(&[0.25, 4.0], &[2]).requires_grad();
    x.to_dtype(DType::F32)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .mul_scalar(3.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(x.grad().unwrap().dtype(), DType::F64);
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![3.0, 3.0]);

    // to_dtype to the same dtype is the tensor itself (no node).
    let same = x.to_dtype(DType::F64).unwrap();
    assert_eq!(same.id(), x.id());
}

#[test]
fn f16_gradients_are_f16() {
    let x = Tensor::from_vec(vec![half::f16::from_f32(0.5), half::f16::from_f32(-1.0)], &[2])
        .unwrap()
        .requires_grad();
    x.mul(&x).unwrap().sum_all().unwrap().backward().unwrap();
    let g = x.grad().unwrap();
    assert_eq!(g.dtype(), DType::F16);
    assert_eq!(g.to_vec_f64(), vec![1.0, -2.0]);
}

// ----- clone and storage sharing -----------------------------------------------------------

#[test]
fn clones_share_everything() {
    let x = arange(&[2, 3]).requires_grad();
    let c = x.clone();
    assert!(c.shares_storage_with(&x));
    assert_eq!(c.id(), x.id(), "a clone is the same tensor");
    // Gradients land in the shared tensor: visible through either handle.
    c.sum_all().unwrap().backward().unwrap();
    assert_eq!(grad(&x), vec![1.0; 6]);
    x.zero_grad();
    assert!(c.grad().is_none());
}

#[test]
fn views_share_storage_copies_do_not() {
    let x = arange(&[2, 3]);
    let views = [
        x.reshape(&[3, 2]).unwrap(),
        x.t().unwrap(),
        x.permute(&[1, 0]).unwrap(),
        x.narrow(1, 1, 2).unwrap(),
        x.split(0, &[1, 1]).unwrap()[1].clone(),
        x.unsqueeze(0).unwrap(),
        x.unsqueeze(0).unwrap().squeeze(0).unwrap(),
        x.reshape(&[1, 2, 3]).unwrap().expand(&[4, 2, 3]).unwrap(),
        x.detach(),
        x.clone().requires_grad(),
        x.contiguous().unwrap(),
    ];
    for (i, v) in views.iter().enumerate() {
        assert!(v.shares_storage_with(&x), "view {i} ({v:?}) should share storage");
        if i != 10 {
            assert_ne!(v.id(), x.id(), "view {i} is a distinct tensor");
        }
    }
    let copies = [
        Tensor::concat(&[x.clone(), x.clone()], 0).unwrap(),
        Tensor::concat(std::slice::from_ref(&x), 0).unwrap(),
        x.t().unwrap().contiguous().unwrap(),
        x.t().unwrap().reshape(&[6]).unwrap(),
        x.to_dtype(DType::F64).unwrap(),
        x.mul_scalar(1.0).unwrap(),
    ];
    for (i, c) in copies.iter().enumerate() {
        assert!(!c.shares_storage_with(&x), "copy {i} ({c:?}) should not share storage");
    }
    // Narrowed views see the right elements of the shared buffer.
    assert_eq!(views[3].to_vec::<f32>().unwrap(), vec![1.0, 2.0, 4.0, 5.0]);
    assert_eq!(views[4].to_vec::<f32>().unwrap(), vec![3.0, 4.0, 5.0]);
}

#[test]
fn requires_grad_makes_a_separate_leaf_over_the_same_data() {
    let x = arange(&[3]);
    let y = x.mul_scalar(2.0).unwrap().requires_grad(); // drops any history
    assert!(y.is_leaf() && y.requires_grad_flag());
    let p = x.clone().requires_grad();
    assert!(p.shares_storage_with(&x));
    assert!(!x.requires_grad_flag(), "the original handle is unchanged");
    p.sum_all().unwrap().backward().unwrap();
    assert!(x.grad().is_none());
    assert_eq!(grad(&p), vec![1.0; 3]);
}

// ----- threads -------------------------------------------------------------------------------

const fn assert_send_sync<T: Send + Sync>() {}
const _: () = assert_send_sync::<Tensor>();
const _: () = assert_send_sync::<Error>();
const _: () = assert_send_sync::<polylm_engine::TensorId>();

#[test]
fn tensors_move_across_threads_and_gradients_are_shared() {
    let x = t32(&[1.0, 2.0, 3.0], &[3]).requires_grad();
    let x2 = x.clone();
    std::thread::spawn(move || {
        x2.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(grad(&x), vec![2.0, 4.0, 6.0]);

    // Build the graph on one thread, run backward on another.
    let loss = x.mul_scalar(5.0).unwrap().sum_all().unwrap();
    std::thread::spawn(move || loss.backward().unwrap()).join().unwrap();
    assert_eq!(grad(&x), vec![7.0, 9.0, 11.0]);

    // Shared by reference across scoped threads.
    let y = t32(&[4.0], &[]).requires_grad();
    let y = &y;
    let vals: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> =
            (0..4).map(|k| s.spawn(move || y.mul_scalar(k as f64).unwrap().to_scalar().unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(vals, vec![0.0, 4.0, 8.0, 12.0]);
}

#[test]
fn no_grad_is_per_thread() {
    let x = t32(&[1.0, 2.0], &[2]).requires_grad();
    {
        let _guard = no_grad();
        assert!(!is_grad_enabled());
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(is_grad_enabled(), "a new thread starts with grad enabled");
                let y = x.mul_scalar(2.0).unwrap();
                assert!(y.requires_grad_flag(), "the other thread still records");
            });
        });
        assert!(!x.mul_scalar(2.0).unwrap().requires_grad_flag());
    }
    // A guard on another thread does not affect this one.
    std::thread::scope(|s| {
        s.spawn(|| {
            let _guard = no_grad();
            assert!(!is_grad_enabled());
            assert!(!x.mul_scalar(2.0).unwrap().requires_grad_flag());
        });
        // (runs concurrently; this thread's mode is independent)
        assert!(is_grad_enabled());
    });
    assert!(is_grad_enabled());
    assert!(x.mul_scalar(2.0).unwrap().requires_grad_flag());
}

// ----- setting a gradient from outside the graph -------------------------------------------

#[test]
fn set_grad_replaces_the_gradient_and_later_passes_accumulate_onto_it() {
    let x = t32(&[0.5, -1.5, 2.25], &[3]).requires_grad();
    weighted_sum(&x, &weights(&[3])).backward().unwrap();
    assert_close(&grad(&x), &[1.0, 2.0, 3.0], 0.0);
    x.set_grad(&t32(&[-0.25, 4.0, 7.5], &[3])).unwrap();
    assert_close(&grad(&x), &[-0.25, 4.0, 7.5], 0.0);
    weighted_sum(&x, &weights(&[3])).backward().unwrap();
    assert_close(&grad(&x), &[0.75, 6.0, 10.5], 0.0);
    for bad in [t32(&[1.5, 2.5], &[2]), t64(&[1.5, 2.5, 3.5], &[3])] {
        let e = x.set_grad(&bad).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { op: "set_grad", .. }), "{e}");
    }
    assert_close(&grad(&x), &[0.75, 6.0, 10.5], 0.0);
}

// ----- backward from a gradient ---------------------------------------------------------------

#[test]
fn backward_from_a_gradient_equals_backward_through_a_weighted_sum() {
    let x = t32(&[0.5, -1.5, 2.25, 3.0, -0.75, 1.25], &[2, 3]).requires_grad();
    let w = t32(&[1.5, -0.5, 0.25], &[3]).requires_grad();
    let g = t32(&[0.3, -1.1, 0.7, 2.0, -0.4, 0.9], &[2, 3]);
    // y has a diamond and a broadcast, so both leaves gather gradients from several paths.
    let y = |x: &Tensor, w: &Tensor| x.mul(w).unwrap().add(&x.sqr().unwrap()).unwrap();
    weighted_sum(&y(&x, &w), &g).backward().unwrap();
    let (want_x, want_w) = (grad(&x), grad(&w));
    x.zero_grad();
    w.zero_grad();
    y(&x, &w).backward_from(&g).unwrap();
    assert_eq!(grad(&x), want_x);
    assert_eq!(grad(&w), want_w);
    // A gradient of another dtype is cast to the tensor's.
    x.zero_grad();
    w.zero_grad();
    y(&x, &w).backward_from(&g.to_dtype(DType::F64).unwrap()).unwrap();
    assert_close(&grad(&x), &want_x, 1e-6);
}

#[test]
fn backward_from_refuses_a_gradient_of_another_shape_or_no_graph() {
    let x = arange(&[2, 3]).requires_grad();
    let y = x.sqr().unwrap();
    let err = y.backward_from(&weights(&[3, 2])).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { op: "backward_from", .. }), "{err}");
    let err = arange(&[2, 3]).backward_from(&weights(&[2, 3])).unwrap_err();
    assert!(matches!(err, Error::BackwardWithoutGraph), "{err}");
    // Nothing was accumulated by the refused calls; a valid one still works.
    assert!(x.grad().is_none());
    y.backward_from(&weights(&[2, 3])).unwrap();
    assert_eq!(grad(&x), vec![0.0, 4.0, 12.0, 24.0, 40.0, 60.0]);
}

#[test]
fn a_tied_weight_used_transposed_gets_a_dense_gradient() {
    // As a tied LM head uses the embedding: logits = h · wᵀ, w [V, C] row-major.
    let (rows, c, v) = (5, 3, 4);
    let h = t32(&(0..rows * c).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(), &[rows, c]);
    let w = t32(&(0..v * c).map(|i| (i as f32 * 0.71).cos()).collect::<Vec<_>>(), &[v, c]).requires_grad();
    let g = t32(&(0..rows * v).map(|i| (i as f32 * 0.53).sin()).collect::<Vec<_>>(), &[rows, v]);
    h.matmul(&w.t().unwrap()).unwrap().backward_from(&g).unwrap();
    let dw = w.grad().expect("a gradient");
    assert!(dw.is_contiguous(), "the gradient comes back in w's own layout: {:?}", dw.layout());
    // dW = Gᵀ·H.
    let (hv, gv) = (h.to_vec_f64(), g.to_vec_f64());
    let want: Vec<f64> =
        (0..v * c).map(|i| (0..rows).map(|r| gv[r * v + i / c] * hv[r * c + i % c]).sum()).collect();
    assert_close(&dw.to_vec_f64(), &want, 1e-5);
    // A second pass adds into it, still dense.
    h.matmul(&w.t().unwrap()).unwrap().backward_from(&g).unwrap();
    let twice = w.grad().expect("a gradient");
    assert!(twice.is_contiguous());
    assert_close(&twice.to_vec_f64(), &want.iter().map(|x| 2.0 * x).collect::<Vec<_>>(), 1e-5);
}

#[test]
fn a_gradient_held_elsewhere_is_never_written_by_a_later_pass() {
    // Later passes accumulate into a weight's gradient in place only when nothing else holds
    // it; a gradient someone kept (a snapshot, a data-parallel bucket) keeps its values.
    let x = t32(&(0..12).map(|i| (i as f32 * 0.41).sin()).collect::<Vec<_>>(), &[2, 2, 3]);
    let w = t32(&(0..9).map(|i| (i as f32 * 0.29).cos()).collect::<Vec<_>>(), &[3, 3]).requires_grad();
    let b = t32(&[0.5, -0.25, 0.125], &[3]).requires_grad();
    let table = t32(&(0..12).map(|i| (i as f32 * 0.67).sin()).collect::<Vec<_>>(), &[4, 3]).requires_grad();
    // The table is used twice, as an embedding and as a transposed head.
    let pass = || {
        let y = x.linear(&w, &b).unwrap();
        let e = table.embedding(&[1, 3, 1, 0], &[2, 2]).unwrap();
        y.mul(&e).unwrap().matmul_t(&table).unwrap().sum_all().unwrap().backward().unwrap();
    };
    pass();
    let held: Vec<Tensor> = [&w, &b, &table].iter().map(|p| p.grad().expect("a gradient")).collect();
    let first: Vec<Vec<f64>> = held.iter().map(|g| g.to_vec_f64()).collect();
    pass();
    for ((p, g), v) in [&w, &b, &table].iter().zip(&held).zip(&first) {
        assert_eq!(&g.to_vec_f64(), v, "a held gradient keeps its values");
        let twice: Vec<f64> = v.iter().map(|x| 2.0 * x).collect();
        assert_close(&p.grad().unwrap().to_vec_f64(), &twice, 1e-6);
    }
}

#[test]
fn a_tied_weight_over_several_passes_matches_one_pass() {
    // An LM head's pattern: the embedding looked up once, then the head in row chunks, each
    // chunk back-propagated on its own with `matmul_t` (its gradient accumulated into the
    // embedding's), then the lookup: the same gradient as one pass through all rows.
    let (rows, c, v) = (6, 3, 5);
    let ids = [4u32, 0, 2, 2, 1, 4];
    let wv: Vec<f32> = (0..v * c).map(|i| (i as f32 * 0.71).cos()).collect();
    let gv: Vec<f32> = (0..rows * v).map(|i| (i as f32 * 0.53).sin()).collect();
    let run = |chunks: usize| -> Vec<f64> {
        let w = t32(&wv, &[v, c]).requires_grad();
        let h = w.embedding(&ids, &[rows]).unwrap();
        let hd = h.detach();
        let per = rows / chunks;
        let mut dh = Vec::new();
        for k in 0..chunks {
            let hc = hd.narrow(0, k * per, per).unwrap().requires_grad();
            let g = t32(&gv[k * per * v..(k + 1) * per * v], &[per, v]);
            hc.matmul_t(&w).unwrap().backward_from(&g).unwrap();
            dh.push(hc.grad().unwrap());
        }
        h.backward_from(&Tensor::concat(&dh, 0).unwrap()).unwrap();
        let dw = w.grad().unwrap();
        assert!(dw.is_contiguous());
        dw.to_vec_f64()
    };
    let one = run(1);
    assert_close(&run(3), &one, 1e-5);
    assert_close(&run(2), &one, 1e-5);
}
