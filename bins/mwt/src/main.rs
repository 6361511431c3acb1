//! `mwt`: the trainer. It will train, validate, export and serve predictions of the
//! YOLOv8 detector on libtorch (through tch), on one process or data parallel.
//!
//! Built: `info`, `train` (tracked in MLflow when `MLFLOW_TRACKING_URI` is set),
//! `mlflow-sync`, `val`, `export`, `predict`, `eval`, and `launch` (N local
//! data-parallel ranks of `mwt train`, torchrun-style).

mod distributed;
mod eval;
mod export;
mod mlflow;
mod predict;
mod train;
mod val;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Train, validate and export the YOLOv8 car detector on libtorch.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  mwt info              # which libtorch, which devices\n  mwt info --json"
)]
struct Flags {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Which libtorch this binary loaded, its version, threads and devices.
    Info {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Train YOLOv8 on a YOLO dataset (Ultralytics' recipe and argument names).
    Train(Box<train::TrainFlags>),
    /// P, R, mAP@0.5, mAP@0.5:0.95 and per-class AP of a checkpoint or ONNX model.
    Val(val::ValFlags),
    /// Export a checkpoint to ONNX in a Triton model repository.
    Export(export::ExportFlags),
    /// Run a checkpoint (tch) or an ONNX model on images; JSON and annotated images out.
    Predict(predict::PredictFlags),
    /// COCO mAP@0.5 and mAP@0.5:0.95 of predictions against ground truth (COCO JSON
    /// or YOLO label folders).
    Eval(eval::EvalFlags),
    /// Send what a run folder's MLflow journal holds that the server never got (after
    /// a `mwt train` while MLflow was down).
    MlflowSync(mlflow::SyncFlags),
    /// Start N local data-parallel ranks of an `mwt` command (torchrun-style).
    Launch(distributed::LaunchFlags),
}

fn main() -> ExitCode {
    cardet_cli::init_logging();
    let flags = Flags::parse();
    let result = match flags.command {
        Command::Info { json } => info(json),
        Command::Train(flags) => train::run(&flags),
        Command::Val(flags) => val::run(&flags),
        Command::Export(flags) => export::run(&flags),
        Command::Predict(flags) => predict::run(&flags),
        Command::Eval(flags) => eval::run(&flags),
        Command::MlflowSync(flags) => mlflow::sync(&flags),
        Command::Launch(flags) => distributed::launch(&flags),
    };
    cardet_cli::exit_code("mwt", result)
}

fn info(json: bool) -> anyhow::Result<()> {
    use cardet_model::libtorch;
    use std::io::Write;

    // A real computation, so "found" means "works", not just "linked".
    let a = tch::Tensor::ones([64, 64], (tch::Kind::Float, tch::Device::Cpu));
    let sum = a.matmul(&a).sum(tch::Kind::Double).double_value(&[]);
    anyhow::ensure!(
        sum == 64.0 * 64.0 * 64.0,
        "libtorch computed a wrong matmul ({sum})"
    );
    let library = libtorch::loaded_library("libtorch_cpu.so");
    let version = library.as_deref().and_then(libtorch::torch_version);
    let report = serde_json::json!({
        "libtorch": library.as_ref().map(|path| path.display().to_string()),
        "torch_version": version,
        "threads": tch::get_num_threads(),
        "cuda_available": libtorch::load_cuda_backend(),
        "cuda_devices": tch::Cuda::device_count(),
    });
    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{report}")?;
    } else {
        writeln!(
            stdout,
            "libtorch      {}",
            report["libtorch"]
                .as_str()
                .unwrap_or("not found in /proc/self/maps")
        )?;
        writeln!(
            stdout,
            "torch version {}",
            report["torch_version"].as_str().unwrap_or("unknown")
        )?;
        writeln!(stdout, "threads       {}", report["threads"])?;
        writeln!(
            stdout,
            "cuda          {} ({} devices)",
            report["cuda_available"], report["cuda_devices"]
        )?;
    }
    Ok(())
}
