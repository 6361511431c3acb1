use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything that can go wrong in cardet-c10d. Variants follow what the caller
/// can do: fix the environment, retry the rendezvous, give up the step, or report
/// a failed worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A torchrun/Kubeflow variable is missing, half-set or unparsable.
    #[error("environment variable {variable}: {reason}")]
    Env {
        variable: &'static str,
        reason: String,
    },

    /// A value in a [`crate::DistConfig`] or [`crate::LaunchConfig`] is out of range.
    #[error("invalid {field}: {reason}")]
    Config { field: &'static str, reason: String },

    /// Building the TCPStore or the backend failed (peer missing, port taken, timeout).
    #[error("rendezvous at {master_addr}:{master_port} as rank {rank} of {world_size}: {message}")]
    Rendezvous {
        master_addr: String,
        master_port: u16,
        rank: usize,
        world_size: usize,
        message: String,
    },

    /// A collective failed or timed out; `operation` names it (`all_reduce`,
    /// `broadcast`, `barrier`).
    #[error("{operation} on rank {rank} failed: {message}")]
    Collective {
        operation: &'static str,
        rank: usize,
        message: String,
    },

    /// A tensor cannot take part in the collective (undefined, wrong dtype, ...).
    #[error("{operation}: tensor {tensor_idx}: {reason}")]
    InvalidTensor {
        operation: &'static str,
        tensor_idx: usize,
        reason: String,
    },

    /// A libtorch call on the Rust side (flatten, cast, copy) failed.
    #[error("{operation}: {source}")]
    Torch {
        operation: &'static str,
        #[source]
        source: tch::TchError,
    },

    /// The launcher could not start a worker.
    #[error("starting rank {rank} ({program}): {source}")]
    Spawn {
        rank: usize,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The launcher could not pick a free port or watch its workers.
    #[error("launcher: {context}: {source}")]
    LaunchIo {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A worker exited unsuccessfully; the launcher stopped the others.
    #[error("rank {rank} (pid {pid}) failed with {status}; the other ranks were stopped")]
    RankFailed {
        rank: usize,
        pid: u32,
        status: ExitStatus,
    },

    /// The launcher received SIGINT or SIGTERM, passed it on, and the workers ended.
    #[error("launcher interrupted by signal {signal}; forwarded to all ranks")]
    Interrupted { signal: i32 },
}
