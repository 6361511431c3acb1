//! All-reduce of 3.2M floats between two local processes: cardet-c10d against
//! torch.distributed's gloo backend from the venv's Python, in one run, both
//! started by cardet's launcher. Prints the medians and the ratio (baseline
//! time / ours: above 1 means ours is faster).
//!
//! `cargo bench -p cardet-c10d --bench allreduce [-- --floats N --iterations N --rounds N]`
//!
//! The binary is both the driver and, with `CARDET_C10D_BENCH_ROLE` set, a rank.

use std::ffi::OsString;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use cardet_c10d::{
    Compression, DistConfig, GradientBuckets, LaunchConfig, ProcessGroup, ReduceOp, launch,
};
use tch::{Kind, Tensor};

const ROLE_VAR: &str = "CARDET_C10D_BENCH_ROLE";
const OUT_VAR: &str = "CARDET_C10D_BENCH_OUT";
const WARMUP: usize = 5;

struct Settings {
    n_floats: usize,
    iterations: usize,
    rounds: usize,
}

fn main() -> anyhow::Result<()> {
    let settings = parse_settings()?;
    if std::env::var_os(ROLE_VAR).is_some() {
        return rust_rank(&settings);
    }
    let dir = tempfile::tempdir()?;
    let ours_path = dir.path().join("ours.txt");
    let baseline_path = dir.path().join("baseline.txt");

    let bench_binary = std::env::current_exe().context("locating the bench binary")?;
    let mut ours = LaunchConfig::new(2, bench_binary, std::env::args_os().skip(1).collect());
    ours.env = vec![
        (ROLE_VAR.into(), "rank".into()),
        (OUT_VAR.into(), ours_path.clone().into_os_string()),
    ];
    let script = cardet_testkit::manifest_dir().join("benches/torch_gloo_allreduce.py");
    let python = cardet_testkit::venv_python();
    let baseline_args: Vec<OsString> = vec![
        script.into_os_string(),
        settings.n_floats.to_string().into(),
        WARMUP.to_string().into(),
        settings.iterations.to_string().into(),
    ];
    let mut baseline = LaunchConfig::new(2, &python, baseline_args);
    baseline.env = vec![(OUT_VAR.into(), baseline_path.clone().into_os_string())];

    // Rounds alternate ours and the baseline, so load from other processes on a
    // shared machine falls on both sides alike.
    let mut rounds: Vec<Round> = Vec::new();
    for _ in 0..settings.rounds {
        launch(&ours).context("running cardet-c10d ranks")?;
        launch(&baseline).with_context(|| {
            format!("running torch.distributed ranks with {}", python.display())
        })?;
        rounds.push((read_medians(&ours_path)?, read_medians(&baseline_path)?));
    }

    println!(
        "all-reduce of {} f32 between 2 local processes (rank 0's time): per round the median of {} after {WARMUP} warm-up; median over {} rounds [min..max]",
        settings.n_floats, settings.iterations, settings.rounds
    );
    println!("| case | cardet-c10d | torch.distributed gloo | ratio |");
    println!("|---|---|---|---|");
    let Some((first_ours, _)) = rounds.first() else {
        bail!("no round ran");
    };
    for (case, _) in first_ours {
        let ours_ms = case_times(&rounds, case, |round| &round.0)?;
        let baseline_ms = case_times(&rounds, case, |round| &round.1)?;
        let (ours_median, baseline_median) = (median(&ours_ms), median(&baseline_ms));
        println!(
            "| {case} | {ours_median:.2} ms [{:.2}..{:.2}] | {baseline_median:.2} ms [{:.2}..{:.2}] | **{:.2}x** |",
            ours_ms[0],
            ours_ms[ours_ms.len() - 1],
            baseline_ms[0],
            baseline_ms[baseline_ms.len() - 1],
            baseline_median / ours_median
        );
    }
    Ok(())
}

type Round = (Vec<(String, f64)>, Vec<(String, f64)>);

/// One side's median for `case` in every round, sorted.
fn case_times(
    rounds: &[Round],
    case: &str,
    side: impl Fn(&Round) -> &Vec<(String, f64)>,
) -> anyhow::Result<Vec<f64>> {
    let mut times = rounds
        .iter()
        .map(|round| {
            side(round)
                .iter()
                .find(|(name, _)| name == case)
                .map(|(_, median_ms)| *median_ms)
                .with_context(|| format!("a round has no case {case}"))
        })
        .collect::<anyhow::Result<Vec<f64>>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times)
}

fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

fn rust_rank(settings: &Settings) -> anyhow::Result<()> {
    let group = ProcessGroup::new(&DistConfig::from_env()?)?;
    tch::manual_seed(group.rank() as i64);
    let tensor = [Tensor::randn(
        [settings.n_floats as i64],
        (Kind::Float, tch::Device::Cpu),
    )];
    // One 12.8 MB tensor fits one 25 MB bucket, as a DDP bucket would hold it.
    let buckets = GradientBuckets::new(25.0, Compression::None)?;
    let fp16_buckets = GradientBuckets::new(25.0, Compression::Fp16)?;
    let results = [
        (
            "sum",
            measure(&group, settings, || {
                group.all_reduce(&tensor, ReduceOp::Sum)
            })?,
        ),
        (
            "average",
            measure(&group, settings, || {
                buckets.all_reduce_average(&group, &tensor)
            })?,
        ),
        (
            "average_fp16",
            measure(&group, settings, || {
                fp16_buckets.all_reduce_average(&group, &tensor)
            })?,
        ),
    ];
    if group.rank() == 0 {
        let out = std::env::var(OUT_VAR).context(OUT_VAR)?;
        let lines: String = results
            .iter()
            .map(|(case, median_ms)| format!("{case} {median_ms}\n"))
            .collect();
        std::fs::write(&out, lines).with_context(|| format!("writing {out}"))?;
    }
    Ok(())
}

fn measure(
    group: &ProcessGroup,
    settings: &Settings,
    mut case: impl FnMut() -> Result<(), cardet_c10d::Error>,
) -> anyhow::Result<f64> {
    let mut times_ms = Vec::with_capacity(settings.iterations);
    for iteration in 0..WARMUP + settings.iterations {
        group.barrier()?;
        let started = Instant::now();
        case()?;
        if iteration >= WARMUP {
            times_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times_ms.sort_by(f64::total_cmp);
    Ok(median(&times_ms))
}

fn read_medians(path: &Path) -> anyhow::Result<Vec<(String, f64)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| {
            let (case, median_ms) = line
                .split_once(' ')
                .with_context(|| format!("bad line {line:?}"))?;
            Ok((case.to_owned(), median_ms.parse()?))
        })
        .collect()
}

fn parse_settings() -> anyhow::Result<Settings> {
    let mut settings = Settings {
        n_floats: 3_200_000,
        iterations: 30,
        rounds: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--floats" => {
                settings.n_floats = args.next().context("--floats needs a value")?.parse()?
            }
            "--iterations" => {
                settings.iterations = args.next().context("--iterations needs a value")?.parse()?
            }
            "--rounds" => {
                settings.rounds = args.next().context("--rounds needs a value")?.parse()?
            }
            // cargo bench appends --bench.
            "--bench" => {}
            other => {
                bail!("unknown argument {other}; expected --floats N, --iterations N or --rounds N")
            }
        }
    }
    if settings.iterations == 0 || settings.rounds == 0 {
        bail!("--iterations and --rounds must be at least 1");
    }
    Ok(settings)
}
