//! All-reduce of 3.2M floats between two local processes: cardet-c10d against
//! torch.distributed's gloo backend from the venv's Python, in one run, both
//! started by cardet's launcher. Prints the medians and the ratio (baseline
//! time / ours: above 1 means ours is faster).
//!
//! `cargo bench -p cardet-c10d --bench allreduce [-- --floats N --iterations N]`
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
    launch(&ours).context("running cardet-c10d ranks")?;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_gloo_allreduce.py");
    let python = cardet_testkit::venv_python();
    let baseline_args: Vec<OsString> = vec![
        script.into_os_string(),
        settings.n_floats.to_string().into(),
        WARMUP.to_string().into(),
        settings.iterations.to_string().into(),
    ];
    let mut baseline = LaunchConfig::new(2, &python, baseline_args);
    baseline.env = vec![(OUT_VAR.into(), baseline_path.clone().into_os_string())];
    launch(&baseline)
        .with_context(|| format!("running torch.distributed ranks with {}", python.display()))?;

    let ours = read_medians(&ours_path)?;
    let baseline = read_medians(&baseline_path)?;
    println!(
        "all-reduce of {} f32 between 2 local processes, median of {} after {WARMUP} warm-up (rank 0)",
        settings.n_floats, settings.iterations
    );
    println!("| case | cardet-c10d | torch.distributed gloo | ratio |");
    println!("|---|---|---|---|");
    for (case, ours_ms) in &ours {
        let Some((_, baseline_ms)) = baseline.iter().find(|(name, _)| name == case) else {
            bail!("baseline has no case {case}");
        };
        println!(
            "| {case} | {ours_ms:.2} ms | {baseline_ms:.2} ms | **{:.2}x** |",
            baseline_ms / ours_ms
        );
    }
    Ok(())
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
    Ok(times_ms[times_ms.len() / 2])
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
            // cargo bench appends --bench.
            "--bench" => {}
            other => bail!("unknown argument {other}; expected --floats N or --iterations N"),
        }
    }
    if settings.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    Ok(settings)
}
