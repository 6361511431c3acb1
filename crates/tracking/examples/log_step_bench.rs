//! What logging costs a training step: `RunLogger::log_metrics` (journal line,
//! batched by the sender thread) against MLflow's own Python client logging the
//! same points each step, synchronously (`MlflowClient.log_batch`, what
//! `mlflow.log_metrics` does by default) and with MLflow's async logging
//! (`synchronous=False`), side by side against one server.
//!
//! ```text
//! cargo run --release -p cardet-tracking --example log_step_bench -- [STEPS] [REPEATS]
//! ```
//! Uses `MLFLOW_TRACKING_URI` (default the stack's `http://127.0.0.1:5000`) and
//! the venv's Python. Prints one Markdown row per case with the median of the repeats.

use std::process::Command;
use std::time::{Duration, Instant};

use cardet_tracking::{LoggerOptions, MlflowClient, RunLogger, RunSpec, RunStatus, TrackingConfig};

const KEYS: [&str; 4] = [
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "lr/pg0",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let steps: i64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500);
    let repeats: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let config = TrackingConfig::from_env();
    let experiment = cardet_testkit::unique_name("bench-log-step");
    // The server must be up, or the Python side measures connection errors.
    MlflowClient::new(&config)?.get_or_create_experiment(&experiment)?;

    let mut ours = Vec::new();
    let mut ours_server_down = Vec::new();
    let mut python = Vec::new();
    let mut python_async = Vec::new();
    let mut drain = Vec::new();
    for _ in 0..repeats {
        let (per_step, drained) = time_run_logger(&config, &experiment, steps)?;
        ours.push(per_step);
        drain.push(drained);
        // A port nothing listens on: the trainer-side cost with the server down.
        let down = TrackingConfig::new("http://127.0.0.1:9");
        ours_server_down.push(time_run_logger(&down, &experiment, steps)?.0);
        python.push(time_python(&config.tracking_uri, &experiment, steps, true)?);
        python_async.push(time_python(
            &config.tracking_uri,
            &experiment,
            steps,
            false,
        )?);
    }
    let (ours, ours_server_down, python, drain) = (
        median(ours),
        median(ours_server_down),
        median(python),
        median(drain),
    );
    let python_async = median(python_async);
    println!(
        "| case | ours (median per step) | baseline (median per step) | ratio | runs |\n|---|---|---|---|---|"
    );
    println!(
        "| {} metrics/step, server up | {:.1} µs | MLflow {} Python `log_batch` per step {:.1} µs | **{:.0}x** | {repeats} x {steps} steps |",
        KEYS.len(),
        ours * 1e6,
        python_mlflow_version(),
        python * 1e6,
        python / ours
    );
    println!(
        "| {} metrics/step, server up | {:.1} µs | MLflow Python `log_batch(synchronous=False)` per step {:.1} µs | **{:.0}x** | {repeats} x {steps} steps |",
        KEYS.len(),
        ours * 1e6,
        python_async * 1e6,
        python_async / ours
    );
    println!(
        "| {} metrics/step, server down | {:.1} µs | synchronous baseline {:.1} µs | **{:.0}x** | {repeats} x {steps} steps |",
        KEYS.len(),
        ours_server_down * 1e6,
        python * 1e6,
        python / ours_server_down
    );
    println!(
        "\nsender thread: all {steps} steps acknowledged {:.0} ms after the last step (median)",
        drain * 1e3
    );
    Ok(())
}

/// Seconds per `log_metrics` call, and seconds from the last call until the server had everything.
fn time_run_logger(
    config: &TrackingConfig,
    experiment: &str,
    steps: i64,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let run_dir = tempfile::tempdir()?;
    let options = LoggerOptions {
        finish_timeout: Duration::from_secs(60),
        ..LoggerOptions::default()
    };
    let spec = RunSpec::new(experiment).with_run_name("rust-run-logger");
    let mut logger = RunLogger::open_with(run_dir.path(), config, &spec, options)?;
    let started = Instant::now();
    for step in 0..steps {
        let values = KEYS.map(|key| (key, 1.0 / (step + 1) as f64));
        logger.log_metrics(step, values)?;
    }
    let per_step = started.elapsed().as_secs_f64() / steps as f64;
    let logged = Instant::now();
    // The down case gives up at once: count its drain as zero, it is not reported.
    if config.tracking_uri.ends_with(":9") {
        drop(logger);
        return Ok((per_step, 0.0));
    }
    let report = logger.finish(RunStatus::Finished)?;
    if report.unsent_events > 0 {
        return Err(format!("{} events were not delivered", report.unsent_events).into());
    }
    Ok((per_step, logged.elapsed().as_secs_f64()))
}

fn time_python(
    uri: &str,
    experiment: &str,
    steps: i64,
    synchronous: bool,
) -> Result<f64, Box<dyn std::error::Error>> {
    let synchronous = if synchronous { "True" } else { "False" };
    let script = format!(
        r#"
import time
import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
mlflow.set_tracking_uri({uri:?})
client = MlflowClient()
experiment = client.get_experiment_by_name({experiment:?})
run = client.create_run(experiment.experiment_id, run_name="python-log-batch")
keys = {keys:?}
started = time.perf_counter()
for step in range({steps}):
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(k, 1.0 / (step + 1), now, step) for k in keys], synchronous={synchronous})
print(time.perf_counter() - started)
mlflow.flush_async_logging()
client.set_terminated(run.info.run_id)
"#,
        keys = KEYS,
    );
    let output = Command::new(cardet_testkit::venv_python())
        .args(["-c", &script])
        .output()?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned().into());
    }
    // MLflow 3 prints a "View run" line of its own after ours.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let seconds: f64 = stdout.lines().next().unwrap_or("").trim().parse()?;
    Ok(seconds / steps as f64)
}

fn python_mlflow_version() -> String {
    Command::new(cardet_testkit::venv_python())
        .args(["-c", "import mlflow; print(mlflow.__version__)"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
