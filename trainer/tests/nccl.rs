//! The NCCL backend on a GPU at world size 1 (it skips, saying so, without a GPU or NCCL): the
//! tensor collectives the gradient buckets go through return their input's values on the
//! device, in stream order with the engine's ops (a large tensor made by one op, reduced, and
//! read by the next op gives the right values), and the host-buffer collectives agree.

use std::time::Duration;

use polylm_engine::{Device, Tensor};
use polylm_trainer::dist::nccl::{available, NcclCollective};
use polylm_trainer::dist::{launch::free_port, Collective, World};

/// The collective of a one-rank world on GPU 0, or `None` (with a message) when there is no
/// GPU or no NCCL library.
fn nccl_or_skip(test: &str) -> Option<NcclCollective> {
    if !available() || polylm_kernels::cuda::device_count() == 0 {
        eprintln!("skipped {test}: no GPU or no NCCL library (libnccl.so on LD_LIBRARY_PATH)");
        return None;
    }
    let port = free_port().expect("a free port");
    let world =
        World { rank: 0, world_size: 1, local_rank: 0, master_addr: "127.0.0.1".into(), master_port: port };
    Some(NcclCollective::connect(&world, Duration::from_secs(60)).expect("NCCL at world size 1"))
}

/// Pseudo-random values in [-1, 1), none of them zero or one.
fn values(seed: u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40_503)) >> 8;
            (h % 1_000_003) as f32 / 500_001.7 - 0.999
        })
        .collect()
}

fn gpu(v: &[f32]) -> Tensor {
    Tensor::from_slice(v, &[v.len()]).unwrap().to_device(Device::Cuda(0)).unwrap()
}

#[test]
fn tensor_collectives_at_world_size_one_keep_values_on_the_device() {
    let Some(mut c) = nccl_or_skip("tensor_collectives_at_world_size_one_keep_values_on_the_device") else {
        return;
    };
    assert_eq!((c.rank(), c.world_size(), c.backend()), (0, 1, "nccl"));
    for n in [1usize, 7, 4099, 1 << 20] {
        let v = values(n as u32, n);
        let bits = |t: &Tensor| t.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let want: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        let sum = c.all_reduce_sum_tensor(&gpu(&v)).unwrap();
        let share = c.reduce_scatter_sum_tensor(&gpu(&v), &[n]).unwrap();
        let all = c.all_gather_tensor(&gpu(&v), &[n]).unwrap();
        for (what, t) in [("all_reduce", &sum), ("reduce_scatter", &share), ("all_gather", &all)] {
            assert_eq!(t.device(), Device::Cuda(0), "{what} left the device");
            assert_eq!(t.shape(), &[n], "{what}");
            assert_eq!(bits(t), want, "{what} of {n} values");
        }
        let mut host = v.clone();
        c.all_reduce_sum(&mut host).unwrap();
        assert_eq!(host, v, "host all_reduce of {n} values");
    }
    // An empty share (a ZeRO-1 rank that owns nothing in a bucket).
    let empty = c.all_gather_tensor(&gpu(&[]), &[0]).unwrap();
    assert_eq!(empty.shape(), &[0]);
    // A counts list that does not add up is refused before anything is enqueued.
    assert!(c.reduce_scatter_sum_tensor(&gpu(&[1.5, 2.5]), &[3]).is_err());
}

#[test]
fn tensor_collectives_run_in_order_with_the_engine_ops() {
    let Some(mut c) = nccl_or_skip("tensor_collectives_run_in_order_with_the_engine_ops") else {
        return;
    };
    // 64 Mi values: the op that makes the input and the op that reads the sums take long
    // enough that a collective on another stream would read or be read too early.
    let n = 64 << 20;
    let base = gpu(&values(3, n));
    let doubled = base.affine(2.0, 0.25).unwrap();
    let sum = c.all_reduce_sum_tensor(&doubled).unwrap();
    let next = sum.affine(0.5, -0.125).unwrap();
    let (b, got) = (base.to_vec::<f32>().unwrap(), next.to_vec::<f32>().unwrap());
    let wrong =
        b.iter().zip(&got).filter(|(x, y)| ((**x * 2.0 + 0.25) * 0.5 - 0.125 - **y).abs() > 1e-6).count();
    assert_eq!(wrong, 0, "{wrong} of {n} values were read or written out of order");
}
