//! MLflow tracking of `mwt train` and `mwt mlflow-sync`: the glue between the
//! trainer's [`TrainObserver`] and `cardet_tracking`'s [`RunLogger`].
//!
//! Every call only journals (the logger's thread sends), so a slow or dead server
//! never holds training up; what could not be sent stays in `<run_dir>/mlflow/` for
//! `mwt mlflow-sync <run_dir>`.
//!
//! What a run logs:
//! - params: every `args.yaml` setting; tags: git commit, user, host,
//!   `mlflow.source.name = mwt train`, `dataset_hash` (SHA-256 of data.yaml and
//!   the label files);
//! - per batch (step = batches since the start): `step/train/box_loss`, ...,
//!   `step/lr/pg0`..`pg2`, `step/images_per_second`. The prefix keeps them apart
//!   from the per-epoch keys of the same names, whose step is the epoch;
//! - per epoch (step = epoch, 1-based): the `results.csv` row under its own names;
//! - at the end, the best checkpoint's final validation (`metrics/...`) at step
//!   `epochs + 1`, so it is the run's latest value of those keys: the one the
//!   registry's champion comparison reads;
//! - artifacts: `args.yaml`, then at the end each file the trainer reported
//!   (checkpoints under `weights/`, plots, `results.csv`) and `model/`, the best
//!   checkpoint as a Triton model folder (`config.pbtxt`, `1/model.onnx`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cardet_model::{Detector, ExportOptions, RepositoryOptions};
use cardet_onnx_export::triton::InstanceKind;
use cardet_tracking::{
    DEFAULT_EXPERIMENT_NAME, DEFAULT_TRACKING_URI, MetricGoal, MlflowClient, RunLogger, RunSource,
    RunSpec, RunStatus, SyncReport, TrackingConfig,
};
use cardet_train::{TrainObserver, TrainSummary};
use sha2::{Digest, Sha256};

/// The registry alias that names the best registered version.
pub const CHAMPION_ALIAS: &str = "champion";
/// The metric the champion is chosen by (higher is better), Ultralytics' name.
pub const CHAMPION_METRIC: &str = "metrics/mAP50-95(B)";
/// The run's artifact folder (and `<run_dir>` sub-folder) holding the Triton model.
pub const MODEL_ARTIFACT_DIR: &str = "model";

/// The MLflow flags of `mwt train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrackingFlags {
    /// MLflow tracking server; tracking is on when this or MLFLOW_TRACKING_URI is set.
    #[arg(long, value_name = "URI")]
    mlflow_uri: Option<String>,
    /// Do not track this run in MLflow, even with MLFLOW_TRACKING_URI set.
    #[arg(long, conflicts_with_all = ["mlflow_uri", "register"])]
    no_mlflow: bool,
    /// MLflow experiment (default: MLFLOW_EXPERIMENT_NAME, else "cardet").
    #[arg(long, value_name = "NAME")]
    experiment: Option<String>,
    /// MLflow run name (default: the run folder's name).
    #[arg(long, value_name = "NAME")]
    run_name: Option<String>,
    /// Register the exported model under this name and move the `champion` alias to
    /// it when its mAP50-95 beats the current champion's.
    #[arg(long, value_name = "NAME")]
    register: Option<String>,
}

/// A non-empty environment variable.
fn env_var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|value| !value.is_empty())
}

/// Where and how to track, once the flags say tracking is on.
#[derive(Debug, Clone)]
struct TrackingSettings {
    config: TrackingConfig,
    experiment: String,
    run_name: Option<String>,
    register: Option<String>,
}

impl TrackingFlags {
    fn settings(&self) -> anyhow::Result<Option<TrackingSettings>> {
        if self.no_mlflow {
            return Ok(None);
        }
        let uri = self
            .mlflow_uri
            .clone()
            .filter(|uri| !uri.is_empty())
            .or_else(|| env_var("MLFLOW_TRACKING_URI"));
        let Some(uri) = uri else {
            anyhow::ensure!(
                self.register.is_none(),
                "--register needs an MLflow server: set MLFLOW_TRACKING_URI or pass --mlflow-uri"
            );
            return Ok(None);
        };
        // A malformed URI is the user's mistake: say so now, not after training.
        let config = TrackingConfig::new(uri).with_auth_from_env();
        MlflowClient::new(&config).context("--mlflow-uri / MLFLOW_TRACKING_URI")?;
        let experiment = self
            .experiment
            .clone()
            .or_else(|| env_var("MLFLOW_EXPERIMENT_NAME"))
            .unwrap_or_else(|| DEFAULT_EXPERIMENT_NAME.to_string());
        Ok(Some(TrackingSettings {
            config,
            experiment,
            run_name: self.run_name.clone(),
            register: self.register.clone(),
        }))
    }
}

/// Calls two observers in turn (the console bar and MLflow).
pub struct Fanout<'a>(pub &'a mut dyn TrainObserver, pub &'a mut dyn TrainObserver);

impl TrainObserver for Fanout<'_> {
    fn on_start(&mut self, params: &BTreeMap<String, String>) {
        self.0.on_start(params);
        self.1.on_start(params);
    }
    fn on_step(&mut self, step: u64, metrics: &[(String, f64)]) {
        self.0.on_step(step, metrics);
        self.1.on_step(step, metrics);
    }
    fn on_epoch_end(&mut self, epoch: u64, metrics: &[(String, f64)]) {
        self.0.on_epoch_end(epoch, metrics);
        self.1.on_epoch_end(epoch, metrics);
    }
    fn on_artifact(&mut self, path: &Path) {
        self.0.on_artifact(path);
        self.1.on_artifact(path);
    }
    fn on_end(&mut self, summary: &TrainSummary) {
        self.0.on_end(summary);
        self.1.on_end(summary);
    }
}

/// What tracking did, for the summary (`--json` field names in `serde` order).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct MlflowOutcome {
    pub mlflow_run_id: Option<String>,
    /// `<uri>/#/experiments/<experiment id>/runs/<run id>`.
    pub mlflow_run_url: Option<String>,
    /// Events only in the journal: `mwt mlflow-sync <run_dir>` sends them.
    pub mlflow_unsent_events: usize,
    pub registered_model: Option<String>,
    pub registered_version: Option<String>,
    /// True when this run's version now holds the `champion` alias.
    pub champion: bool,
    #[serde(skip)]
    run_dir: Option<PathBuf>,
    #[serde(skip)]
    enabled: bool,
    #[serde(skip)]
    register_requested: Option<String>,
}

impl MlflowOutcome {
    /// Adds the fields to the training summary's JSON object.
    pub fn add_to_json(&self, summary: &mut serde_json::Value) -> anyhow::Result<()> {
        let serde_json::Value::Object(fields) = serde_json::to_value(self)? else {
            anyhow::bail!("the MLflow outcome is not a JSON object");
        };
        if let serde_json::Value::Object(summary) = summary {
            summary.extend(fields);
        }
        Ok(())
    }

    /// The lines of the text summary; nothing when tracking was off.
    pub fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        match &self.mlflow_run_url {
            Some(url) => writeln!(out, "MLflow run: {url}")?,
            None => writeln!(out, "MLflow run: not created on the server")?,
        }
        if let (Some(model), Some(version)) = (&self.registered_model, &self.registered_version) {
            let champion = if self.champion {
                " (now the champion)"
            } else {
                " (the champion stays)"
            };
            writeln!(out, "registered {model} version {version}{champion}")?;
        }
        if self.mlflow_unsent_events > 0 {
            let run_dir = self.run_dir.as_deref().unwrap_or(Path::new("<run_dir>"));
            let register = match &self.register_requested {
                Some(name) => format!(" --register {name}"),
                None => String::new(),
            };
            writeln!(
                out,
                "MLflow: {} events were not sent; run `mwt mlflow-sync {}{register}` when the server is back",
                self.mlflow_unsent_events,
                run_dir.display()
            )?;
        }
        Ok(())
    }
}

/// Tracks one training run in MLflow; does nothing when tracking is off.
///
/// A tracking failure never stops training: it is logged once and tracking stops.
pub struct MlflowObserver {
    settings: Option<TrackingSettings>,
    logger: Option<RunLogger>,
    run_dir: PathBuf,
    imgsz: i64,
    /// Files reported by the trainer, uploaded once at the end: a checkpoint
    /// rewritten every epoch would otherwise be uploaded every epoch.
    artifacts: BTreeSet<PathBuf>,
    outcome: MlflowOutcome,
}

impl MlflowObserver {
    /// From `mwt train`'s flags; an error for a malformed URI or `--register` without a server.
    pub fn from_flags(flags: &TrackingFlags) -> anyhow::Result<MlflowObserver> {
        let settings = flags.settings()?;
        Ok(MlflowObserver {
            outcome: MlflowOutcome {
                enabled: settings.is_some(),
                register_requested: settings.as_ref().and_then(|s| s.register.clone()),
                ..MlflowOutcome::default()
            },
            settings,
            logger: None,
            run_dir: PathBuf::new(),
            imgsz: 640,
            artifacts: BTreeSet::new(),
        })
    }

    /// Ends the run if `on_end` did not (training failed: FAILED) and returns what
    /// tracking did.
    pub fn conclude(mut self, trained: bool) -> MlflowOutcome {
        if self.logger.is_some() {
            let status = if trained {
                RunStatus::Finished
            } else {
                RunStatus::Failed
            };
            self.finish(status);
        }
        self.outcome
    }

    fn open(&mut self, params: &BTreeMap<String, String>) -> anyhow::Result<RunLogger> {
        let settings = self.settings.as_ref().context("tracking is off")?;
        // The trainer's own folder: a second run named `train` writes into `train2`,
        // and must not reopen the first run's journal (and its MLflow run).
        self.run_dir = PathBuf::from(params.get("save_dir").context("no `save_dir` setting")?);
        let name = self
            .run_dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .context("`save_dir` has no folder name")?;
        self.outcome.run_dir = Some(self.run_dir.clone());
        if let Some(imgsz) = params.get("imgsz").and_then(|text| text.parse().ok()) {
            self.imgsz = imgsz;
        }
        let mut source = RunSource::detect("mwt train");
        match params.get("data").map(|data| dataset_hash(Path::new(data))) {
            Some(Ok(hash)) => source = source.with_dataset_hash(hash),
            Some(Err(err)) => tracing::warn!("no dataset hash for MLflow: {err:#}"),
            None => {}
        }
        let run_name = settings.run_name.clone().unwrap_or_else(|| name.clone());
        let spec = RunSpec::new(settings.experiment.clone())
            .with_run_name(run_name)
            .with_tags(source.tags());
        let mut logger = RunLogger::open(&self.run_dir, &settings.config, &spec)
            .with_context(|| format!("opening the MLflow journal in {}", self.run_dir.display()))?;
        logger.log_params(params)?;
        let args_yaml = self.run_dir.join("args.yaml");
        if args_yaml.is_file() {
            logger.log_artifact(&args_yaml, None)?;
        }
        Ok(logger)
    }

    /// Runs `log` on the open logger; the first failure ends tracking with one warning.
    fn with_logger(
        &mut self,
        what: &str,
        log: impl FnOnce(&mut RunLogger) -> Result<(), cardet_tracking::Error>,
    ) {
        if let Some(logger) = &mut self.logger
            && let Err(err) = log(logger)
        {
            tracing::warn!("MLflow tracking stops: {what}: {err}");
            self.logger = None;
        }
    }

    /// The best checkpoint as `<run_dir>/model/{config.pbtxt,1/model.onnx}`, as
    /// `mwt export` writes it, at the training size.
    fn export_model(&self, best: &Path) -> anyhow::Result<PathBuf> {
        let detector = Detector::load(best, tch::Device::Cpu)
            .with_context(|| format!("loading {}", best.display()))?;
        let options = ExportOptions {
            height: self.imgsz,
            width: self.imgsz,
            dynamic_size: false,
        };
        let model = cardet_model::export_onnx(&detector.net, &detector.names, &options)?;
        // The Triton entry takes the registered name, so a folder fetched from the
        // registry serves under that name; the MLflow artifact folder stays `model/`.
        let name = self
            .settings
            .as_ref()
            .and_then(|settings| settings.register.clone())
            .unwrap_or_else(|| MODEL_ARTIFACT_DIR.to_string());
        let repository = RepositoryOptions {
            name,
            version: 1,
            max_batch_size: 8,
            instance_kind: InstanceKind::Cpu,
            instance_count: 1,
        };
        // Written beside, then moved to `<run_dir>/model/`: the artifact folder's name.
        let staging = self.run_dir.join(".model-export");
        let _ = std::fs::remove_dir_all(&staging);
        let written = cardet_model::write_model_repository(&staging, &model, &repository)
            .with_context(|| format!("writing into {}", staging.display()))?;
        let model_dir = self.run_dir.join(MODEL_ARTIFACT_DIR);
        let _ = std::fs::remove_dir_all(&model_dir);
        std::fs::rename(&written.model_dir, &model_dir)
            .with_context(|| format!("moving the model into {}", model_dir.display()))?;
        let _ = std::fs::remove_dir_all(&staging);
        Ok(model_dir)
    }

    /// Uploads the collected artifacts, ends the run and records the outcome.
    fn finish(&mut self, status: RunStatus) {
        let artifacts = std::mem::take(&mut self.artifacts);
        for path in artifacts {
            let artifact_dir = artifact_dir_of(&self.run_dir, &path);
            self.with_logger("logging an artifact", |logger| {
                logger.log_artifact(&path, artifact_dir.as_deref())
            });
        }
        let Some(logger) = self.logger.take() else {
            return;
        };
        match logger.finish(status) {
            Ok(report) => {
                self.outcome.mlflow_run_id = report.run_id;
                self.outcome.mlflow_unsent_events = report.unsent_events;
            }
            Err(err) => tracing::warn!("MLflow: ending the run: {err}"),
        }
    }

    /// The run's address, then registration when asked and everything reached the server.
    fn after_finish(&mut self, model_exported: bool) {
        let (Some(settings), Some(run_id)) = (&self.settings, &self.outcome.mlflow_run_id) else {
            return;
        };
        let client = match MlflowClient::new(&settings.config) {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!("MLflow: {err}");
                return;
            }
        };
        let run = match client.get_run(run_id) {
            Ok(run) => run.info,
            Err(err) => {
                tracing::warn!("MLflow: reading run {run_id}: {err}");
                return;
            }
        };
        self.outcome.mlflow_run_url = Some(run_url_of(&settings.config.tracking_uri, &run));
        let Some(model_name) = &settings.register else {
            return;
        };
        if !model_exported || self.outcome.mlflow_unsent_events > 0 {
            tracing::warn!(
                "not registering {model_name}: {}",
                if model_exported {
                    "the run's model folder did not reach MLflow"
                } else {
                    "no exported model"
                }
            );
            return;
        }
        match register_model(&client, &run, model_name) {
            Ok(registration) => {
                self.outcome.registered_model = Some(model_name.clone());
                self.outcome.registered_version = Some(registration.version);
                self.outcome.champion = registration.champion;
            }
            Err(err) => tracing::warn!("registering {model_name} in MLflow: {err}"),
        }
    }
}

/// A registered version and whether it holds the `champion` alias now.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    pub version: String,
    pub champion: bool,
}

/// Registers the run's `model/` artifact folder as a new version of `model_name` and
/// moves `champion` to it when its mAP50-95 beats the holder's.
pub fn register_model(
    client: &MlflowClient,
    run: &cardet_tracking::RunInfo,
    model_name: &str,
) -> Result<Registration, cardet_tracking::Error> {
    client.ensure_registered_model(model_name)?;
    let version = client.create_model_version(model_name, run, MODEL_ARTIFACT_DIR)?;
    let promotion = client.promote_if_better(
        model_name,
        CHAMPION_ALIAS,
        &version.version,
        CHAMPION_METRIC,
        MetricGoal::Maximize,
    )?;
    tracing::info!(
        "registered {model_name} version {} ({CHAMPION_METRIC} {:.4}; previous champion {:?}): {}",
        version.version,
        promotion.candidate_value,
        promotion.previous_champion,
        if promotion.promoted {
            "now the champion"
        } else {
            "the champion stays"
        }
    );
    Ok(Registration {
        version: version.version,
        champion: promotion.promoted,
    })
}

impl TrainObserver for MlflowObserver {
    fn on_start(&mut self, params: &BTreeMap<String, String>) {
        if self.settings.is_none() {
            return;
        }
        match self.open(params) {
            Ok(logger) => self.logger = Some(logger),
            Err(err) => tracing::warn!("MLflow tracking is off for this run: {err:#}"),
        }
    }

    fn on_step(&mut self, step: u64, metrics: &[(String, f64)]) {
        // Bookkeeping (epoch, batch, batches, epochs) is what the step already says.
        let logged = metrics.iter().filter_map(|(key, value)| {
            let per_batch =
                key.starts_with("train/") || key.starts_with("lr/") || key == "images_per_second";
            per_batch.then(|| (format!("step/{key}"), *value))
        });
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        self.with_logger("logging step metrics", |logger| {
            logger.log_metrics(step, logged)
        });
    }

    fn on_epoch_end(&mut self, epoch: u64, metrics: &[(String, f64)]) {
        let row = metrics
            .iter()
            .filter(|(key, _)| key != "epoch")
            .map(|(key, value)| (key.as_str(), *value));
        let step = i64::try_from(epoch).unwrap_or(i64::MAX);
        self.with_logger("logging epoch metrics", |logger| {
            logger.log_metrics(step, row)
        });
    }

    fn on_artifact(&mut self, path: &Path) {
        if self.logger.is_some() {
            self.artifacts.insert(path.to_path_buf());
        }
    }

    fn on_end(&mut self, summary: &TrainSummary) {
        if self.logger.is_none() {
            return;
        }
        let stopped = summary.stop_reason == "stopped";
        let mut model_exported = false;
        if !stopped && summary.best.is_file() {
            // The trainer's final validation of `best`, after the epochs.
            let step = i64::try_from(summary.epochs_completed + 1).unwrap_or(i64::MAX);
            let metrics: Vec<(&str, f64)> = summary
                .metrics
                .iter()
                .map(|(key, value)| (key.as_str(), *value))
                .collect();
            self.with_logger("logging the final metrics", |logger| {
                logger.log_metrics(step, metrics)
            });
            match self.export_model(&summary.best) {
                Ok(model_dir) => {
                    self.with_logger("logging the model folder", |logger| {
                        logger.log_artifact(&model_dir, Some(MODEL_ARTIFACT_DIR))
                    });
                    model_exported = self.logger.is_some();
                }
                Err(err) => tracing::warn!("exporting the model for MLflow: {err:#}"),
            }
        }
        // Ctrl-C ends the run as MLflow's own client does for an interrupted run.
        self.finish(if stopped {
            RunStatus::Killed
        } else {
            RunStatus::Finished
        });
        self.after_finish(model_exported);
    }
}

/// The artifact folder of a file under the run folder (`weights` for
/// `weights/best.safetensors`, None for `results.csv` or a file outside it).
fn artifact_dir_of(run_dir: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(run_dir).ok()?.parent()?;
    let dir = relative
        .iter()
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/");
    (!dir.is_empty()).then_some(dir)
}

/// MLflow UI address of a run.
pub fn run_url(tracking_uri: &str, experiment_id: &str, run_id: &str) -> String {
    format!(
        "{}/#/experiments/{experiment_id}/runs/{run_id}",
        tracking_uri.trim_end_matches('/')
    )
}

/// `sha256:<hex>` of the dataset's data.yaml and its label files (each one's path
/// relative to the dataset root, then its bytes, in sorted order): cheap next to
/// hashing the images, and it changes whenever a box, a class or a split changes.
pub fn dataset_hash(data_yaml: &Path) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    let text =
        std::fs::read(data_yaml).with_context(|| format!("reading {}", data_yaml.display()))?;
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(&text);
    let data = cardet_detect::dataset::read_data_yaml(data_yaml)?;
    let mut labels = BTreeSet::new();
    for split in ["train", "val"] {
        for image in data.split_images(split)? {
            labels.insert(cardet_detect::dataset::label_path_for_image(&image));
        }
    }
    for label in labels {
        let relative = label.strip_prefix(&data.root).unwrap_or(&label);
        let name = relative.to_string_lossy();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        // An image without a label file is a background image: hashed as such.
        match std::fs::read(&label) {
            Ok(bytes) => {
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                hasher.update(u64::MAX.to_le_bytes());
            }
            Err(err) => return Err(err).with_context(|| format!("reading {}", label.display())),
        }
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

/// The flags of `mwt mlflow-sync`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  mwt mlflow-sync runs/train/exp                 # to MLFLOW_TRACKING_URI\n  mwt mlflow-sync runs/train/exp --mlflow-uri http://mlflow:5000 --json\n  mwt mlflow-sync runs/train/exp --register yolov8n_car   # then register, champion if better"
)]
pub struct SyncFlags {
    /// The run folder `mwt train` wrote (it holds `mlflow/journal.jsonl`).
    run_dir: PathBuf,
    /// MLflow tracking server (default: MLFLOW_TRACKING_URI, else http://127.0.0.1:5000).
    #[arg(long, value_name = "URI")]
    mlflow_uri: Option<String>,
    /// After the sync, register the run's `model/` folder under this name and move the
    /// `champion` alias to it when it is better (for a run trained while MLflow was down).
    #[arg(long, value_name = "NAME")]
    register: Option<String>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `mwt mlflow-sync`: sends what a run's journal holds that the server never acknowledged.
pub fn sync(flags: &SyncFlags) -> anyhow::Result<()> {
    let uri = flags
        .mlflow_uri
        .clone()
        .filter(|uri| !uri.is_empty())
        .or_else(|| env_var("MLFLOW_TRACKING_URI"))
        .unwrap_or_else(|| DEFAULT_TRACKING_URI.to_string());
    let report = cardet_tracking::sync_run_folder(&flags.run_dir, &uri)
        .with_context(|| format!("syncing {} to MLflow at {uri}", flags.run_dir.display()))?;
    for diagnostic in &report.diagnostics {
        tracing::warn!("skipped an unreadable journal line: {diagnostic}");
    }
    for (seq, error) in &report.rejected {
        tracing::warn!("the server refused journal event {seq}: {error}");
    }
    let mut run_url = None;
    let mut registration = None;
    if let Some(run_id) = &report.run_id {
        let client = MlflowClient::new(&TrackingConfig::new(uri.clone()).with_auth_from_env())?;
        let run = client
            .get_run(run_id)
            .with_context(|| format!("reading run {run_id} from MLflow at {uri}"))?
            .info;
        run_url = Some(run_url_of(&uri, &run));
        if let Some(model_name) = &flags.register {
            let model_files = client
                .list_artifacts(run_id, Some(MODEL_ARTIFACT_DIR))
                .with_context(|| format!("listing run {run_id}'s artifacts"))?;
            anyhow::ensure!(
                !model_files.is_empty(),
                "--register {model_name}: run {run_id} has no `{MODEL_ARTIFACT_DIR}/` artifact folder (training did not finish?)"
            );
            let registered = register_model(&client, &run, model_name)
                .with_context(|| format!("registering {model_name}"))?;
            registration = Some((model_name.as_str(), registered));
        }
    } else {
        anyhow::ensure!(
            flags.register.is_none(),
            "--register: the journal's run was never created on the server"
        );
    }
    print_sync_report(&report, run_url.as_deref(), registration, flags.json)
}

fn run_url_of(uri: &str, run: &cardet_tracking::RunInfo) -> String {
    run_url(uri, &run.experiment_id, &run.run_id)
}

fn print_sync_report(
    report: &SyncReport,
    run_url: Option<&str>,
    registration: Option<(&str, Registration)>,
    json: bool,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({
            "mlflow_run_id": report.run_id,
            "mlflow_run_url": run_url,
            "events_sent": report.events_sent,
            "metric_points_sent": report.metric_points_sent,
            "artifact_files_uploaded": report.artifact_files_uploaded,
            "already_acknowledged": report.already_acknowledged,
            "rejected": report.rejected.iter()
                .map(|(seq, error)| serde_json::json!({"seq": seq, "error": error}))
                .collect::<Vec<_>>(),
            "unreadable_lines": report.diagnostics.len(),
            "registered_model": registration.as_ref().map(|(name, _)| name),
            "registered_version": registration.as_ref().map(|(_, r)| &r.version),
            "champion": registration.as_ref().is_some_and(|(_, r)| r.champion),
        });
        writeln!(stdout, "{value}")?;
    } else {
        writeln!(
            stdout,
            "sent {} events ({} metric points, {} artifact files); {} were already on the server",
            report.events_sent,
            report.metric_points_sent,
            report.artifact_files_uploaded,
            report.already_acknowledged
        )?;
        if !report.rejected.is_empty() {
            writeln!(
                stdout,
                "{} events refused by the server (not retried)",
                report.rejected.len()
            )?;
        }
        match (run_url, &report.run_id) {
            (Some(url), _) => writeln!(stdout, "MLflow run: {url}")?,
            (None, Some(run_id)) => writeln!(stdout, "MLflow run: {run_id}")?,
            (None, None) => {}
        }
        if let Some((name, registered)) = &registration {
            let champion = if registered.champion {
                "now the champion"
            } else {
                "the champion stays"
            };
            writeln!(
                stdout,
                "registered {name} version {} ({champion})",
                registered.version
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_dirs_follow_the_run_folder() {
        let run = Path::new("/r/exp");
        assert_eq!(
            artifact_dir_of(run, Path::new("/r/exp/weights/best.safetensors")),
            Some("weights".into())
        );
        assert_eq!(artifact_dir_of(run, Path::new("/r/exp/results.csv")), None);
        assert_eq!(artifact_dir_of(run, Path::new("/elsewhere/x.png")), None);
    }

    #[test]
    fn dataset_hash_is_stable_and_follows_every_label() {
        use cardet_detect::dataset::{DatasetWriter, YoloLabel};
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = DatasetWriter::create(dir.path(), vec!["car".into()], "png").expect("dataset");
        for index in 0..3_u64 {
            let scene = cardet_detect::synth::render_scene(5, index, (64, 64));
            let labels: Vec<YoloLabel> = scene
                .objects
                .iter()
                .map(|object| YoloLabel::from_box(0, &object.bbox, (64, 64)))
                .collect();
            let split = if index < 2 { "train" } else { "val" };
            writer
                .add(split, &format!("s{index}"), &scene.image, &labels)
                .expect("scene");
        }
        let data_yaml = writer.finish().expect("data.yaml");
        let first = dataset_hash(&data_yaml).expect("hash");
        assert!(
            first.starts_with("sha256:") && first.len() == 7 + 64,
            "{first}"
        );
        assert_eq!(dataset_hash(&data_yaml).expect("hash"), first);

        let data = cardet_detect::dataset::read_data_yaml(&data_yaml).expect("data.yaml");
        let image = data.split_images("val").expect("val")[0].clone();
        let label = cardet_detect::dataset::label_path_for_image(&image);
        let text = std::fs::read_to_string(&label).expect("label");
        std::fs::write(&label, format!("{text}0 0.5 0.5 0.1 0.1\n")).expect("label");
        let changed = dataset_hash(&data_yaml).expect("hash");
        assert_ne!(changed, first);
        std::fs::remove_file(&label).expect("remove label");
        assert_ne!(dataset_hash(&data_yaml).expect("hash"), changed);
    }

    #[test]
    fn run_url_has_mlflow_ui_shape() {
        assert_eq!(
            run_url("http://127.0.0.1:5000/", "3", "abc"),
            "http://127.0.0.1:5000/#/experiments/3/runs/abc"
        );
    }
}
