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

/// The backward rule of one recorded op.
pub trait BackwardOp: Send + Sync {
    /// The op's name, for debugging.
    fn name(&self) -> &'static str;

    /// Gradients for each input (`None` where an input needs none), given the gradient of the
    /// output. `inputs` are the op's inputs in the order they were recorded.
    fn backward(&self, grad_output: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>>;

    /// Whether [`BackwardOp::backward_folding`] may fold an input's gradient gathered so far
    /// into its own result; only then does the backward pass offer those gradients.
    fn folds_pending(&self) -> bool {
        false
    }

    /// [`BackwardOp::backward`], offered `pending[i]`: the gradient input `i` has gathered so far
    /// from its other consumers (`None` if none yet). A rule may take it and return input `i`'s
    /// gradient with it already added (one fused pass instead of a separate add, such as a
    /// layer norm on the residual stream); what it leaves, the backward pass adds as usual.
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
