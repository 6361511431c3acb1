//! Data-parallel `mwt train` and `mwt launch`: the trainer's [`GradientSync`] over
//! `cardet_c10d`'s collectives, the job read from the torchrun / Kubeflow PyTorchJob
//! environment, and a torchrun-like launcher that re-runs this executable per rank.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::Context;
use cardet_c10d::{Backend, Compression, DataParallel, DistConfig, GradientBuckets, LaunchConfig};
use cardet_train::{Error, GradientSync};
use tch::Tensor;

/// The data-parallel flags of `mwt train`. The job itself (rank, world size, master)
/// comes from `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK` and `LOCAL_RANK`, as
/// torchrun, `mwt launch` and Kubeflow's PyTorchJob set them; without them the run
/// is a single process and these flags change nothing.
#[derive(Debug, Clone, clap::Args)]
pub struct DistFlags {
    /// Seconds any rendezvous or collective may wait for a peer before the run fails
    /// (torch.distributed's default: 30 minutes).
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    dist_timeout: u64,
    /// gloo (CPU tensors) or nccl (CUDA); default: nccl with a CUDA --device, else gloo.
    #[arg(long, value_name = "BACKEND")]
    dist_backend: Option<String>,
    /// Gradients are averaged in buckets of this many MiB (DDP's bucket_cap_mb).
    #[arg(long, value_name = "MB", default_value_t = cardet_c10d::DEFAULT_BUCKET_CAP_MB)]
    bucket_cap_mb: f64,
    /// Gradients on the wire: none, fp16 or bf16 (DDP's compression hooks).
    #[arg(long, value_name = "KIND", default_value = "none")]
    grad_compression: String,
}

/// The job this process belongs to, from the environment and the flags; `device` is
/// the run's `--device`, which picks the default backend.
pub fn dist_config(flags: &DistFlags, device: &str) -> anyhow::Result<DistConfig> {
    anyhow::ensure!(
        flags.dist_timeout > 0,
        "--dist-timeout must be at least 1 second"
    );
    let backend = match &flags.dist_backend {
        Some(name) => name
            .parse::<Backend>()
            .with_context(|| format!("--dist-backend {name}"))?,
        None if device.trim().to_ascii_lowercase().starts_with("cuda") => Backend::Nccl,
        None => Backend::Gloo,
    };
    let config = DistConfig::from_env()
        .context("reading the data-parallel job from the environment")?
        .with_timeout(Duration::from_secs(flags.dist_timeout))
        .with_backend(backend);
    Ok(config)
}

/// The device a rank trains on: with several ranks on one node, `cuda` means this
/// rank's own GPU, `cuda:LOCAL_RANK`, as under torchrun.
pub fn rank_device(device: &str, config: &DistConfig) -> String {
    if config.is_distributed() && device.trim().eq_ignore_ascii_case("cuda") {
        format!("cuda:{}", config.local_rank)
    } else {
        device.to_string()
    }
}

/// Rendezvouses (a no-op for a single process) and returns the trainer's hook.
pub fn gradient_sync(flags: &DistFlags, config: &DistConfig) -> anyhow::Result<C10dSync> {
    let compression = flags
        .grad_compression
        .parse::<Compression>()
        .with_context(|| format!("--grad-compression {}", flags.grad_compression))?;
    let buckets = GradientBuckets::new(flags.bucket_cap_mb, compression)
        .with_context(|| format!("--bucket-cap-mb {}", flags.bucket_cap_mb))?;
    if config.is_distributed() {
        tracing::info!(
            rank = config.rank,
            world_size = config.world_size,
            master = %format!("{}:{}", config.master_addr, config.master_port),
            backend = ?config.backend,
            "joining the data-parallel job"
        );
    }
    let parallel = DataParallel::new(config, buckets).with_context(|| {
        format!(
            "joining the job as rank {} of {} (timeout {} s)",
            config.rank,
            config.world_size,
            config.timeout.as_secs()
        )
    })?;
    Ok(C10dSync { parallel })
}

/// [`GradientSync`] over c10d: DDP's semantics (rank 0's weights and buffers at the
/// start, gradients averaged in buckets after every accumulation).
#[derive(Debug)]
pub struct C10dSync {
    parallel: DataParallel,
}

fn distributed_error(error: cardet_c10d::Error) -> Error {
    Error::Distributed(error.to_string())
}

impl GradientSync for C10dSync {
    fn rank(&self) -> usize {
        self.parallel.rank()
    }

    fn world_size(&self) -> usize {
        self.parallel.world_size()
    }

    fn broadcast_parameters(&self, vars: &[Tensor]) -> Result<(), Error> {
        self.parallel
            .broadcast_parameters(vars)
            .map_err(distributed_error)
    }

    fn all_reduce_gradients(&self, grads: &[Tensor]) -> Result<(), Error> {
        self.parallel
            .all_reduce_gradients(grads)
            .map_err(distributed_error)
    }

    fn barrier(&self) -> Result<(), Error> {
        self.parallel.barrier().map_err(distributed_error)
    }
}

/// The flags of `mwt launch`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  mwt launch --nproc-per-node 2 -- train --data data.yaml --model n --epochs 10 --batch 32\n  mwt launch --nproc-per-node 4 --master-port 29600 -- train --data data.yaml --device cuda --amp\n\nEvery rank runs `mwt <args>` with MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK set\n(and OMP_NUM_THREADS=1 unless set). When one rank fails the others are stopped (SIGTERM, then\nSIGKILL after --grace-period) and the launcher exits non-zero naming the rank; SIGINT/SIGTERM\nto the launcher go to every rank."
)]
pub struct LaunchFlags {
    /// Worker processes (ranks) on this node.
    #[arg(long, value_name = "N")]
    nproc_per_node: usize,
    /// Port of rank 0's rendezvous store (default: a free one).
    #[arg(long, value_name = "PORT")]
    master_port: Option<u16>,
    /// Address the ranks rendezvous at.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    master_addr: String,
    /// Seconds stopped ranks get between SIGTERM and SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    grace_period: u64,
    /// The `mwt` command every rank runs, after `--` (e.g. `-- train --data ...`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

/// `mwt launch`: this executable once per rank, until all succeed or one fails.
pub fn launch(flags: &LaunchFlags) -> anyhow::Result<()> {
    anyhow::ensure!(
        flags.nproc_per_node >= 1,
        "--nproc-per-node must be at least 1"
    );
    let program = std::env::current_exe().context("finding the mwt executable to launch")?;
    let mut config = LaunchConfig::new(flags.nproc_per_node, program, flags.command.clone());
    config.master_port = flags.master_port;
    config.master_addr = flags.master_addr.clone();
    config.grace_period = Duration::from_secs(flags.grace_period);
    let status = cardet_c10d::launch(&config)
        .with_context(|| format!("mwt launch of {} ranks", flags.nproc_per_node))?;
    anyhow::ensure!(status.success(), "rank 0 ended with {status}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        dist: DistFlags,
    }

    fn flags(args: &[&str]) -> DistFlags {
        Probe::try_parse_from(std::iter::once("probe").chain(args.iter().copied()))
            .expect("valid flags")
            .dist
    }

    #[test]
    fn backend_follows_the_device_unless_given() {
        // No WORLD_SIZE in the test environment: a single process.
        let cpu = dist_config(&flags(&[]), "cpu").expect("cpu");
        assert_eq!(cpu.backend, Backend::Gloo);
        assert_eq!(cpu.timeout, Duration::from_secs(1800));
        let cuda = dist_config(&flags(&["--dist-timeout", "20"]), "cuda:0").expect("cuda");
        assert_eq!(cuda.backend, Backend::Nccl);
        assert_eq!(cuda.timeout, Duration::from_secs(20));
        let forced = dist_config(&flags(&["--dist-backend", "gloo"]), "cuda").expect("gloo");
        assert_eq!(forced.backend, Backend::Gloo);
        let error = dist_config(&flags(&["--dist-backend", "mpi"]), "cpu").expect_err("mpi");
        assert!(
            format!("{error:#}").contains("--dist-backend mpi"),
            "{error:#}"
        );
        let error = dist_config(&flags(&["--dist-timeout", "0"]), "cpu").expect_err("0 s");
        assert!(error.to_string().contains("--dist-timeout"), "{error}");
    }

    #[test]
    fn bad_bucket_or_compression_names_the_flag() {
        let config = DistConfig::single_process();
        let error =
            gradient_sync(&flags(&["--grad-compression", "int8"]), &config).expect_err("int8");
        assert!(
            format!("{error:#}").contains("--grad-compression int8"),
            "{error:#}"
        );
        let error = gradient_sync(&flags(&["--bucket-cap-mb", "0"]), &config).expect_err("0 MiB");
        assert!(
            format!("{error:#}").contains("--bucket-cap-mb 0"),
            "{error:#}"
        );
        let single = gradient_sync(&flags(&["--grad-compression", "bf16"]), &config)
            .expect("a group of one");
        assert_eq!((single.rank(), single.world_size()), (0, 1));
    }

    #[test]
    fn cuda_means_this_ranks_gpu_in_a_job() {
        let mut config = DistConfig::single_process();
        assert_eq!(rank_device("cuda", &config), "cuda");
        config.world_size = 4;
        config.rank = 3;
        config.local_rank = 1;
        assert_eq!(rank_device("cuda", &config), "cuda:1");
        assert_eq!(rank_device("cuda:0", &config), "cuda:0");
        assert_eq!(rank_device("cpu", &config), "cpu");
    }
}
