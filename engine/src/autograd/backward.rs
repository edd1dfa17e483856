//! The backward pass: topological order, gradient summation, leaf accumulation, graph release.

use std::collections::{HashMap, HashSet};

use super::grad_mode::no_grad;
use super::Node;
use crate::tensor::TensorId;
use crate::{Error, Result, Tensor};

/// Runs backward from `root` (a one-element tensor) with seed gradient 1, calling `on_leaf`
/// with each leaf right after its gradient of this pass has been added to its `.grad()`.
///
/// The walk visits a leaf as soon as every op that consumed it has run (see
/// [`topological_order`]), so a leaf reported early, such as a last layer's weight, is
/// reported before the earlier layers' backward rules run.
pub(crate) fn run_backward(root: &Tensor, on_leaf: &mut dyn FnMut(&Tensor)) -> Result<()> {
    if root.numel() != 1 {
        return Err(Error::BackwardNonScalar { shape: root.shape().to_vec() });
    }
    // The seed gradient 1 lives on the root's device.
    let seed = if root.device().is_cpu() {
        Tensor::ones(root.shape(), root.dtype())?
    } else {
        crate::cuda::full_like(root, root.shape(), 1.0)?
    };
    run_backward_from(root, seed, on_leaf)
}

/// [`run_backward`] from any tensor with `seed` as its gradient (the caller has checked that
/// the seed has the root's shape, dtype and device).
pub(crate) fn run_backward_from(root: &Tensor, seed: Tensor, on_leaf: &mut dyn FnMut(&Tensor)) -> Result<()> {
    if !root.requires_grad_flag() {
        return Err(Error::BackwardWithoutGraph);
    }
    let _guard = no_grad();
    let order = topological_order(root);
    // A non-leaf whose node is gone was consumed by an earlier backward: refuse before any
    // gradient is accumulated, rather than treat it as a leaf.
    if order.iter().any(|t| !t.is_leaf() && t.node().is_none()) {
        return Err(Error::GraphFreed);
    }
    let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
    grads.insert(root.id(), seed);
    for t in order.iter().rev() {
        let Some(grad) = grads.remove(&t.id()) else {
            continue;
        };
        match t.take_node() {
            None if t.is_leaf() => {
                t.accumulate_grad(&grad)?;
                on_leaf(t);
            }
            None => return Err(Error::GraphFreed),
            Some(node) => {
                let input_grads = run_rule(&node, &grad, &mut grads)?;
                for (input, g) in node.inputs.iter().zip(input_grads) {
                    let Some(g) = g else { continue };
                    if !input.requires_grad_flag() {
                        continue;
                    }
                    if g.shape() != input.shape() {
                        return Err(Error::ShapeMismatch {
                            op: node.op.name(),
                            lhs: g.shape().to_vec(),
                            rhs: input.shape().to_vec(),
                        });
                    }
                    let g = if g.dtype() != input.dtype() { g.to_dtype(input.dtype())? } else { g };
                    let summed = match grads.remove(&input.id()) {
                        Some(prev) => prev.add(&g)?,
                        None => g,
                    };
                    grads.insert(input.id(), summed);
                }
            }
        }
    }
    Ok(())
}

/// Runs `node`'s backward rule on its output gradient `grad`. A rule that folds pending
/// gradients is offered each input's gradient gathered so far (once per distinct input): the
/// one of this pass, or, for a leaf this pass has not reached yet, the gradient it holds from
/// earlier passes (taken out of its `.grad()`, so a product can accumulate into it in place).
/// What the rule does not take goes back where it came from, to be added to its result as
/// usual; what it takes is in its result, and the leaf's `.grad()` stays empty until the pass
/// reaches the leaf and sets it.
fn run_rule(
    node: &Node,
    grad: &Tensor,
    grads: &mut HashMap<TensorId, Tensor>,
) -> Result<Vec<Option<Tensor>>> {
    if !node.op.folds_pending() {
        return node.op.backward(grad, &node.inputs);
    }
    let mut pending: Vec<Option<Tensor>> = vec![None; node.inputs.len()];
    let mut from_leaf = vec![false; node.inputs.len()];
    for (i, input) in node.inputs.iter().enumerate() {
        let first = !node.inputs[..i].iter().any(|earlier| earlier.id() == input.id());
        if first && input.requires_grad_flag() {
            pending[i] = grads.remove(&input.id());
            if pending[i].is_none() && input.is_leaf() {
                pending[i] = input.take_grad();
                from_leaf[i] = pending[i].is_some();
            }
        }
    }
    let result = node.op.backward_folding(grad, &node.inputs, &mut pending);
    for ((input, left), leaf) in node.inputs.iter().zip(pending).zip(from_leaf) {
        match left {
            Some(left) if leaf => input.put_grad(left),
            Some(left) => {
                grads.insert(input.id(), left);
            }
            None => {}
        }
    }
    result
}

/// Tensors reachable from `root` that require grad, each after all of its inputs.
///
/// A depth-first post-order. An op's leaf inputs are pushed below its other inputs, so the
/// subgraphs behind the other inputs are walked first and a leaf lands just before the op
/// through which the walk reached it: walked in reverse, a leaf comes soon after its
/// consumers, not after the whole subgraph below them.
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative post-order DFS: (tensor, inputs already pushed).
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        let mut inputs: Vec<Tensor> = match t.node() {
            Some(node) => node.inputs.iter().filter(|i| i.requires_grad_flag()).cloned().collect(),
            None => Vec::new(),
        };
        // Leaves first onto the stack: popped last, finished after their siblings' subgraphs.
        inputs.sort_by_key(|i| !i.is_leaf());
        stack.push((t, true));
        for i in inputs {
            if !seen.contains(&i.id()) {
                stack.push((i, false));
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::autograd::BackwardOp;
    use crate::{Result, Tensor};

    /// `y = 2·x₀ + 3·x₁ + …` over its inputs, whose backward folds the pending gradient of
    /// its first input when `take` (counting the folds in `folded`).
    struct Scaled {
        take: bool,
        folded: &'static AtomicUsize,
    }

    impl BackwardOp for Scaled {
        fn name(&self) -> &'static str {
            "scaled"
        }
        fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
            (0..inputs.len()).map(|i| g.affine(2.0 + i as f64, 0.0).map(Some)).collect()
        }
        fn folds_pending(&self) -> bool {
            true
        }
        fn backward_folding(
            &self,
            g: &Tensor,
            inputs: &[Tensor],
            pending: &mut [Option<Tensor>],
        ) -> Result<Vec<Option<Tensor>>> {
            let mut grads = self.backward(g, inputs)?;
            if !self.take {
                return Ok(grads);
            }
            if let (Some(p), Some(first)) = (pending[0].take(), grads[0].take()) {
                self.folded.fetch_add(1, Ordering::Relaxed);
                grads[0] = Some(first.add(&p)?);
            }
            Ok(grads)
        }
    }

    fn scaled(inputs: &[&Tensor], take: bool, folded: &'static AtomicUsize) -> Result<Tensor> {
        let mut value = inputs[0].affine(2.0, 0.0)?;
        for (i, x) in inputs.iter().enumerate().skip(1) {
            value = value.add(&x.affine(2.0 + i as f64, 0.0)?)?;
        }
        let value = value.detach();
        Ok(Tensor::from_op(value, Scaled { take, folded }, inputs.iter().map(|&t| t.clone()).collect()))
    }

    /// dz/dx for z = Σ(u + y), u = 3x, y = scaled(u, …): the same with or without folding.
    fn gradient(take: bool, twice: bool, folded: &'static AtomicUsize) -> Vec<f32> {
        let x = Tensor::from_vec(vec![0.5f32, -1.25, 2.0], &[3]).unwrap().requires_grad();
        let u = x.affine(3.0, 0.0).unwrap();
        let y = if twice { scaled(&[&u, &u], take, folded) } else { scaled(&[&u], take, folded) }.unwrap();
        u.add(&y).unwrap().sum_all().unwrap().backward().unwrap();
        x.grad().unwrap().to_vec::<f32>().unwrap()
    }

    #[test]
    fn a_folded_pending_gradient_is_counted_once() {
        static FOLDED: AtomicUsize = AtomicUsize::new(0);
        // du = 1 (the add, which runs first in the backward pass) + 2 (scaled): dx = 3·3.
        assert_eq!(gradient(true, false, &FOLDED), vec![9.0; 3]);
        assert_eq!(FOLDED.load(Ordering::Relaxed), 1, "the add's gradient was pending and folded");
        // Left untaken, the pending gradient is added by the backward pass: the same result.
        assert_eq!(gradient(false, false, &FOLDED), vec![9.0; 3]);
        assert_eq!(FOLDED.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_input_used_twice_is_offered_its_pending_gradient_once() {
        static FOLDED: AtomicUsize = AtomicUsize::new(0);
        // du = 1 + 2 + 3: dx = 3·6, folded or not.
        assert_eq!(gradient(true, true, &FOLDED), vec![18.0; 3]);
        assert_eq!(FOLDED.load(Ordering::Relaxed), 1);
        assert_eq!(gradient(false, true, &FOLDED), vec![18.0; 3]);
    }

    /// x.grad after a backward pass of Σ(scaled(x)) (and of Σ(4x) beside it when `shared`),
    /// with x holding `prior` from an earlier pass.
    fn leaf_gradient(take: bool, shared: bool, folded: &'static AtomicUsize) -> Vec<f32> {
        let x = Tensor::from_vec(vec![0.5f32, -1.25, 2.0], &[3]).unwrap().requires_grad();
        x.set_grad(&Tensor::from_vec(vec![10.0f32, 20.0, 30.0], &[3]).unwrap()).unwrap();
        let mut z = scaled(&[&x], take, folded).unwrap();
        if shared {
            z = z.add(&x.affine(4.0, 0.0).unwrap()).unwrap();
        }
        z.sum_all().unwrap().backward().unwrap();
        x.grad().unwrap().to_vec::<f32>().unwrap()
    }

    #[test]
    fn a_leaf_offers_its_earlier_gradient_and_gets_it_back_when_not_taken() {
        static FOLDED: AtomicUsize = AtomicUsize::new(0);
        let want = vec![12.0, 22.0, 32.0];
        assert_eq!(leaf_gradient(true, false, &FOLDED), want);
        assert_eq!(FOLDED.load(Ordering::Relaxed), 1, "the leaf's earlier gradient was folded");
        assert_eq!(leaf_gradient(false, false, &FOLDED), want, "left untaken, it was put back");
        // Also used by a second op in the same pass: that op's gradient is pending when the
        // folding rule runs (the add runs first), and the earlier one stays in the leaf.
        let want = vec![16.0, 26.0, 36.0];
        assert_eq!(leaf_gradient(true, true, &FOLDED), want);
        assert_eq!(leaf_gradient(false, true, &FOLDED), want);
    }
}
