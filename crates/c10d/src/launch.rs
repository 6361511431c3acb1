//! A single-node launcher in the manner of torchrun: N copies of a program, each
//! told its rank through the environment, stopped together when one fails.

use std::ffi::{OsString, c_int};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::Error;

/// How often the launcher looks at its workers and at pending signals.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What [`launch`] starts.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// Number of worker processes (ranks) on this node.
    pub nproc_per_node: usize,
    /// Address rank 0's TCPStore listens on and the others dial.
    pub master_addr: String,
    /// Port of the TCPStore; `None` picks a free one.
    pub master_port: Option<u16>,
    /// The worker program.
    pub program: PathBuf,
    /// Its arguments, the same for every rank.
    pub args: Vec<OsString>,
    /// Extra variables for every rank, on top of the launcher's environment.
    pub env: Vec<(OsString, OsString)>,
    /// How long stopped workers get between SIGTERM and SIGKILL.
    pub grace_period: Duration,
}

impl LaunchConfig {
    /// `nproc_per_node` copies of `program args` on 127.0.0.1, on a free port,
    /// with a 10 s grace period.
    pub fn new(
        nproc_per_node: usize,
        program: impl Into<PathBuf>,
        args: Vec<OsString>,
    ) -> LaunchConfig {
        LaunchConfig {
            nproc_per_node,
            master_addr: "127.0.0.1".to_owned(),
            master_port: None,
            program: program.into(),
            args,
            env: Vec::new(),
            grace_period: Duration::from_secs(10),
        }
    }
}

/// Starts `nproc_per_node` copies of the program with `MASTER_ADDR`,
/// `MASTER_PORT`, `WORLD_SIZE`, `RANK`, `LOCAL_RANK` and `LOCAL_WORLD_SIZE` set
/// as torchrun sets them (and, like torchrun, `OMP_NUM_THREADS=1` unless already
/// set, so N ranks do not fight over the cores), then waits for all of them.
///
/// SIGINT and SIGTERM sent to the launcher are forwarded to every worker. When
/// a worker exits unsuccessfully the others get SIGTERM, then SIGKILL after
/// `grace_period`, and the error names the failed rank and its exit status.
/// Returns rank 0's status when every rank succeeded.
pub fn launch(config: &LaunchConfig) -> Result<ExitStatus, Error> {
    if config.nproc_per_node == 0 {
        return Err(Error::Config {
            field: "nproc_per_node",
            reason: "must be at least 1".to_owned(),
        });
    }
    let master_port = match config.master_port {
        Some(0) => {
            return Err(Error::Config {
                field: "master_port",
                reason: "must not be 0 (leave it unset for a free port)".to_owned(),
            });
        }
        Some(port) => port,
        None => free_port(&config.master_addr)?,
    };
    let _signals = ForwardedSignals::install()?;
    let mut workers: Vec<Worker> = Vec::with_capacity(config.nproc_per_node);
    for rank in 0..config.nproc_per_node {
        match spawn_rank(config, master_port, rank) {
            Ok(child) => workers.push(Worker {
                rank,
                child,
                status: None,
            }),
            Err(error) => {
                stop_all(&mut workers, config.grace_period);
                return Err(error);
            }
        }
    }
    tracing::info!(
        nproc_per_node = config.nproc_per_node,
        master = %format!("{}:{master_port}", config.master_addr),
        program = %config.program.display(),
        "launched workers"
    );
    supervise(&mut workers, config.grace_period)
}

struct Worker {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
}

fn supervise(workers: &mut [Worker], grace_period: Duration) -> Result<ExitStatus, Error> {
    let mut failure: Option<(usize, u32, ExitStatus)> = None;
    let mut interrupted: Option<i32> = None;
    // Set once the launcher starts stopping workers; SIGKILL follows at this instant.
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        let signal = PENDING_SIGNAL.swap(0, Ordering::SeqCst);
        if signal != 0 {
            tracing::warn!(signal, "forwarding signal to workers");
            signal_running(workers, signal);
            interrupted = Some(signal);
            kill_at.get_or_insert_with(|| Instant::now() + grace_period);
        }
        let mut newly_failed = false;
        for worker in workers.iter_mut().filter(|worker| worker.status.is_none()) {
            let status = worker.child.try_wait().map_err(|source| Error::LaunchIo {
                context: format!("waiting for rank {}", worker.rank),
                source,
            })?;
            let Some(status) = status else { continue };
            worker.status = Some(status);
            // After an interrupt, workers dying of the forwarded signal are expected.
            if !status.success() && failure.is_none() && interrupted.is_none() {
                tracing::error!(rank = worker.rank, %status, "worker failed; stopping the others");
                failure = Some((worker.rank, worker.child.id(), status));
                newly_failed = true;
            }
        }
        if newly_failed {
            signal_running(workers, libc::SIGTERM);
            kill_at.get_or_insert_with(|| Instant::now() + grace_period);
        }
        if workers.iter().all(|worker| worker.status.is_some()) {
            break;
        }
        if !killed && kill_at.is_some_and(|deadline| Instant::now() >= deadline) {
            tracing::warn!(
                ?grace_period,
                "workers outlived the grace period; killing them"
            );
            signal_running(workers, libc::SIGKILL);
            killed = true;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    if let Some((rank, pid, status)) = failure {
        return Err(Error::RankFailed { rank, pid, status });
    }
    if let Some(signal) = interrupted {
        return Err(Error::Interrupted { signal });
    }
    workers
        .first()
        .and_then(|worker| worker.status)
        .ok_or_else(|| Error::Config {
            field: "nproc_per_node",
            reason: "no worker ran".to_owned(),
        })
}

fn spawn_rank(config: &LaunchConfig, master_port: u16, rank: usize) -> Result<Child, Error> {
    let mut command = Command::new(&config.program);
    command
        .args(&config.args)
        .env("MASTER_ADDR", &config.master_addr)
        .env("MASTER_PORT", master_port.to_string())
        .env("WORLD_SIZE", config.nproc_per_node.to_string())
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", config.nproc_per_node.to_string());
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        command.env("OMP_NUM_THREADS", "1");
    }
    command.envs(config.env.iter().map(|(key, value)| (key, value)));
    command.spawn().map_err(|source| Error::Spawn {
        rank,
        program: config.program.clone(),
        source,
    })
}

/// SIGTERM to every running worker, SIGKILL after the grace period, then reap.
fn stop_all(workers: &mut [Worker], grace_period: Duration) {
    signal_running(workers, libc::SIGTERM);
    let deadline = Instant::now() + grace_period;
    for worker in workers.iter_mut() {
        while worker.status.is_none() {
            match worker.child.try_wait() {
                Ok(Some(status)) => worker.status = Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                Ok(None) | Err(_) => {
                    let _ = worker.child.kill();
                    worker.status = worker.child.wait().ok();
                    break;
                }
            }
        }
    }
}

fn signal_running(workers: &[Worker], signal: c_int) {
    for worker in workers.iter().filter(|worker| worker.status.is_none()) {
        let Ok(pid) = libc::pid_t::try_from(worker.child.id()) else {
            continue;
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our own
        // unreaped child, so it cannot have been recycled for another process.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Port 0 asks the kernel for a free one; it is released for rank 0's store to
/// take. Another process could grab it in between, as with torchrun.
fn free_port(master_addr: &str) -> Result<u16, Error> {
    let listener = TcpListener::bind((master_addr, 0)).map_err(|source| Error::LaunchIo {
        context: format!("finding a free port on {master_addr}"),
        source,
    })?;
    let port = listener.local_addr().map_err(|source| Error::LaunchIo {
        context: format!("finding a free port on {master_addr}"),
        source,
    })?;
    Ok(port.port())
}

/// The last SIGINT/SIGTERM received while a launch runs; 0 for none.
static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Only one launch per process can own the signal handlers.
static HANDLERS_INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn record_signal(signal: c_int) {
    // Async-signal-safe: one atomic store; the supervise loop does the rest.
    PENDING_SIGNAL.store(signal, Ordering::SeqCst);
}

/// SIGINT/SIGTERM handlers for the duration of a launch; the previous
/// dispositions come back on drop, so the caller's own handling is untouched.
struct ForwardedSignals {
    previous: Vec<(c_int, libc::sigaction)>,
}

impl ForwardedSignals {
    fn install() -> Result<ForwardedSignals, Error> {
        if HANDLERS_INSTALLED.swap(true, Ordering::SeqCst) {
            return Err(Error::Config {
                field: "launch",
                reason: "another launch is already running in this process".to_owned(),
            });
        }
        PENDING_SIGNAL.store(0, Ordering::SeqCst);
        let mut guard = ForwardedSignals {
            previous: Vec::new(),
        };
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: sigaction structs are plain data; zeroed is a valid start,
            // and the handler only performs an atomic store.
            let (result, previous) = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = record_signal as extern "C" fn(c_int) as libc::sighandler_t;
                libc::sigemptyset(&mut action.sa_mask);
                action.sa_flags = libc::SA_RESTART;
                let mut previous: libc::sigaction = std::mem::zeroed();
                (libc::sigaction(signal, &action, &mut previous), previous)
            };
            if result != 0 {
                return Err(Error::LaunchIo {
                    context: format!("installing a handler for signal {signal}"),
                    source: std::io::Error::last_os_error(),
                });
            }
            guard.previous.push((signal, previous));
        }
        Ok(guard)
    }
}

impl Drop for ForwardedSignals {
    fn drop(&mut self) {
        for (signal, previous) in &self.previous {
            // SAFETY: restores a disposition sigaction itself returned.
            unsafe { libc::sigaction(*signal, previous, std::ptr::null_mut()) };
        }
        HANDLERS_INSTALLED.store(false, Ordering::SeqCst);
    }
}
