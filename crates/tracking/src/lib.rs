//! MLflow tracking for cardet: a small blocking client for MLflow's REST API 2.0
//! (experiments, runs, `log-batch`, metric history, artifacts through the
//! artifact proxy, model registry and aliases), a [`RunLogger`] that journals
//! every event in the run folder before sending it, and [`sync_run_folder`],
//! which replays what a run could not send while the server was down.
//!
//! - [`MlflowClient`]: one method per REST call, errors carrying MLflow's
//!   `error_code` and `message` ([`Error::Api`]); `promote_if_better` moves the
//!   `champion` alias only to a version whose run metric beats the holder's.
//! - [`RunLogger`]: blocking calls for a synchronous trainer; each one appends
//!   to `<run_dir>/mlflow/journal.jsonl` and returns, a sender thread batches
//!   to the server, warns once when it is unreachable, and retries.
//! - [`sync_run_folder`]: sends the unacknowledged rest of a journal (the run is
//!   created then if it never was, with its original start time, steps and
//!   timestamps); running it twice sends nothing twice.
//!
//! ```no_run
//! use cardet_tracking::{MetricGoal, MlflowClient, RunLogger, RunSource, RunSpec, RunStatus, TrackingConfig};
//! # fn main() -> Result<(), cardet_tracking::Error> {
//! let config = TrackingConfig::from_env();
//! let spec = RunSpec::from_env()
//!     .with_run_name("yolov8n")
//!     .with_tags(RunSource::detect("mwt train").tags());
//! let run_dir = std::path::Path::new("runs/yolov8n");
//! let mut logger = RunLogger::open(run_dir, &config, &spec)?;
//! logger.log_params([("batch_size", 32)])?;
//! logger.log_metrics(0, [("metrics/mAP50-95(B)", 0.41)])?;
//! logger.log_artifact(&run_dir.join("weights"), Some("model"))?;
//! let finished = logger.finish(RunStatus::Finished)?;
//!
//! // Later, when the server is back: `mwt mlflow-sync runs/yolov8n`.
//! let synced = cardet_tracking::sync_run_folder(run_dir, &config.tracking_uri)?;
//! let run_id = synced.run_id.or(finished.run_id).unwrap_or_default();
//!
//! let client = MlflowClient::new(&config)?;
//! let run = client.get_run(&run_id)?.info;
//! client.ensure_registered_model("cardet-yolov8n")?;
//! let version = client.create_model_version("cardet-yolov8n", &run, "model")?;
//! let promotion = client.promote_if_better(
//!     "cardet-yolov8n", "champion", &version.version, "metrics/mAP50-95(B)", MetricGoal::Maximize)?;
//! println!("promoted: {}", promotion.promoted);
//! # Ok(()) }
//! ```
//!
//! Why not the `mlflow-client` crate the design card names: its only release
//! (0.0.1) covers experiments, runs, params, metrics and `log-batch`, but has no
//! artifact calls (its `list_artifacts` is commented out), no model registry or
//! aliases and no authentication header; it builds a new `reqwest::Client` per
//! request (no connection reuse), resolves `/api/2.0/mlflow/` as an absolute
//! path (so a server behind a path prefix is unreachable), turns a non-JSON
//! error page (a proxy's 502) into a JSON parse error that hides the status,
//! and pulls reqwest's default native-tls (OpenSSL) where the workspace uses
//! rustls. What we would take from it is a dozen lines of JSON shapes, so the
//! whole client is ours.

mod client;
mod error;
mod journal;
mod logger;
mod replay;
mod types;
mod wire;

use std::path::Path;

pub use client::{
    Auth, DEFAULT_TRACKING_URI, MetricGoal, MlflowClient, Promotion, TrackingConfig, UploadReport,
};
pub use error::Error;
pub use journal::{JournalDiagnostic, RUN_KEY_TAG, journal_dir};
pub use logger::{DEFAULT_EXPERIMENT_NAME, FinishReport, LoggerOptions, RunLogger, RunSpec};
pub use replay::SyncReport;
pub use types::{
    FileInfo, Metric, ModelVersion, Param, Run, RunInfo, RunStatus, Tag, limits, sanitize_key,
};

/// Sends whatever `<run_dir>/mlflow/journal.jsonl` holds that the server has not
/// acknowledged, with credentials from MLflow's variables. See [`sync_run_folder_with`].
pub fn sync_run_folder(run_dir: &Path, tracking_uri: &str) -> Result<SyncReport, Error> {
    sync_run_folder_with(
        run_dir,
        &TrackingConfig::new(tracking_uri).with_auth_from_env(),
    )
}

/// Replays a run folder's journal to the server in `config`.
///
/// Acknowledged events (`<run_dir>/mlflow/sent.jsonl`) are skipped, so a second
/// sync sends nothing. While a [`RunLogger`] of the folder is alive this fails
/// with [`Error::FolderBusy`]. The acknowledgements name the server they came from: to
/// replay a run to another server, move `sent.jsonl` aside first. If the server
/// is unreachable the error says so and the acknowledged part stays recorded.
pub fn sync_run_folder_with(run_dir: &Path, config: &TrackingConfig) -> Result<SyncReport, Error> {
    let client = MlflowClient::new(config)?;
    let journal_path = journal_dir(run_dir).join(journal::JOURNAL_FILE);
    // Checked before the lock, which would create `mlflow/` in a mistyped folder.
    if !journal_path.is_file() {
        return Err(Error::NoRunInJournal { path: journal_path });
    }
    // A running logger of this folder sends by itself: fail at once rather than race it.
    let lock = journal::SenderLock::acquire(run_dir, std::time::Duration::ZERO)?;
    let state = journal::JournalState::load(run_dir)?;
    if state.records.is_empty() {
        return Err(Error::NoRunInJournal { path: journal_path });
    }
    let mut pending: std::collections::VecDeque<_> = state.unsent().into();
    let mut replayer = replay::Replayer::new(
        client,
        run_dir,
        state.start.clone(),
        state.run.as_ref(),
        lock,
    )?;
    replayer.report.already_acknowledged = (state.records.len() - pending.len()) as u64;
    replayer.report.diagnostics = state.diagnostics.clone();
    replayer.send(&mut pending)?;
    Ok(replayer.report)
}

/// Facts about where a run comes from, turned into MLflow's standard tags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSource {
    pub git_commit: Option<String>,
    pub user: Option<String>,
    /// What MLflow shows as the source (`mlflow.source.name`), e.g. `mwt train`.
    pub source_name: Option<String>,
    pub host: Option<String>,
    pub dataset_hash: Option<String>,
}

/// Tag keys of [`RunSource::tags`].
pub mod tag_keys {
    pub const GIT_COMMIT: &str = "mlflow.source.git.commit";
    pub const USER: &str = "mlflow.user";
    pub const SOURCE_NAME: &str = "mlflow.source.name";
    pub const SOURCE_TYPE: &str = "mlflow.source.type";
    pub const HOST: &str = "host";
    pub const DATASET_HASH: &str = "dataset_hash";
}

impl RunSource {
    /// The git commit of the current directory, `$USER` and the host name; the
    /// caller adds the dataset hash.
    pub fn detect(source_name: &str) -> RunSource {
        RunSource {
            git_commit: std::env::current_dir()
                .ok()
                .and_then(|dir| git_commit(&dir)),
            user: std::env::var("USER").ok().filter(|u| !u.is_empty()),
            source_name: Some(source_name.to_string()),
            host: host_name(),
            dataset_hash: None,
        }
    }

    pub fn with_dataset_hash(mut self, hash: impl Into<String>) -> RunSource {
        self.dataset_hash = Some(hash.into());
        self
    }

    /// The set facts as tags; unknown ones are left out rather than sent empty.
    pub fn tags(&self) -> Vec<Tag> {
        let mut tags = vec![Tag::new(tag_keys::SOURCE_TYPE, "LOCAL")];
        let facts = [
            (tag_keys::GIT_COMMIT, &self.git_commit),
            (tag_keys::USER, &self.user),
            (tag_keys::SOURCE_NAME, &self.source_name),
            (tag_keys::HOST, &self.host),
            (tag_keys::DATASET_HASH, &self.dataset_hash),
        ];
        for (key, value) in facts {
            if let Some(value) = value {
                tags.push(Tag::new(key, value.clone()));
            }
        }
        tags
    }
}

/// The commit checked out at `dir` (`git rev-parse HEAD`), None outside a git
/// work tree or without git installed.
pub fn git_commit(dir: &Path) -> Option<String> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let commit = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (commit.len() >= 40 && commit.chars().all(|c| c.is_ascii_hexdigit())).then_some(commit)
}

/// The kernel's host name.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
}

/// Milliseconds since the Unix epoch, MLflow's timestamp unit.
pub(crate) fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An error with its causes, for one warning line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_commit_outside_git_is_none_and_inside_is_a_hash() {
        let outside = tempfile::tempdir().expect("temp dir");
        assert_eq!(git_commit(outside.path()), None);
        // Read at run time: a binary built in another clone keeps that clone's path.
        let package = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it");
        let inside = git_commit(Path::new(&package));
        assert!(inside.as_ref().is_some_and(|c| c.len() == 40), "{inside:?}");
    }

    #[test]
    fn sync_of_a_folder_without_journal_names_the_file_and_creates_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = sync_run_folder(dir.path(), "http://127.0.0.1:9").expect_err("no journal");
        assert!(matches!(err, Error::NoRunInJournal { .. }), "{err}");
        assert!(err.to_string().contains("journal.jsonl"), "{err}");
        assert!(!journal_dir(dir.path()).exists());
    }

    #[test]
    fn run_source_leaves_unknown_facts_out() {
        let source = RunSource {
            git_commit: Some("a".repeat(40)),
            source_name: Some("mwt train".into()),
            ..RunSource::default()
        }
        .with_dataset_hash("sha256:ab");
        let keys: Vec<String> = source.tags().into_iter().map(|t| t.key).collect();
        assert_eq!(
            keys,
            [
                tag_keys::SOURCE_TYPE,
                tag_keys::GIT_COMMIT,
                tag_keys::SOURCE_NAME,
                tag_keys::DATASET_HASH
            ]
        );
    }
}
