//! Reverse-mode automatic differentiation over a dynamic graph.
//!
//! Every op that has an input requiring grad records a [`Node`]: its backward rule and its
//! inputs. [`Tensor::backward`](crate::Tensor::backward) walks the graph from a scalar in
//! reverse topological order, runs each rule once with the summed gradient of its output, adds
//! the gradients of leaves into their `.grad()` (so several backward passes accumulate), and
//! frees the graph as it goes. Rules run under [`no_grad`], so gradients are plain tensors.

mod backward;
mod grad_mode;

pub use grad_mode::{is_grad_enabled, no_grad, with_no_grad, NoGradGuard};

pub(crate) use backward::{run_backward, run_backward_from};

use crate::{Result, Tensor};

/// The backward rule of one recorded op. A rule implements [`BackwardOp::backward`], or, if
/// it folds gradients gathered so far into its own ([`BackwardOp::folds_pending`]),
/// [`BackwardOp::backward_folding`]; each has a default in terms of the other.
pub trait BackwardOp: Send + Sync {
    /// The op's name, for debugging.
    fn name(&self) -> &'static str;

    /// Gradients for each input (`None` where an input needs none), given the gradient of the
    /// output. `inputs` are the op's inputs in the order they were recorded.
    fn backward(&self, grad_output: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        self.backward_folding(grad_output, inputs, &mut vec![None; inputs.len()])
    }

    /// Whether [`BackwardOp::backward_folding`] may fold an input's gradient gathered so far
    /// into its own result; only then does the backward pass offer those gradients.
    fn folds_pending(&self) -> bool {
        false
    }

    /// [`BackwardOp::backward`], offered `pending[i]`: the gradient input `i` has gathered so far
    /// (`None` if none yet): from its other consumers in this pass, or, for a leaf, from
    /// earlier passes. A rule may take it and return input `i`'s gradient with it already
    /// added (one fused pass instead of a separate add, such as a layer norm on the residual
    /// stream, or a product accumulating into a weight's gradient); what it leaves, the
    /// backward pass adds as usual.
    fn backward_folding(
        &self,
        grad_output: &Tensor,
        inputs: &[Tensor],
        pending: &mut [Option<Tensor>],
    ) -> Result<Vec<Option<Tensor>>> {
        let _ = pending;
        self.backward(grad_output, inputs)
    }
}

/// Takes `pending` when it can stand for `input`'s gradient: the same shape, dtype and device
/// (what a folding rule checks before adding into it); otherwise leaves it.
pub(crate) fn take_pending_like(pending: &mut Option<Tensor>, input: &Tensor) -> Option<Tensor> {
    pending
        .take_if(|p| p.shape() == input.shape() && p.dtype() == input.dtype() && p.device() == input.device())
}

/// A recorded op: its rule and its inputs.
pub struct Node {
    pub(crate) op: Box<dyn BackwardOp>,
    pub(crate) inputs: Vec<Tensor>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("op", &self.op.name()).field("inputs", &self.inputs.len()).finish()
    }
}
