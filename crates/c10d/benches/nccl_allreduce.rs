//! All-reduce of 3.2M floats on one GPU through NCCL: cardet-c10d's ProcessGroupNCCL
//! against torch.distributed's, each a group of one rank (NCCL refuses two ranks on
//! one device, and the machines lent so far have one GPU), in one run, rounds
//! interleaved. Each timed call is the all-reduce plus a device synchronize; median
//! of `--iterations` after 5 warm-ups per round, median over rounds. Prints a table
//! with the ratio (baseline time / ours: above 1 means ours is faster).
//!
//! `cargo bench -p cardet-c10d --features cuda --bench nccl_allreduce [-- --floats N --iterations N --rounds N]`
//!
//! What it measures is the bridge's own cost around NCCL (shim, c10d's work object,
//! stream waits) against PyTorch's Python binding of the same c10d call; with one
//! rank NCCL moves no data between devices.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cardet_c10d::{Backend, DistConfig, ProcessGroup, ReduceOp};
use tch::{Device, Kind, Tensor};

const BASELINE: &str = include_str!("torch_nccl_allreduce.py");
const WARMUP: usize = 5;

fn main() -> anyhow::Result<()> {
    let (n_floats, iterations, rounds) = parse_settings()?;
    // c10d's NCCL build links libtorch_cuda, so libtorch's own answer holds here.
    anyhow::ensure!(
        tch::Cuda::is_available(),
        "libtorch sees no CUDA device: this bench needs one"
    );
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("torch_nccl_allreduce.py");
    std::fs::write(&script, BASELINE)?;

    let group = ProcessGroup::connect(&DistConfig {
        master_port: cardet_testkit::free_port(),
        ..DistConfig::single_process()
            .with_backend(Backend::Nccl)
            .with_timeout(Duration::from_secs(120))
    })?;
    let tensor = [Tensor::randn(
        [n_floats as i64],
        (Kind::Float, Device::Cuda(0)),
    )];

    let mut ours = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..rounds {
        let mut times = Vec::with_capacity(iterations);
        for iteration in 0..WARMUP + iterations {
            let started = Instant::now();
            group.all_reduce(&tensor, ReduceOp::Sum)?;
            tch::Cuda::synchronize(0);
            if iteration >= WARMUP {
                times.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        ours.push(median(&mut times));

        let output = Command::new(cardet_testkit::venv_python())
            .arg(&script)
            .args([
                n_floats.to_string(),
                WARMUP.to_string(),
                iterations.to_string(),
                cardet_testkit::free_port().to_string(),
            ])
            .output()
            .context("running the torch.distributed baseline")?;
        if !output.status.success() {
            bail!(
                "torch.distributed baseline failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let value: f64 = text
            .trim()
            .lines()
            .last()
            .context("the baseline printed nothing")?
            .parse()
            .with_context(|| format!("the baseline printed {text:?}"))?;
        baseline.push(value);
    }
    let (ours_ms, baseline_ms) = (median(&mut ours), median(&mut baseline));
    println!(
        "all-reduce (sum) of {n_floats} f32 on cuda:0, NCCL group of one: median of {iterations} after {WARMUP} warm-ups, median over {rounds} rounds"
    );
    println!("| case | cardet-c10d | torch.distributed nccl | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| sum | {ours_ms:.3} ms [{:.3}..{:.3}] | {baseline_ms:.3} ms [{:.3}..{:.3}] | **{:.2}x** |",
        ours[0],
        ours[ours.len() - 1],
        baseline[0],
        baseline[baseline.len() - 1],
        baseline_ms / ours_ms
    );
    Ok(())
}

/// Sorts and returns the median.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn parse_settings() -> anyhow::Result<(usize, usize, usize)> {
    let (mut n_floats, mut iterations, mut rounds) = (3_200_000, 50, 5);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> anyhow::Result<usize> {
            Ok(args
                .next()
                .with_context(|| format!("{arg} needs a value"))?
                .parse()?)
        };
        match arg.as_str() {
            "--floats" => n_floats = value()?,
            "--iterations" => iterations = value()?,
            "--rounds" => rounds = value()?,
            // cargo bench appends --bench.
            "--bench" => {}
            other => bail!("unknown argument {other}; expected --floats, --iterations or --rounds"),
        }
    }
    if iterations == 0 || rounds == 0 || n_floats == 0 {
        bail!("--floats, --iterations and --rounds must be at least 1");
    }
    Ok((n_floats, iterations, rounds))
}
