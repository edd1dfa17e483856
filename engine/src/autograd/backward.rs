//! The backward pass: topological order, gradient summation, leaf accumulation, graph release.

use std::collections::{HashMap, HashSet};

use super::grad_mode::no_grad;
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
    // The seed gradient lives on the root's device.
    let seed = if root.device().is_cpu() {
        Tensor::ones(root.shape(), root.dtype())?
    } else {
        crate::cuda::full_like(root, root.shape(), 1.0)?
    };
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
                let input_grads = node.op.backward(&grad, &node.inputs)?;
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
