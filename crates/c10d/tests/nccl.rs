//! ProcessGroupNCCL through the shim, on CUDA tensors.
//!
//! Built only with the `cuda` feature (a CUDA libtorch, CUDA's and NCCL's headers:
//! see the crate's Cargo.toml), and `#[ignore]`d because it needs a GPU:
//! `cargo test -p cardet-c10d --features cuda --test nccl -- --ignored`.
//!
//! NCCL refuses two ranks on one device, so on a one-GPU machine the group is a
//! real ProcessGroupNCCL of one rank ([`ProcessGroup::connect`]): the values are
//! those of one rank, but every call goes through the shim, c10d's NCCL backend,
//! NCCL's communicator and its kernels, and must come back as a Rust result.
#![cfg(feature = "cuda")]

use std::time::Duration;

use cardet_c10d::{Backend, DistConfig, ProcessGroup, ReduceOp};
use tch::{Device, Kind, Tensor};

fn nccl_group_of_one() -> ProcessGroup {
    assert!(
        tch::Cuda::is_available(), // c10d's NCCL build links libtorch_cuda itself
        "libtorch sees no CUDA device: run this only where one is present"
    );
    let config = DistConfig {
        master_port: cardet_testkit::free_port(),
        ..DistConfig::single_process()
            .with_backend(Backend::Nccl)
            .with_timeout(Duration::from_secs(60))
    };
    ProcessGroup::connect(&config).expect("a ProcessGroupNCCL of one rank")
}

fn assert_same(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.device(), Device::Cuda(0), "{name} left the GPU");
    let diff = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    assert_eq!(diff, 0.0, "{name} changed by {diff}");
}

#[test]
#[ignore = "needs a CUDA device (run with --ignored where one is present)"]
fn nccl_collectives_run_on_the_gpu_and_keep_a_single_rank_values() {
    let group = nccl_group_of_one();
    assert_eq!(group.backend(), Backend::Nccl);
    let cuda = Device::Cuda(0);
    tch::manual_seed(11);
    // The trainer's bucket size (3.2M floats), a half tensor and a counter.
    let tensors = [
        Tensor::randn([3_200_000], (Kind::Float, cuda)),
        Tensor::randn([257], (Kind::Half, cuda)),
        Tensor::arange(5, (Kind::Int64, cuda)),
    ];
    let originals: Vec<Tensor> = tensors.iter().map(Tensor::copy).collect();

    group.all_reduce(&tensors, ReduceOp::Sum).expect("sum");
    group
        .all_reduce(&tensors[..2], ReduceOp::Average)
        .expect("average");
    group.broadcast(&tensors, 0).expect("broadcast");
    group.barrier().expect("barrier");
    tch::Cuda::synchronize(0);
    for (index, (got, want)) in tensors.iter().zip(&originals).enumerate() {
        assert_same(&format!("tensor {index}"), got, want);
    }
}

/// A CPU tensor handed to NCCL is c10d's error, returned to Rust, not an abort.
#[test]
#[ignore = "needs a CUDA device (run with --ignored where one is present)"]
fn a_cpu_tensor_on_nccl_is_an_error_not_an_abort() {
    let group = nccl_group_of_one();
    let cpu = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let error = group
        .all_reduce(&[cpu], ReduceOp::Sum)
        .expect_err("NCCL takes CUDA tensors only");
    let message = error.to_string();
    assert!(message.contains("all_reduce"), "{message}");
}
