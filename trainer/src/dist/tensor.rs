//! The collectives of [`Collective`] on 1-D f32 [`Tensor`]s, as a backend without a device
//! path runs them: through host buffers (download, the host collective, upload to the
//! tensor's device). NCCL overrides them for GPU tensors, which it reduces where they are.

use polylm_engine::{DType, Device, Tensor};

use super::{Collective, DistError, Result};

/// The values of a 1-D f32 tensor, on the host.
fn host_values(t: &Tensor, op: &str) -> Result<Vec<f32>> {
    if t.dtype() != DType::F32 || t.rank() != 1 {
        return Err(DistError::Usage(format!(
            "{op}: needs a 1-D f32 tensor, got {} of shape {:?}",
            t.dtype(),
            t.shape()
        )));
    }
    Ok(t.to_vec::<f32>()?)
}

/// `values` as a 1-D tensor on `device`.
fn on(device: Device, values: Vec<f32>) -> Result<Tensor> {
    let n = values.len();
    Ok(Tensor::from_vec(values, &[n])?.to_device(device)?)
}

/// [`Collective::all_reduce_sum_tensor`] through a host buffer.
pub fn all_reduce_via_host<C: Collective + ?Sized>(comm: &mut C, t: &Tensor) -> Result<Tensor> {
    let mut values = host_values(t, "all_reduce")?;
    comm.all_reduce_sum(&mut values)?;
    on(t.device(), values)
}

/// [`Collective::reduce_scatter_sum_tensor`] through host buffers.
pub fn reduce_scatter_via_host<C: Collective + ?Sized>(
    comm: &mut C,
    input: &Tensor,
    counts: &[usize],
) -> Result<Tensor> {
    let values = host_values(input, "reduce_scatter")?;
    let share = comm.reduce_scatter_sum(&values, counts)?;
    on(input.device(), share)
}

/// [`Collective::all_gather_tensor`] through host buffers.
pub fn all_gather_via_host<C: Collective + ?Sized>(
    comm: &mut C,
    own: &Tensor,
    counts: &[usize],
) -> Result<Tensor> {
    let values = host_values(own, "all_gather")?;
    let all = comm.all_gather(&values, counts)?;
    on(own.device(), all)
}
