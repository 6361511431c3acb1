//! Data-parallel plumbing for the trainer: libtorch's c10d collectives (through
//! a small C++ shim, `cpp/c10d_shim.cpp`), DDP-style gradient bucketing, and a
//! torchrun-like launcher.
//!
//! - [`DistConfig`] reads the job from `MASTER_ADDR`/`MASTER_PORT`/`WORLD_SIZE`/
//!   `RANK`/`LOCAL_RANK`, as torchrun and Kubeflow's PyTorchJob set them.
//! - [`ProcessGroup`] rendezvouses over a TCPStore and runs `all_reduce`,
//!   `broadcast` and `barrier` on tch tensors in place, over gloo (CPU) or, with
//!   the `cuda` feature, NCCL. Failures and timeouts come back as [`Error`]s
//!   naming the operation; nothing aborts and nothing hangs past the timeout.
//! - [`GradientBuckets`] averages gradients in buckets of `bucket_cap_mb`,
//!   optionally compressed to fp16 or bf16 on the wire.
//! - [`DataParallel`] bundles the two behind the calls a training loop makes.
//! - [`launch`] starts N local ranks of a program and stops them together.
//!
//! ```no_run
//! # fn demo(vars: &[tch::Tensor], grads: &[tch::Tensor]) -> Result<(), cardet_c10d::Error> {
//! use cardet_c10d::{DataParallel, DistConfig, GradientBuckets};
//! let config = DistConfig::from_env()?.with_timeout(std::time::Duration::from_secs(120));
//! let dp = DataParallel::new(&config, GradientBuckets::default())?;
//! dp.broadcast_parameters(vars)?; // once, before the first step
//! // ... backward ...
//! dp.all_reduce_gradients(grads)?; // every step, before the optimizer
//! # Ok(()) }
//! ```

mod buckets;
mod config;
mod error;
mod ffi;
mod group;
mod launch;

pub use buckets::{Compression, DEFAULT_BUCKET_CAP_MB, GradientBuckets};
pub use config::{Backend, DEFAULT_TIMEOUT, DistConfig};
pub use error::Error;
pub use group::{ProcessGroup, ReduceOp};
pub use launch::{LaunchConfig, launch};

use tch::Tensor;

/// A [`ProcessGroup`] plus its [`GradientBuckets`]: the five calls a
/// data-parallel training loop makes. A trainer's `GradientSync` implementation
/// forwards to these one for one.
#[derive(Debug)]
pub struct DataParallel {
    group: ProcessGroup,
    buckets: GradientBuckets,
}

impl DataParallel {
    /// Rendezvouses with the job in `config` (a no-op for a single process).
    pub fn new(config: &DistConfig, buckets: GradientBuckets) -> Result<DataParallel, Error> {
        Ok(DataParallel {
            group: ProcessGroup::new(config)?,
            buckets,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// Number of processes.
    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// Copies rank 0's weights and buffers to every rank.
    pub fn broadcast_parameters(&self, vars: &[Tensor]) -> Result<(), Error> {
        self.group.broadcast_parameters(vars)
    }

    /// Replaces each gradient by its mean over the ranks.
    pub fn all_reduce_gradients(&self, grads: &[Tensor]) -> Result<(), Error> {
        self.buckets.all_reduce_average(&self.group, grads)
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<(), Error> {
        self.group.barrier()
    }

    /// The underlying group, for other collectives (e.g. summing metrics).
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }
}
