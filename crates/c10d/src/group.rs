//! [`ProcessGroup`]: one process's handle on the job's collectives.

use std::ffi::{CString, c_int, c_void};
use std::ptr::NonNull;
use std::sync::Mutex;

use tch::Tensor;

use crate::config::{Backend, DistConfig};
use crate::{Error, ffi};

/// How [`ProcessGroup::all_reduce`] combines the ranks' tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum over ranks.
    Sum,
    /// Element-wise mean over ranks (sum, then divide by the world size).
    Average,
}

/// A rendezvoused group of `world_size` processes (or a group of one, which
/// never touches c10d). Collectives change the given tensors' storage in place.
///
/// Every rank must issue the same collectives in the same order, as with
/// torch.distributed; calls from several threads are serialised, but their
/// order across ranks is then up to the caller.
pub struct ProcessGroup {
    /// `None` for a single process.
    raw: Option<Mutex<RawGroupHandle>>,
    rank: usize,
    world_size: usize,
    backend: Backend,
}

struct RawGroupHandle(NonNull<ffi::RawGroup>);

// SAFETY: the C++ group (store + backend) is thread-safe to call from any one
// thread at a time, and the Mutex around the handle guarantees that.
unsafe impl Send for RawGroupHandle {}

impl ProcessGroup {
    /// Connects to the job described by `config`: rank 0 hosts the TCPStore and
    /// every rank waits (up to `config.timeout`) for all `world_size` ranks. A job
    /// of one gets no c10d group at all: its collectives are identities.
    pub fn new(config: &DistConfig) -> Result<ProcessGroup, Error> {
        check_config(config)?;
        if !config.is_distributed() {
            return Ok(ProcessGroup {
                raw: None,
                rank: 0,
                world_size: 1,
                backend: config.backend,
            });
        }
        Self::connect_checked(config)
    }

    /// Like [`ProcessGroup::new`], but builds the real c10d group even for a job of
    /// one. That is how the NCCL path is exercised on a machine with one GPU:
    /// NCCL refuses two ranks on the same device.
    pub fn connect(config: &DistConfig) -> Result<ProcessGroup, Error> {
        check_config(config)?;
        Self::connect_checked(config)
    }

    fn connect_checked(config: &DistConfig) -> Result<ProcessGroup, Error> {
        let rendezvous_error = |message: String| Error::Rendezvous {
            master_addr: config.master_addr.clone(),
            master_port: config.master_port,
            rank: config.rank,
            world_size: config.world_size,
            message,
        };
        let master_addr = CString::new(config.master_addr.as_str())
            .map_err(|_| rendezvous_error("master address contains a NUL byte".to_owned()))?;
        let gloo_interface = CString::new(config.gloo_interface.clone().unwrap_or_default())
            .map_err(|_| rendezvous_error("GLOO_SOCKET_IFNAME contains a NUL byte".to_owned()))?;
        let rank = to_c_int("rank", config.rank)?;
        let world_size = to_c_int("world size", config.world_size)?;
        let timeout_ms = i64::try_from(config.timeout.as_millis())
            .ok()
            .filter(|millis| *millis > 0)
            .ok_or_else(|| Error::Config {
                field: "timeout",
                reason: format!("{:?} is not between 1 ms and i64::MAX ms", config.timeout),
            })?;
        let backend = match config.backend {
            Backend::Gloo => ffi::BACKEND_GLOO,
            Backend::Nccl => ffi::BACKEND_NCCL,
        };
        let mut raw = std::ptr::null_mut();
        tracing::debug!(
            rank = config.rank,
            world_size = config.world_size,
            master = %format!("{}:{}", config.master_addr, config.master_port),
            "c10d rendezvous"
        );
        // SAFETY: the strings outlive the call, `raw` is a valid out-pointer, and
        // the result is handed straight to take_error.
        let result = unsafe {
            ffi::take_error(ffi::cardet_c10d_group_new(
                master_addr.as_ptr(),
                config.master_port,
                rank,
                world_size,
                timeout_ms,
                backend,
                gloo_interface.as_ptr(),
                &mut raw,
            ))
        };
        result.map_err(rendezvous_error)?;
        let raw = NonNull::new(raw).ok_or_else(|| {
            rendezvous_error("the shim returned no group and no error".to_owned())
        })?;
        Ok(ProcessGroup {
            raw: Some(Mutex::new(RawGroupHandle(raw))),
            rank: config.rank,
            world_size: config.world_size,
            backend: config.backend,
        })
    }

    /// This process's rank in `0..world_size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of processes in the job.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The backend the collectives run on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Replaces each tensor, in place, by its reduction over all ranks. Each
    /// tensor is its own collective (all issued before the first wait); shapes
    /// and dtypes must match across ranks.
    pub fn all_reduce(&self, tensors: &[Tensor], op: ReduceOp) -> Result<(), Error> {
        let op = match op {
            ReduceOp::Sum => ffi::REDUCE_SUM,
            ReduceOp::Average => ffi::REDUCE_AVERAGE,
        };
        self.with_tensors("all_reduce", tensors, |raw, pointers| {
            // SAFETY: `raw` is a live group (held under its Mutex) and `pointers`
            // are live at::Tensor pointers borrowed from `tensors`.
            unsafe { ffi::cardet_c10d_all_reduce(raw, pointers.as_ptr(), pointers.len(), op) }
        })
    }

    /// Overwrites each tensor, in place, with rank `root`'s copy.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<(), Error> {
        if root >= self.world_size {
            return Err(Error::Config {
                field: "broadcast root",
                reason: format!("{root} is not below world size {}", self.world_size),
            });
        }
        let root = to_c_int("broadcast root", root)?;
        self.with_tensors("broadcast", tensors, |raw, pointers| {
            // SAFETY: as in all_reduce.
            unsafe { ffi::cardet_c10d_broadcast(raw, pointers.as_ptr(), pointers.len(), root) }
        })
    }

    /// Sends rank 0's values of the initial weights and buffers (BatchNorm
    /// running statistics included) to every rank, so all replicas start equal.
    pub fn broadcast_parameters(&self, vars: &[Tensor]) -> Result<(), Error> {
        self.broadcast(vars, 0)
    }

    /// Returns once every rank has called `barrier`.
    pub fn barrier(&self) -> Result<(), Error> {
        let Some(raw) = &self.raw else {
            return Ok(());
        };
        let handle = self.lock(raw, "barrier")?;
        // SAFETY: the group is live and held under its Mutex.
        let result = unsafe { ffi::take_error(ffi::cardet_c10d_barrier(handle.0.as_ptr())) };
        result.map_err(|message| self.collective_error("barrier", message))
    }

    fn with_tensors(
        &self,
        operation: &'static str,
        tensors: &[Tensor],
        call: impl FnOnce(*mut ffi::RawGroup, &[*const c_void]) -> *mut std::ffi::c_char,
    ) -> Result<(), Error> {
        for (tensor_idx, tensor) in tensors.iter().enumerate() {
            if !tensor.defined() {
                return Err(Error::InvalidTensor {
                    operation,
                    tensor_idx,
                    reason: "tensor is undefined (a parameter without a gradient?)".to_owned(),
                });
            }
        }
        let Some(raw) = &self.raw else {
            // A group of one: the sum, mean and broadcast of one copy is that copy.
            return Ok(());
        };
        if tensors.is_empty() {
            return Ok(());
        }
        let pointers: Vec<*const c_void> = tensors
            .iter()
            .map(|tensor| tensor.as_ptr().cast::<c_void>())
            .collect();
        let handle = self.lock(raw, operation)?;
        // SAFETY: `call` returns a shim result, owned by take_error.
        let result = unsafe { ffi::take_error(call(handle.0.as_ptr(), &pointers)) };
        result.map_err(|message| self.collective_error(operation, message))
    }

    fn lock<'group>(
        &self,
        raw: &'group Mutex<RawGroupHandle>,
        operation: &'static str,
    ) -> Result<std::sync::MutexGuard<'group, RawGroupHandle>, Error> {
        raw.lock().map_err(|_| {
            self.collective_error(
                operation,
                "an earlier call panicked while holding the group".to_owned(),
            )
        })
    }

    fn collective_error(&self, operation: &'static str, message: String) -> Error {
        Error::Collective {
            operation,
            rank: self.rank,
            message,
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            let handle = raw
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // SAFETY: created by cardet_c10d_group_new and freed exactly once.
            unsafe { ffi::cardet_c10d_group_free(handle.0.as_ptr()) };
        }
    }
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("backend", &self.backend)
            .finish()
    }
}

/// What every group needs before any socket is opened.
fn check_config(config: &DistConfig) -> Result<(), Error> {
    if config.world_size == 0 || config.rank >= config.world_size {
        return Err(Error::Config {
            field: "rank",
            reason: format!(
                "{} is not below world size {}",
                config.rank, config.world_size
            ),
        });
    }
    if config.backend == Backend::Nccl && !cfg!(feature = "cuda") {
        // Refused before the rendezvous, which would otherwise wait for peers.
        return Err(Error::Config {
            field: "backend",
            reason: "NCCL needs cardet-c10d built with the `cuda` feature".to_owned(),
        });
    }
    Ok(())
}

fn to_c_int(field: &'static str, value: usize) -> Result<c_int, Error> {
    c_int::try_from(value).map_err(|_| Error::Config {
        field,
        reason: format!("{value} does not fit a C int"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(config: DistConfig, expected: &str) {
        let error = ProcessGroup::new(&config).expect_err("an invalid group");
        assert_eq!(error.to_string(), expected);
    }

    #[test]
    fn impossible_groups_are_refused_before_any_rendezvous() {
        let two_ranks = DistConfig {
            world_size: 2,
            rank: 1,
            ..DistConfig::single_process()
        };
        check(
            DistConfig {
                rank: 2,
                ..two_ranks.clone()
            },
            "invalid rank: 2 is not below world size 2",
        );
        check(
            two_ranks.clone().with_timeout(std::time::Duration::ZERO),
            "invalid timeout: 0ns is not between 1 ms and i64::MAX ms",
        );
        if !cfg!(feature = "cuda") {
            check(
                two_ranks.with_backend(Backend::Nccl),
                "invalid backend: NCCL needs cardet-c10d built with the `cuda` feature",
            );
        }
    }

    #[test]
    fn a_group_of_one_leaves_tensors_as_they_are() {
        let group = ProcessGroup::new(&DistConfig::single_process()).expect("group of one");
        let tensors = [
            Tensor::from_slice(&[1.5_f32, -2.0]),
            Tensor::from_slice(&[7_i64]),
        ];
        let before: Vec<Tensor> = tensors.iter().map(Tensor::copy).collect();
        group.all_reduce(&tensors, ReduceOp::Sum).expect("sum");
        group
            .all_reduce(&tensors[..1], ReduceOp::Average)
            .expect("average");
        group.broadcast(&tensors, 0).expect("broadcast");
        group.barrier().expect("barrier");
        for (after, before) in tensors.iter().zip(&before) {
            assert!(after.equal(before));
        }
        let error = group.broadcast(&tensors, 1).expect_err("root 1 of 1");
        assert_eq!(
            error.to_string(),
            "invalid broadcast root: 1 is not below world size 1"
        );
    }

    /// `connect` builds the real c10d group even for one rank (the NCCL test's way
    /// onto a one-GPU machine); over gloo its collectives keep the rank's values.
    #[test]
    fn connect_builds_a_real_group_of_one() {
        let config = DistConfig {
            master_port: cardet_testkit::free_port(),
            gloo_interface: Some("lo".to_owned()),
            ..DistConfig::single_process()
        }
        .with_timeout(std::time::Duration::from_secs(30));
        let group = ProcessGroup::connect(&config).expect("gloo group of one");
        assert!(
            group.raw.is_some(),
            "connect must not fall back to the identity"
        );
        let tensor = Tensor::from_slice(&[1.5_f32, -2.0, 4.0]);
        group
            .all_reduce(&[tensor.shallow_clone()], ReduceOp::Sum)
            .expect("sum");
        group
            .all_reduce(&[tensor.shallow_clone()], ReduceOp::Average)
            .expect("average");
        group
            .broadcast(&[tensor.shallow_clone()], 0)
            .expect("broadcast");
        group.barrier().expect("barrier");
        assert_eq!(
            Vec::<f32>::try_from(&tensor).expect("f32"),
            [1.5, -2.0, 4.0]
        );
    }
}
