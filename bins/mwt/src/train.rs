//! `mwt train`: flags (Ultralytics' `args.yaml` names) to a [`cardet_train::TrainConfig`],
//! a progress bar per epoch, and the run's summary. The loop is `cardet_train`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cardet_train::{Hooks, TrainConfig, TrainObserver, TrainSummary};
use indicatif::{ProgressBar, ProgressStyle};

/// The flags of `mwt train`; unset flags keep `--cfg`'s value, else Ultralytics' default.
/// Multi-word flags also answer to Ultralytics' spelling (`--weight_decay`).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  mwt train --data data/cars/data.yaml --model n --epochs 50 --imgsz 640\n  mwt train --data data.yaml --model runs/train/exp/weights/best.safetensors --epochs 10 --lr0 0.002\n  mwt train --cfg runs/train/exp/args.yaml --epochs 5 --device cuda:0\n  mwt train --resume runs/train/exp           # continue an interrupted run exactly\n  mwt train --data data.yaml --time 0.5 --json  # half an hour, summary as JSON\n  MLFLOW_TRACKING_URI=http://127.0.0.1:5000 mwt train --data data.yaml --register yolov8n_car  # tracked, registered"
)]
pub struct TrainFlags {
    /// An Ultralytics-style `args.yaml`; flags given here override it.
    #[arg(long)]
    cfg: Option<PathBuf>,
    /// The dataset's data.yaml.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A scale letter (n, s, m, l, x: from scratch) or a safetensors checkpoint.
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per batch (over all ranks).
    #[arg(long)]
    batch: Option<usize>,
    /// Square training size, a multiple of 32.
    #[arg(long)]
    imgsz: Option<u32>,
    #[arg(long)]
    lr0: Option<f64>,
    /// Final learning rate as a fraction of lr0.
    #[arg(long)]
    lrf: Option<f64>,
    #[arg(long)]
    momentum: Option<f64>,
    #[arg(long, alias = "weight_decay")]
    weight_decay: Option<f64>,
    #[arg(long, alias = "warmup_epochs")]
    warmup_epochs: Option<f64>,
    #[arg(long, alias = "warmup_momentum")]
    warmup_momentum: Option<f64>,
    #[arg(long, alias = "warmup_bias_lr")]
    warmup_bias_lr: Option<f64>,
    /// SGD, AdamW or auto.
    #[arg(long)]
    optimizer: Option<String>,
    /// Cosine instead of linear learning-rate decay.
    #[arg(long, alias = "cos_lr")]
    cos_lr: bool,
    /// Turn mosaic off for this many final epochs.
    #[arg(long, alias = "close_mosaic")]
    close_mosaic: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Seed libtorch and disable cuDNN autotuning (true or false).
    #[arg(long)]
    deterministic: Option<bool>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Data-loading threads.
    #[arg(long)]
    workers: Option<usize>,
    /// Runs go to <project>/<name>.
    #[arg(long)]
    project: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    /// Continue a run: its folder or its weights/last.safetensors.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Batches per optimiser step (default: round(64 / batch)).
    #[arg(long)]
    accumulate: Option<usize>,
    /// Wall-clock budget in hours; overrides --epochs after the first epoch.
    #[arg(long)]
    time: Option<f64>,
    #[arg(long)]
    mosaic: Option<f32>,
    #[arg(long)]
    degrees: Option<f32>,
    #[arg(long)]
    translate: Option<f32>,
    #[arg(long)]
    scale: Option<f32>,
    #[arg(long)]
    shear: Option<f32>,
    #[arg(long)]
    perspective: Option<f32>,
    #[arg(long, alias = "hsv_h")]
    hsv_h: Option<f32>,
    #[arg(long, alias = "hsv_s")]
    hsv_s: Option<f32>,
    #[arg(long, alias = "hsv_v")]
    hsv_v: Option<f32>,
    #[arg(long)]
    fliplr: Option<f32>,
    #[arg(long)]
    flipud: Option<f32>,
    /// No progress bar; print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Mixed precision: fp16 autocast with a dynamic loss scale on CUDA, a bf16 copy
    /// of the model for the forward and backward on CPU (fp32 master weights).
    #[arg(long)]
    amp: bool,
    #[command(flatten)]
    dist: crate::distributed::DistFlags,
    #[command(flatten)]
    tracking: crate::mlflow::TrackingFlags,
}

impl TrainFlags {
    /// The settings: defaults, then `--cfg`, then the flags.
    pub fn config(&self) -> anyhow::Result<TrainConfig> {
        let mut config = TrainConfig::default();
        if let Some(path) = &self.cfg {
            let ignored = config
                .apply_yaml_file(path)
                .with_context(|| format!("reading --cfg {}", path.display()))?;
            if !ignored.is_empty() {
                tracing::info!("{}: ignoring {}", path.display(), ignored.join(", "));
            }
        }
        let set = |config: &mut TrainConfig, key: &str, value: Option<String>| {
            if let Some(value) = value {
                config
                    .set(key, &value)
                    .with_context(|| format!("--{}", key.replace('_', "-")))?;
            }
            anyhow::Ok(())
        };
        let pairs: Vec<(&str, Option<String>)> = vec![
            ("data", self.data.as_ref().map(|p| p.display().to_string())),
            ("model", self.model.clone()),
            ("epochs", text(&self.epochs)),
            ("batch", text(&self.batch)),
            ("imgsz", text(&self.imgsz)),
            ("lr0", text(&self.lr0)),
            ("lrf", text(&self.lrf)),
            ("momentum", text(&self.momentum)),
            ("weight_decay", text(&self.weight_decay)),
            ("warmup_epochs", text(&self.warmup_epochs)),
            ("warmup_momentum", text(&self.warmup_momentum)),
            ("warmup_bias_lr", text(&self.warmup_bias_lr)),
            ("optimizer", self.optimizer.clone()),
            ("cos_lr", self.cos_lr.then(|| "true".to_string())),
            ("close_mosaic", text(&self.close_mosaic)),
            ("seed", text(&self.seed)),
            ("deterministic", text(&self.deterministic)),
            ("device", self.device.clone()),
            ("workers", text(&self.workers)),
            (
                "project",
                self.project.as_ref().map(|p| p.display().to_string()),
            ),
            ("name", self.name.clone()),
            ("accumulate", text(&self.accumulate)),
            ("time", text(&self.time)),
            ("mosaic", text(&self.mosaic)),
            ("degrees", text(&self.degrees)),
            ("translate", text(&self.translate)),
            ("scale", text(&self.scale)),
            ("shear", text(&self.shear)),
            ("perspective", text(&self.perspective)),
            ("hsv_h", text(&self.hsv_h)),
            ("hsv_s", text(&self.hsv_s)),
            ("hsv_v", text(&self.hsv_v)),
            ("fliplr", text(&self.fliplr)),
            ("flipud", text(&self.flipud)),
            ("amp", self.amp.then(|| "true".to_string())),
        ];
        for (key, value) in pairs {
            set(&mut config, key, value)?;
        }
        config.validate()?;
        Ok(config)
    }
}

/// A set flag as the text `TrainConfig::set` parses.
fn text<T: ToString>(value: &Option<T>) -> Option<String> {
    value.as_ref().map(ToString::to_string)
}

/// `--resume` names a run folder or its `last.safetensors`.
fn resume_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("weights").join("last.safetensors")
    } else {
        path.to_path_buf()
    }
}

pub fn run(flags: &TrainFlags) -> anyhow::Result<()> {
    let mut config = flags.config()?;
    let job = crate::distributed::dist_config(&flags.dist, &config.device)?;
    config.device = crate::distributed::rank_device(&config.device, &job);
    let lead = job.rank == 0;
    let resume = flags.resume.as_deref().map(resume_path);
    if let Some(path) = &resume {
        anyhow::ensure!(
            path.is_file(),
            "--resume {}: no checkpoint at {}",
            flags
                .resume
                .as_deref()
                .map(Path::display)
                .map_or(String::new(), |d| d.to_string()),
            path.display()
        );
    }
    let mut tracking = crate::mlflow::MlflowObserver::from_flags(&flags.tracking)?;
    let stop = cardet_cli::stop_flag_on_signal("mwt train: stopping after this batch");
    let mut progress = EpochProgress::new(!flags.json);
    let trained = cardet_train::train(
        config,
        resume.as_deref(),
        Hooks {
            sync: &crate::distributed::gradient_sync(&flags.dist, &job)?,
            observer: &mut crate::mlflow::Fanout(&mut progress, &mut tracking),
            stop: Some(stop),
        },
    );
    let mlflow = tracking.conclude(trained.is_ok());
    let summary = trained.context("training")?;
    // A rank stopped by a signal (the launcher tearing the job down after a peer
    // failed) has not finished the job, whatever batch it stopped at.
    anyhow::ensure!(
        !(job.is_distributed() && summary.stop_reason == "stopped"),
        "rank {} of {} stopped by a signal before the job finished",
        job.rank,
        job.world_size
    );
    if !lead {
        // Rank 0 reports for the job.
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    if flags.json {
        let mut json = serde_json::to_value(&summary)?;
        mlflow.add_to_json(&mut json)?;
        writeln!(stdout, "{json}")?;
    } else {
        writeln!(
            stdout,
            "{} epochs ({}) in {:.0} s, {:.1} images/s; best epoch {} fitness {:.4}",
            summary.epochs_completed,
            summary.stop_reason,
            summary.train_seconds,
            summary.images_per_second,
            summary.best_epoch,
            summary.best_fitness
        )?;
        for (name, value) in &summary.metrics {
            writeln!(stdout, "  {name:<22} {value:.4}")?;
        }
        writeln!(stdout, "weights: {}", summary.best.display())?;
        mlflow.print_text(&mut stdout)?;
    }
    Ok(())
}

/// One indicatif bar per epoch: losses, learning rate, images/s.
struct EpochProgress {
    enabled: bool,
    bar: Option<ProgressBar>,
    epoch: u64,
}

impl EpochProgress {
    fn new(enabled: bool) -> EpochProgress {
        EpochProgress {
            enabled,
            bar: None,
            epoch: 0,
        }
    }
}

fn metric(metrics: &[(String, f64)], name: &str) -> f64 {
    metrics
        .iter()
        .find(|(key, _)| key == name)
        .map_or(f64::NAN, |(_, value)| *value)
}

impl TrainObserver for EpochProgress {
    fn on_start(&mut self, params: &BTreeMap<String, String>) {
        tracing::info!(
            "training {} on {} for {} epochs at {} px",
            params.get("model").map_or("?", String::as_str),
            params.get("data").map_or("?", String::as_str),
            params.get("epochs").map_or("?", String::as_str),
            params.get("imgsz").map_or("?", String::as_str),
        );
    }

    fn on_step(&mut self, _step: u64, metrics: &[(String, f64)]) {
        if !self.enabled {
            return;
        }
        let epoch = metric(metrics, "epoch") as u64;
        if self.bar.is_none() || epoch != self.epoch {
            if let Some(bar) = self.bar.take() {
                bar.finish();
            }
            let bar = ProgressBar::new(metric(metrics, "batches") as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} {bar:25} {pos}/{len} {msg} [{elapsed}<{eta}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(format!("epoch {epoch}/{}", metric(metrics, "epochs")));
            self.bar = Some(bar);
            self.epoch = epoch;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(metric(metrics, "batch") as u64);
            bar.set_message(format!(
                "box {:.3} cls {:.3} dfl {:.3} lr {:.2e} {:.1} img/s",
                metric(metrics, "train/box_loss"),
                metric(metrics, "train/cls_loss"),
                metric(metrics, "train/dfl_loss"),
                metric(metrics, "lr/pg0"),
                metric(metrics, "images_per_second"),
            ));
        }
    }

    fn on_epoch_end(&mut self, epoch: u64, metrics: &[(String, f64)]) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        if self.enabled {
            eprintln!(
                "epoch {epoch}: P {:.3} R {:.3} mAP50 {:.3} mAP50-95 {:.3}",
                metric(metrics, "metrics/precision(B)"),
                metric(metrics, "metrics/recall(B)"),
                metric(metrics, "metrics/mAP50(B)"),
                metric(metrics, "metrics/mAP50-95(B)"),
            );
        }
    }

    fn on_artifact(&mut self, path: &Path) {
        tracing::debug!("wrote {}", path.display());
    }

    fn on_end(&mut self, summary: &TrainSummary) {
        tracing::info!("run folder {}", summary.run_dir.display());
    }
}
