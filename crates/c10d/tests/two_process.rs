//! Two real local processes over gloo. This binary is the driver and, when
//! re-executed with `CARDET_C10D_TEST_ROLE=<scenario>`, each worker rank: the
//! workers save what they computed under `CARDET_C10D_TEST_DIR`, and the driver
//! checks it against values it derives from the workers' own inputs.
//!
//! Run with `cargo test -p cardet-c10d --test two_process [-- <name filter>]`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use cardet_c10d::{
    Compression, DataParallel, DistConfig, Error, GradientBuckets, LaunchConfig, ProcessGroup,
    ReduceOp, launch,
};
use tch::{Kind, Tensor};

const ROLE_VAR: &str = "CARDET_C10D_TEST_ROLE";
const DIR_VAR: &str = "CARDET_C10D_TEST_DIR";
/// Per-operation timeout the workers use in the failure scenarios.
const FAILURE_TIMEOUT: Duration = Duration::from_secs(3);
/// Gradient shapes for the bucketing scenario: mixed ranks, one above the cap.
const GRADIENT_SHAPES: &[&[i64]] = &[
    &[64, 3, 3, 3],
    &[64],
    &[128, 64, 1, 1],
    &[10],
    &[1000],
    &[7, 7],
];
/// 10 KiB: several buckets for the shapes above, and [128, 64, 1, 1] alone.
const SMALL_BUCKET_CAP_MB: f64 = 10.0 / 1024.0;

type Case = fn() -> anyhow::Result<()>;

fn main() -> ExitCode {
    if let Ok(scenario) = std::env::var(ROLE_VAR) {
        return match worker(&scenario) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("worker {scenario}: {error:#}");
                ExitCode::from(2)
            }
        };
    }
    let cases: &[(&str, Case)] = &[
        (
            "all_reduce_and_broadcast_match_on_both_ranks",
            all_reduce_and_broadcast_match_on_both_ranks,
        ),
        (
            "broadcast_parameters_copies_rank0_weights_and_buffers",
            broadcast_parameters_copies_rank0_weights_and_buffers,
        ),
        (
            "data_parallel_sgd_matches_full_batch_training",
            data_parallel_sgd_matches_full_batch_training,
        ),
        (
            "bucketed_average_equals_unbucketed",
            bucketed_average_equals_unbucketed,
        ),
        (
            "killed_peer_gives_an_error_naming_the_operation",
            killed_peer_gives_an_error_naming_the_operation,
        ),
        (
            "stalled_peer_times_out_with_an_error",
            stalled_peer_times_out_with_an_error,
        ),
        (
            "launcher_reports_the_failed_rank_and_stops_the_others",
            launcher_reports_the_failed_rank_and_stops_the_others,
        ),
        (
            "launcher_kills_a_rank_that_ignores_sigterm",
            launcher_kills_a_rank_that_ignores_sigterm,
        ),
        (
            "launcher_forwards_sigterm_to_the_workers",
            launcher_forwards_sigterm_to_the_workers,
        ),
        (
            "world_size_without_rank_is_a_clear_error",
            world_size_without_rank_is_a_clear_error,
        ),
    ];
    let args = HarnessArgs::parse(std::env::args().skip(1));
    if args.list {
        // cargo-nextest discovers tests through libtest's `--list --format terse`.
        if !args.ignored {
            for (name, _) in cases.iter().filter(|(name, _)| args.selects(name)) {
                println!("{name}: test");
            }
        }
        return ExitCode::SUCCESS;
    }
    let mut n_failed = 0;
    for (name, case) in cases.iter().filter(|(name, _)| args.selects(name)) {
        if args.ignored {
            continue;
        }
        let started = Instant::now();
        match case() {
            Ok(()) => println!("test {name} ... ok ({:.1?})", started.elapsed()),
            Err(error) => {
                n_failed += 1;
                println!("test {name} ... FAILED: {error:#}");
            }
        }
    }
    if n_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The part of libtest's command line that `cargo test` and `cargo nextest` use.
#[derive(Default)]
struct HarnessArgs {
    filter: Option<String>,
    exact: bool,
    list: bool,
    ignored: bool,
}

impl HarnessArgs {
    fn parse(args: impl Iterator<Item = String>) -> HarnessArgs {
        let mut parsed = HarnessArgs::default();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--list" => parsed.list = true,
                "--exact" => parsed.exact = true,
                "--ignored" => parsed.ignored = true,
                // Flags whose value is the next argument, which is no filter.
                "--format" | "--test-threads" | "--logfile" | "--skip" | "--color" | "-Z" => {
                    args.next();
                }
                flag if flag.starts_with('-') => {}
                filter => parsed.filter = Some(filter.to_owned()),
            }
        }
        parsed
    }

    fn selects(&self, name: &str) -> bool {
        match &self.filter {
            None => true,
            Some(filter) if self.exact => name == filter,
            Some(filter) => name.contains(filter.as_str()),
        }
    }
}

// ---- driver cases ----

fn all_reduce_and_broadcast_match_on_both_ranks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    launch_workers("collectives", dir.path())?;
    let [rank0, rank1] = load_ranks(dir.path())?;
    for (tensor_idx, _) in rank_inputs(0).iter().enumerate() {
        let input0 = named(&rank0, &format!("input_{tensor_idx}"))?;
        let input1 = named(&rank1, &format!("input_{tensor_idx}"))?;
        ensure!(
            !input0.equal(input1),
            "tensor {tensor_idx}: the ranks' inputs should differ"
        );
        let expected_sum = input0 + input1;
        let expected_average = &expected_sum / 2.0;
        for (key, expected) in [
            ("sum", &expected_sum),
            ("average", &expected_average),
            ("broadcast", input1),
        ] {
            let key = format!("{key}_{tensor_idx}");
            let on_rank0 = named(&rank0, &key)?;
            let on_rank1 = named(&rank1, &key)?;
            ensure!(on_rank0.equal(on_rank1), "{key}: ranks 0 and 1 differ");
            ensure!(on_rank0.equal(expected), "{key}: not the expected value");
        }
    }
    for rank in 0..2 {
        let env = std::fs::read_to_string(dir.path().join(format!("env{rank}.txt")))?;
        ensure!(
            env.starts_with(&format!("RANK={rank} LOCAL_RANK={rank} WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=")),
            "rank {rank} saw {env}"
        );
    }
    Ok(())
}

fn broadcast_parameters_copies_rank0_weights_and_buffers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    launch_workers("parameters", dir.path())?;
    let [rank0, rank1] = load_ranks(dir.path())?;
    for var_idx in 0..3 {
        let rank0_before = named(&rank0, &format!("before_{var_idx}"))?;
        let rank1_before = named(&rank1, &format!("before_{var_idx}"))?;
        ensure!(
            !rank0_before.equal(rank1_before),
            "var {var_idx}: the ranks start equal"
        );
        for (rank, tensors) in [(0, &rank0), (1, &rank1)] {
            let after = named(tensors, &format!("after_{var_idx}"))?;
            ensure!(
                after.equal(rank0_before),
                "var {var_idx}: rank {rank} does not hold rank 0's value"
            );
        }
    }
    let leaf0 = named(&rank0, "leaf_input")?;
    let leaf1 = named(&rank1, "leaf_input")?;
    let expected = (leaf0 + leaf1) / 2.0;
    for (rank, tensors) in [(0, &rank0), (1, &rank1)] {
        ensure!(
            named(tensors, "leaf")?.equal(&expected),
            "rank {rank}: averaged leaf is wrong"
        );
    }
    Ok(())
}

/// Two ranks, each on half of the batch, with averaged gradients, must follow
/// the same weights as one process on the whole batch, from rank 0's start.
fn data_parallel_sgd_matches_full_batch_training() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    launch_workers("sgd", dir.path())?;
    let [rank0, rank1] = load_ranks(dir.path())?;
    let weight = named(&rank0, "initial_weight")?
        .copy()
        .set_requires_grad(true);
    let bias = named(&rank0, "initial_bias")?
        .copy()
        .set_requires_grad(true);
    let (inputs, targets) = regression_batch();
    train_linear(&weight, &bias, &inputs, &targets, None)?;
    for (name, expected) in [("weight", &weight), ("bias", &bias)] {
        let on_rank0 = named(&rank0, name)?;
        ensure!(
            on_rank0.equal(named(&rank1, name)?),
            "{name}: ranks 0 and 1 differ"
        );
        ensure!(
            on_rank0.allclose(&expected.detach(), 1e-5, 1e-6, false),
            "{name}: data-parallel {on_rank0:?} differs from full-batch {expected:?}"
        );
    }
    let start = named(&rank1, "own_start_weight")?;
    ensure!(
        !start.equal(named(&rank0, "initial_weight")?),
        "rank 1 started from rank 0's weights anyway"
    );
    Ok(())
}

fn bucketed_average_equals_unbucketed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    launch_workers("buckets", dir.path())?;
    let [rank0, rank1] = load_ranks(dir.path())?;
    for grad_idx in 0..GRADIENT_SHAPES.len() {
        let grad0 = named(&rank0, &format!("grad_{grad_idx}"))?;
        let grad1 = named(&rank1, &format!("grad_{grad_idx}"))?;
        let reference = named(&rank0, &format!("unbucketed_{grad_idx}"))?;
        ensure!(
            reference.equal(&((grad0 + grad1) / 2.0)),
            "gradient {grad_idx}: unbucketed mean is wrong"
        );
        for (compression, unit_roundoff) in [
            ("none", 0.0),
            ("fp16", 2f64.powi(-11)),
            ("bf16", 2f64.powi(-8)),
        ] {
            let key = format!("{compression}_{grad_idx}");
            let on_rank0 = named(&rank0, &key)?;
            ensure!(
                on_rank0.equal(named(&rank1, &key)?),
                "{key}: ranks 0 and 1 differ"
            );
            ensure!(
                on_rank0.size() == reference.size() && on_rank0.kind() == Kind::Float,
                "{key}: shape or dtype changed"
            );
            if compression == "none" {
                ensure!(
                    on_rank0.equal(reference),
                    "{key}: bucketed mean differs from the unbucketed one"
                );
                continue;
            }
            // Three roundings to the wire type (a/2, b/2, their sum), each within
            // the unit roundoff of its magnitude; the slack covers fp16 subnormals.
            let bound = (grad0.abs() + grad1.abs()) * (1.01 * unit_roundoff) + 2e-7;
            let error = (on_rank0 - reference).abs();
            let n_outside = i64::try_from(error.gt_tensor(&bound).sum(Kind::Int64))?;
            ensure!(
                n_outside == 0,
                "{key}: {n_outside} values outside the {compression} rounding bound"
            );
            if grad_idx == 0 {
                let max_error = f64::try_from(error.max())?;
                ensure!(
                    max_error > 0.0,
                    "{key}: identical to the uncompressed mean; was it compressed?"
                );
            }
        }
    }
    Ok(())
}

fn killed_peer_gives_an_error_naming_the_operation() -> anyhow::Result<()> {
    survivor_reports_error("kill-peer")
}

fn stalled_peer_times_out_with_an_error() -> anyhow::Result<()> {
    survivor_reports_error("stall-peer")
}

/// Rank 1 dies (or stalls) after the rendezvous; rank 0's next all-reduce must
/// come back as an error naming `all_reduce`, well before any hang detector.
fn survivor_reports_error(scenario: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = cardet_testkit::free_port();
    let mut children = Vec::new();
    for rank in 0..2 {
        let child = worker_command(scenario, dir.path())
            .envs(rank_env(rank, 2, port))
            .spawn()
            .context("starting a worker")?;
        children.push(child);
    }
    // The survivor has FAILURE_TIMEOUT per operation; far past that is a hang.
    let deadline = Instant::now() + FAILURE_TIMEOUT * 10;
    let survivor_status = loop {
        if let Some(status) = children[0].try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let Some(survivor_status) = survivor_status else {
        bail!(
            "rank 0 still running {:?} after its peer went away",
            FAILURE_TIMEOUT * 10
        );
    };
    ensure!(
        survivor_status.success(),
        "rank 0 exited with {survivor_status}"
    );
    let report = std::fs::read_to_string(dir.path().join("survivor.txt"))?;
    let (elapsed_ms, message) = report
        .split_once('\n')
        .context("survivor report has two lines")?;
    ensure!(
        message.starts_with("all_reduce on rank 0 failed: "),
        "error was {message:?}"
    );
    let elapsed = Duration::from_millis(elapsed_ms.parse()?);
    // Not a speed check: only that the timeout, not a hang, ended the wait.
    ensure!(
        elapsed < FAILURE_TIMEOUT * 3,
        "the error came after {elapsed:?}: {message}"
    );
    Ok(())
}

fn launcher_reports_the_failed_rank_and_stops_the_others() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let error = launch_workers("fail-rank", dir.path()).expect_err("rank 1 exits with 7");
    match error {
        Error::RankFailed {
            rank: 1, status, ..
        } => ensure!(status.code() == Some(7), "status {status}"),
        other => bail!("expected rank 1 to be named, got {other}"),
    }
    let survivor = read_pid(&dir.path().join("pid0.txt"))?;
    ensure!(
        !process_exists(survivor),
        "rank 0 (pid {survivor}) still runs"
    );
    ensure!(
        !dir.path().join("finished0.txt").exists(),
        "rank 0 ran to completion instead of being stopped"
    );
    Ok(())
}

fn launcher_kills_a_rank_that_ignores_sigterm() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let error = launch_workers_with_grace("fail-rank-deaf", dir.path(), Duration::from_secs(1))
        .expect_err("rank 1 exits with 7");
    match error {
        Error::RankFailed { rank: 1, .. } => {}
        other => bail!("expected rank 1 to be named, got {other}"),
    }
    let survivor = read_pid(&dir.path().join("pid0.txt"))?;
    ensure!(
        !process_exists(survivor),
        "rank 0 (pid {survivor}) still runs"
    );
    ensure!(
        !dir.path().join("finished0.txt").exists(),
        "rank 0 ran to completion instead of being killed"
    );
    Ok(())
}

fn launcher_forwards_sigterm_to_the_workers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pid_files = [dir.path().join("pid0.txt"), dir.path().join("pid1.txt")];
    let watched = pid_files.clone();
    // Sends SIGTERM to this (the launcher's) process once both workers are up.
    let sender = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !watched.iter().all(|path| path.exists()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    });
    let result = launch_workers("sleep", dir.path());
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("signal thread panicked"))?;
    match result {
        Err(Error::Interrupted { signal }) => ensure!(signal == libc::SIGTERM, "signal {signal}"),
        other => bail!("expected an interrupted launch, got {other:?}"),
    }
    for path in &pid_files {
        let pid = read_pid(path)?;
        ensure!(!process_exists(pid), "worker {pid} still runs");
    }
    ensure!(
        !dir.path().join("finished0.txt").exists(),
        "rank 0 slept to the end"
    );
    Ok(())
}

fn world_size_without_rank_is_a_clear_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = worker_command("collectives", dir.path())
        .env("WORLD_SIZE", "2")
        .env_remove("RANK")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", "29500")
        .stderr(Stdio::piped())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(2),
        "exit status {}",
        output.status
    );
    ensure!(
        stderr.contains("environment variable RANK: is not set, but WORLD_SIZE is 2"),
        "stderr was {stderr}"
    );
    Ok(())
}

// ---- worker scenarios ----

fn worker(scenario: &str) -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::var(DIR_VAR).context(DIR_VAR)?);
    let rank: usize = std::env::var("RANK")
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    if scenario == "fail-rank-deaf" && rank == 0 {
        // Before the pid file: rank 1 fails as soon as that file appears.
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    std::fs::write(
        dir.join(format!("pid{rank}.txt")),
        std::process::id().to_string(),
    )?;
    match scenario {
        "collectives" => collectives_worker(&dir),
        "buckets" => buckets_worker(&dir),
        "parameters" => parameters_worker(&dir),
        "sgd" => sgd_worker(&dir),
        "kill-peer" | "stall-peer" => failing_peer_worker(scenario, &dir),
        "fail-rank" | "fail-rank-deaf" if rank == 1 => {
            // Fail only once rank 0 is up, so the test can check it was stopped.
            while !dir.join("pid0.txt").exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::process::exit(7)
        }
        "fail-rank" | "fail-rank-deaf" | "sleep" => {
            std::thread::sleep(Duration::from_secs(60));
            std::fs::write(dir.join(format!("finished{rank}.txt")), "")?;
            Ok(())
        }
        other => bail!("unknown scenario {other}"),
    }
}

fn collectives_worker(dir: &Path) -> anyhow::Result<()> {
    let config = DistConfig::from_env()?;
    let group = ProcessGroup::new(&config)?;
    let rank = group.rank();
    let env: Vec<String> = [
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    ]
    .iter()
    .map(|name| format!("{name}={}", std::env::var(name).unwrap_or_default()))
    .collect();
    std::fs::write(dir.join(format!("env{rank}.txt")), env.join(" "))?;
    let inputs = rank_inputs(rank);
    let summed = deep_copies(&inputs);
    group.all_reduce(&summed, ReduceOp::Sum)?;
    let averaged = deep_copies(&inputs);
    group.all_reduce(&averaged, ReduceOp::Average)?;
    let broadcast = deep_copies(&inputs);
    group.broadcast(&broadcast, 1)?;
    group.barrier()?;
    let mut named = Vec::new();
    for (tensor_idx, tensor) in inputs.iter().enumerate() {
        named.push((format!("input_{tensor_idx}"), tensor.shallow_clone()));
        named.push((
            format!("sum_{tensor_idx}"),
            summed[tensor_idx].shallow_clone(),
        ));
        named.push((
            format!("average_{tensor_idx}"),
            averaged[tensor_idx].shallow_clone(),
        ));
        named.push((
            format!("broadcast_{tensor_idx}"),
            broadcast[tensor_idx].shallow_clone(),
        ));
    }
    save_rank(dir, rank, &named)
}

fn parameters_worker(dir: &Path) -> anyhow::Result<()> {
    let group = ProcessGroup::new(&DistConfig::from_env()?)?;
    let rank = group.rank();
    tch::manual_seed(3000 + rank as i64);
    let float = (Kind::Float, tch::Device::Cpu);
    // A trainable weight, a BatchNorm running mean and its int64 batch counter.
    let vars = [
        Tensor::randn([8, 3], float).set_requires_grad(true),
        Tensor::randn([8], float),
        Tensor::from_slice(&[10 + rank as i64]),
    ];
    let before: Vec<Tensor> = vars.iter().map(|var| var.detach().copy()).collect();
    group.broadcast_parameters(&vars)?;
    // Averaging a leaf that requires grad must not trip autograd's in-place check.
    let leaf = Tensor::randn([5], float).set_requires_grad(true);
    let leaf_input = leaf.detach().copy();
    group.all_reduce(std::slice::from_ref(&leaf), ReduceOp::Average)?;
    let mut named = vec![
        ("leaf_input".to_owned(), leaf_input),
        ("leaf".to_owned(), leaf.detach()),
    ];
    for (var_idx, (var, before)) in vars.iter().zip(before).enumerate() {
        named.push((format!("before_{var_idx}"), before));
        named.push((format!("after_{var_idx}"), var.detach()));
    }
    save_rank(dir, rank, &named)
}

fn sgd_worker(dir: &Path) -> anyhow::Result<()> {
    let buckets = GradientBuckets::new(SMALL_BUCKET_CAP_MB, Compression::None)?;
    let data_parallel = DataParallel::new(&DistConfig::from_env()?, buckets)?;
    let rank = data_parallel.rank();
    // Each rank initialises differently; the broadcast must make them agree.
    tch::manual_seed(4000 + rank as i64);
    let float = (Kind::Float, tch::Device::Cpu);
    let weight = Tensor::randn([REGRESSION_FEATURES, 1], float).set_requires_grad(true);
    let bias = Tensor::randn([1], float).set_requires_grad(true);
    let own_start_weight = weight.detach().copy();
    data_parallel.broadcast_parameters(&[weight.shallow_clone(), bias.shallow_clone()])?;
    let initial_weight = weight.detach().copy();
    let initial_bias = bias.detach().copy();
    let (inputs, targets) = regression_batch();
    let shard_rows = inputs.size()[0] / data_parallel.world_size() as i64;
    let shard = |tensor: &Tensor| tensor.narrow(0, rank as i64 * shard_rows, shard_rows);
    train_linear(
        &weight,
        &bias,
        &shard(&inputs),
        &shard(&targets),
        Some(&data_parallel),
    )?;
    data_parallel.barrier()?;
    let named = vec![
        ("own_start_weight".to_owned(), own_start_weight),
        ("initial_weight".to_owned(), initial_weight),
        ("initial_bias".to_owned(), initial_bias),
        ("weight".to_owned(), weight.detach()),
        ("bias".to_owned(), bias.detach()),
    ];
    save_rank(dir, rank, &named)
}

fn buckets_worker(dir: &Path) -> anyhow::Result<()> {
    let group = ProcessGroup::new(&DistConfig::from_env()?)?;
    let rank = group.rank();
    tch::manual_seed(2000 + rank as i64);
    let grads: Vec<Tensor> = GRADIENT_SHAPES
        .iter()
        .map(|shape| Tensor::randn(*shape, (Kind::Float, tch::Device::Cpu)))
        .collect();
    let unbucketed = deep_copies(&grads);
    group.all_reduce(&unbucketed, ReduceOp::Average)?;
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (grad_idx, grad) in grads.iter().enumerate() {
        named.push((format!("grad_{grad_idx}"), grad.shallow_clone()));
        named.push((
            format!("unbucketed_{grad_idx}"),
            unbucketed[grad_idx].shallow_clone(),
        ));
    }
    for (label, compression) in [
        ("none", Compression::None),
        ("fp16", Compression::Fp16),
        ("bf16", Compression::Bf16),
    ] {
        let bucketed = deep_copies(&grads);
        GradientBuckets::new(SMALL_BUCKET_CAP_MB, compression)?
            .all_reduce_average(&group, &bucketed)?;
        for (grad_idx, grad) in bucketed.iter().enumerate() {
            named.push((format!("{label}_{grad_idx}"), grad.shallow_clone()));
        }
    }
    save_rank(dir, rank, &named)
}

fn failing_peer_worker(scenario: &str, dir: &Path) -> anyhow::Result<()> {
    let config = DistConfig::from_env()?.with_timeout(FAILURE_TIMEOUT);
    let group = ProcessGroup::new(&config)?;
    // Both ranks are connected before one of them goes away.
    group.barrier()?;
    if group.rank() == 1 {
        if scenario == "kill-peer" {
            // SAFETY: raise has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        std::thread::sleep(FAILURE_TIMEOUT * 20);
        return Ok(());
    }
    let tensor = [Tensor::ones([1 << 16], (Kind::Float, tch::Device::Cpu))];
    let started = Instant::now();
    let result = group.all_reduce(&tensor, ReduceOp::Sum);
    let elapsed = started.elapsed();
    let error = match result {
        Ok(()) => bail!("all_reduce succeeded without a peer"),
        Err(error) => error,
    };
    let first_line = error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    std::fs::write(
        dir.join("survivor.txt"),
        format!("{}\n{first_line}", elapsed.as_millis()),
    )?;
    // Drop the group too: tear-down after a failure must not hang or abort.
    drop(group);
    Ok(())
}

// ---- helpers ----

const REGRESSION_FEATURES: i64 = 4;

/// The same 16-row regression batch in every process.
fn regression_batch() -> (Tensor, Tensor) {
    tch::manual_seed(42);
    let float = (Kind::Float, tch::Device::Cpu);
    let inputs = Tensor::randn([16, REGRESSION_FEATURES], float);
    let targets = Tensor::randn([16, 1], float);
    (inputs, targets)
}

/// Plain SGD on a mean squared error, gradients averaged through `sync` if given.
fn train_linear(
    weight: &Tensor,
    bias: &Tensor,
    inputs: &Tensor,
    targets: &Tensor,
    sync: Option<&DataParallel>,
) -> anyhow::Result<()> {
    const LEARNING_RATE: f64 = 0.1;
    for _ in 0..20 {
        let predictions = inputs.matmul(weight) + bias;
        let loss = (predictions - targets).square().mean(Kind::Float);
        loss.backward();
        let grads = [weight.grad(), bias.grad()];
        if let Some(data_parallel) = sync {
            data_parallel.all_reduce_gradients(&grads)?;
        }
        tch::no_grad(|| -> anyhow::Result<()> {
            for (param, grad) in [weight, bias].into_iter().zip(&grads) {
                let _updated: Tensor = param.shallow_clone().f_sub_(&(grad * LEARNING_RATE))?;
                let _zeroed: Tensor = grad.shallow_clone().f_zero_()?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

fn launch_workers(scenario: &str, dir: &Path) -> Result<std::process::ExitStatus, Error> {
    launch_workers_with_grace(scenario, dir, Duration::from_secs(5))
}

fn launch_workers_with_grace(
    scenario: &str,
    dir: &Path,
    grace_period: Duration,
) -> Result<std::process::ExitStatus, Error> {
    let program = std::env::current_exe().map_err(|source| Error::LaunchIo {
        context: "locating the test binary".to_owned(),
        source,
    })?;
    let mut config = LaunchConfig::new(2, program, Vec::new());
    config.env = vec![
        (OsString::from(ROLE_VAR), OsString::from(scenario)),
        (OsString::from(DIR_VAR), dir.as_os_str().to_owned()),
    ];
    config.grace_period = grace_period;
    launch(&config)
}

fn worker_command(scenario: &str, dir: &Path) -> Command {
    let mut command =
        Command::new(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("two_process")));
    command.env(ROLE_VAR, scenario).env(DIR_VAR, dir);
    command
}

fn rank_env(rank: usize, world_size: usize, port: u16) -> Vec<(String, String)> {
    vec![
        ("MASTER_ADDR".to_owned(), "127.0.0.1".to_owned()),
        ("MASTER_PORT".to_owned(), port.to_string()),
        ("WORLD_SIZE".to_owned(), world_size.to_string()),
        ("RANK".to_owned(), rank.to_string()),
        ("LOCAL_RANK".to_owned(), rank.to_string()),
    ]
}

/// Different values per rank, several shapes and two float dtypes.
fn rank_inputs(rank: usize) -> Vec<Tensor> {
    tch::manual_seed(1000 + rank as i64);
    let options = |kind| (kind, tch::Device::Cpu);
    vec![
        Tensor::randn([1000], options(Kind::Float)),
        Tensor::randn([3, 5, 7], options(Kind::Float)),
        Tensor::randn([1], options(Kind::Float)),
        Tensor::randn([17], options(Kind::Double)),
    ]
}

fn deep_copies(tensors: &[Tensor]) -> Vec<Tensor> {
    tensors.iter().map(Tensor::copy).collect()
}

fn save_rank(dir: &Path, rank: usize, named: &[(String, Tensor)]) -> anyhow::Result<()> {
    let path = dir.join(format!("rank{rank}.ot"));
    Tensor::save_multi(named, &path).with_context(|| format!("saving {}", path.display()))
}

fn load_ranks(dir: &Path) -> anyhow::Result<[Vec<(String, Tensor)>; 2]> {
    let load = |rank: usize| {
        let path = dir.join(format!("rank{rank}.ot"));
        Tensor::load_multi(&path).with_context(|| format!("loading {}", path.display()))
    };
    Ok([load(0)?, load(1)?])
}

fn named<'a>(tensors: &'a [(String, Tensor)], name: &str) -> anyhow::Result<&'a Tensor> {
    tensors
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, tensor)| tensor)
        .with_context(|| format!("no tensor {name} saved"))
}

fn read_pid(path: &Path) -> anyhow::Result<i32> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim().parse()?)
}

/// Whether `pid` is still a process (reaped children are gone).
fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the pid exists.
    unsafe { libc::kill(pid, 0) == 0 }
}
