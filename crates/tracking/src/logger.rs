use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::{MlflowClient, TrackingConfig};
use crate::journal::{
    Event, JOURNAL_FILE, JournalState, JsonLines, KeyValue, MetricPoint, Record, SenderLock,
    StartRun, journal_dir,
};
use crate::replay::{Replayer, SyncReport};
use crate::types::{RunStatus, Tag, check_metric_key, check_param, check_tag, sanitize_key};
use crate::{Error, error_chain, now_ms};

/// The run to create: experiment, name and tags (git commit, user, host, dataset hash...).
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub experiment_name: String,
    pub run_name: Option<String>,
    pub tags: Vec<Tag>,
}

/// The experiment used when `MLFLOW_EXPERIMENT_NAME` is not set.
pub const DEFAULT_EXPERIMENT_NAME: &str = "cardet";

impl RunSpec {
    pub fn new(experiment_name: impl Into<String>) -> RunSpec {
        RunSpec {
            experiment_name: experiment_name.into(),
            run_name: None,
            tags: Vec::new(),
        }
    }

    /// The experiment named by `MLFLOW_EXPERIMENT_NAME`, else [`DEFAULT_EXPERIMENT_NAME`].
    pub fn from_env() -> RunSpec {
        let name = std::env::var("MLFLOW_EXPERIMENT_NAME")
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| DEFAULT_EXPERIMENT_NAME.to_string());
        RunSpec::new(name)
    }

    pub fn with_run_name(mut self, run_name: impl Into<String>) -> RunSpec {
        self.run_name = Some(run_name.into());
        self
    }

    pub fn with_tags(mut self, tags: impl IntoIterator<Item = Tag>) -> RunSpec {
        self.tags.extend(tags);
        self
    }
}

/// How the sender thread paces itself.
#[derive(Clone, Debug)]
pub struct LoggerOptions {
    /// How long events gather into one batch while the server answers.
    pub flush_interval: Duration,
    /// The longest wait between retries while the server is down (the wait doubles up to it).
    pub max_retry_interval: Duration,
    /// How long [`RunLogger::finish`] keeps trying to deliver what is left.
    pub finish_timeout: Duration,
}

impl Default for LoggerOptions {
    fn default() -> LoggerOptions {
        LoggerOptions {
            flush_interval: Duration::from_secs(1),
            max_retry_interval: Duration::from_secs(30),
            finish_timeout: Duration::from_secs(10),
        }
    }
}

/// What [`RunLogger::finish`] left behind.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishReport {
    pub run_id: Option<String>,
    /// Events still only in the journal; `sync_run_folder` (`mwt mlflow-sync`) sends them.
    pub unsent_events: usize,
    pub sent: SyncReport,
}

/// Logs one training run to MLflow without ever holding training up.
///
/// Every call appends the event to `<run_dir>/mlflow/journal.jsonl` first, then
/// hands it to a sender thread that batches events into `log-batch` calls.
/// When the server cannot be reached the thread warns once, keeps the events
/// and retries with a growing wait; whatever is still unsent at the end stays
/// in the journal for [`crate::sync_run_folder`]. Opening a folder that already
/// has a journal continues the same run (a resumed training).
///
/// One sender per run folder: the logger's thread holds `<run_dir>/mlflow/sender.lock`
/// (an advisory lock the kernel drops with the process), because two senders
/// that both find the run missing would each create one. Opening waits up to
/// `finish_timeout` for a dropped logger's thread to let go.
///
/// ```no_run
/// use cardet_tracking::{RunLogger, RunSpec, RunStatus, TrackingConfig};
/// # fn main() -> Result<(), cardet_tracking::Error> {
/// let spec = RunSpec::from_env().with_run_name("yolov8n-synth");
/// let mut logger = RunLogger::open("runs/exp1".as_ref(), &TrackingConfig::from_env(), &spec)?;
/// logger.log_params([("batch_size", "32"), ("epochs", "100")])?;
/// for step in 0..3 {
///     logger.log_metrics(step, [("train/box_loss", 1.0 / (step + 1) as f64)])?;
/// }
/// logger.log_artifact("runs/exp1/weights/best.pt".as_ref(), Some("weights"))?;
/// let report = logger.finish(RunStatus::Finished)?;
/// println!("{} events left for mwt mlflow-sync", report.unsent_events);
/// # Ok(()) }
/// ```
pub struct RunLogger {
    run_dir: PathBuf,
    journal: JsonLines,
    next_seq: u64,
    commands: Sender<Command>,
    worker: Option<JoinHandle<()>>,
    shared: Arc<Mutex<SharedState>>,
    finish_timeout: Duration,
}

enum Command {
    Event(Record),
    Finish {
        deadline: Instant,
        reply: Sender<SyncReport>,
    },
}

/// What the trainer's side can ask about the sender without waiting for it.
#[derive(Default)]
struct SharedState {
    run_id: Option<String>,
    /// Events handed to the sender (journaled), counted by the logger...
    queued: usize,
    /// ...and those the sender is done with (acknowledged or refused for good).
    /// Two counters, so an event still in the channel counts as unsent.
    settled: usize,
}

impl RunLogger {
    /// Opens (or continues) the run journaled in `run_dir` with default pacing.
    /// Nothing here waits for the server.
    pub fn open(
        run_dir: &Path,
        config: &TrackingConfig,
        spec: &RunSpec,
    ) -> Result<RunLogger, Error> {
        RunLogger::open_with(run_dir, config, spec, LoggerOptions::default())
    }

    pub fn open_with(
        run_dir: &Path,
        config: &TrackingConfig,
        spec: &RunSpec,
        options: LoggerOptions,
    ) -> Result<RunLogger, Error> {
        for tag in &spec.tags {
            check_tag(tag)?;
        }
        let client = MlflowClient::new(config)?;
        // Before reading the state: a previous logger of this folder may still be
        // writing acknowledgements in its last attempt.
        let lock = SenderLock::acquire(run_dir, options.finish_timeout)?;
        let state = JournalState::load(run_dir)?;
        for diagnostic in &state.diagnostics {
            tracing::warn!("skipping an unreadable journal line: {diagnostic}");
        }
        let mut journal = JsonLines::open(&journal_dir(run_dir).join(JOURNAL_FILE))?;
        let mut pending: VecDeque<Record> = state.unsent().into();
        let mut next_seq = state.next_seq;
        let start = match state.start.clone() {
            Some(start) => start,
            None => {
                let start = StartRun {
                    experiment_name: spec.experiment_name.clone(),
                    run_name: spec.run_name.clone(),
                    start_time_ms: now_ms(),
                    tags: spec.tags.iter().map(key_value_of_tag).collect(),
                    run_key: new_run_key(),
                };
                let record = Record {
                    seq: next_seq,
                    event: Event::StartRun(start.clone()),
                };
                journal.append(&record)?;
                pending.push_back(record);
                next_seq += 1;
                start
            }
        };
        let replayer = Replayer::new(client, run_dir, Some(start), state.run.as_ref(), lock)?;
        let shared = Arc::new(Mutex::new(SharedState {
            run_id: replayer.run_id().map(str::to_string),
            queued: pending.len(),
            settled: 0,
        }));
        let (commands, receiver) = mpsc::channel();
        let worker = Worker {
            replayer,
            pending,
            commands: receiver,
            shared: Arc::clone(&shared),
            options: options.clone(),
            uri: config.tracking_uri.clone(),
            run_dir: run_dir.to_path_buf(),
        };
        let handle = std::thread::Builder::new()
            .name("mlflow-sender".into())
            .spawn(move || worker.run())
            .map_err(Error::io(run_dir))?;
        Ok(RunLogger {
            run_dir: run_dir.to_path_buf(),
            journal,
            next_seq,
            commands,
            worker: Some(handle),
            shared,
            finish_timeout: options.finish_timeout,
        })
    }

    /// Logs params; a value over 6000 characters is refused here, before it is journaled.
    pub fn log_params<K: AsRef<str>, V: ToString>(
        &mut self,
        params: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), Error> {
        let mut logged = Vec::new();
        for (key, value) in params {
            let param = crate::types::Param::new(sanitize_key(key.as_ref()), value.to_string());
            check_param(&param)?;
            logged.push(KeyValue {
                key: param.key,
                value: param.value,
            });
        }
        self.record(Event::Params { params: logged })
    }

    /// Sets tags (again: a later value replaces an earlier one).
    pub fn set_tags<K: AsRef<str>, V: ToString>(
        &mut self,
        tags: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), Error> {
        let mut logged = Vec::new();
        for (key, value) in tags {
            let tag = Tag::new(sanitize_key(key.as_ref()), value.to_string());
            check_tag(&tag)?;
            logged.push(key_value_of_tag(&tag));
        }
        self.record(Event::Tags { tags: logged })
    }

    /// Logs metric values of one step, timestamped now. Keys pass through
    /// [`sanitize_key`] (`metrics/mAP50-95(B)` is stored as `metrics/mAP50-95B`).
    pub fn log_metrics<K: AsRef<str>>(
        &mut self,
        step: i64,
        metrics: impl IntoIterator<Item = (K, f64)>,
    ) -> Result<(), Error> {
        let timestamp_ms = now_ms();
        let mut points = Vec::new();
        for (key, value) in metrics {
            let key = sanitize_key(key.as_ref()).into_owned();
            check_metric_key(&key)?;
            points.push(MetricPoint {
                key,
                value,
                timestamp_ms,
                step,
            });
        }
        self.record(Event::Metrics { metrics: points })
    }

    /// Queues a file (to `<artifact_dir>/<name>`) or a folder's contents (under
    /// `<artifact_dir>`) for upload. The upload reads the file when it is sent,
    /// so a file rewritten in between (`last.pt`) goes up as it is then.
    pub fn log_artifact(
        &mut self,
        local_path: &Path,
        artifact_dir: Option<&str>,
    ) -> Result<(), Error> {
        // An absolute path, so a sync from another working directory finds it.
        let local_path = std::fs::canonicalize(local_path).map_err(Error::io(local_path))?;
        self.record(Event::Artifact {
            local_path,
            artifact_dir: artifact_dir.map(str::to_string),
        })
    }

    /// The MLflow run id, once the server has created the run.
    pub fn run_id(&self) -> Option<String> {
        self.shared.lock().ok().and_then(|s| s.run_id.clone())
    }

    /// Events journaled but not yet acknowledged by the server.
    pub fn unsent_events(&self) -> usize {
        self.shared
            .lock()
            .map(|s| s.queued.saturating_sub(s.settled))
            .unwrap_or(0)
    }

    pub fn journal_path(&self) -> PathBuf {
        journal_dir(&self.run_dir).join(JOURNAL_FILE)
    }

    /// Journals the run's end, syncs the journal to disk and gives the sender
    /// thread up to [`LoggerOptions::finish_timeout`] to deliver what is left.
    pub fn finish(mut self, status: RunStatus) -> Result<FinishReport, Error> {
        self.record(Event::EndRun {
            status,
            end_time_ms: now_ms(),
        })?;
        self.journal.sync()?;
        let (reply, answer) = mpsc::channel();
        let deadline = Instant::now() + self.finish_timeout;
        self.commands
            .send(Command::Finish { deadline, reply })
            .map_err(|_| Error::SenderGone)?;
        // The worker answers by its deadline unless one request (a large
        // checkpoint upload) is still running; then it is left to finish alone.
        let sent = match answer.recv_timeout(self.finish_timeout + Duration::from_secs(5)) {
            Ok(sent) => {
                if let Some(worker) = self.worker.take() {
                    let _ = worker.join();
                }
                sent
            }
            Err(_) => SyncReport::default(),
        };
        let report = FinishReport {
            run_id: self.run_id(),
            unsent_events: self.unsent_events(),
            sent,
        };
        if report.unsent_events > 0 {
            tracing::warn!(
                "{} MLflow events are only in {}; send them with `mwt mlflow-sync {}`",
                report.unsent_events,
                self.journal_path().display(),
                self.run_dir.display()
            );
        }
        Ok(report)
    }

    fn record(&mut self, event: Event) -> Result<(), Error> {
        let record = Record {
            seq: self.next_seq,
            event,
        };
        // The journal line comes first: once this returns, the event survives
        // a crash of this process whatever the server does.
        self.journal.append(&record)?;
        self.next_seq += 1;
        if let Ok(mut shared) = self.shared.lock() {
            shared.queued += 1;
        }
        // A dead sender thread only means no live sending; the journal has it all.
        let _ = self.commands.send(Command::Event(record));
        Ok(())
    }
}

impl Drop for RunLogger {
    fn drop(&mut self) {
        // Without `finish` the channel closes; the thread makes one last attempt
        // and exits. We do not join: a drop during unwinding must not hang on the network.
        self.worker.take();
    }
}

/// Ask the sender for an early batch when this many events wait.
const EARLY_BATCH_EVENTS: usize = 500;

struct Worker {
    replayer: Replayer,
    pending: VecDeque<Record>,
    commands: Receiver<Command>,
    shared: Arc<Mutex<SharedState>>,
    options: LoggerOptions,
    uri: String,
    run_dir: PathBuf,
}

impl Worker {
    fn run(mut self) {
        let mut next_attempt = Instant::now();
        let mut retry_wait = self.options.flush_interval;
        let mut offline = false;
        let mut given_up = false;
        let mut finishing: Option<(Instant, Sender<SyncReport>)> = None;
        let mut channel_closed = false;
        loop {
            if finishing.is_none() && !channel_closed {
                let wait = next_attempt.saturating_duration_since(Instant::now());
                match self.commands.recv_timeout(wait) {
                    Ok(command) => {
                        self.handle(command, &mut finishing);
                        while let Ok(command) = self.commands.try_recv() {
                            self.handle(command, &mut finishing);
                        }
                        let due = Instant::now() >= next_attempt
                            || (!offline && self.pending.len() >= EARLY_BATCH_EVENTS)
                            || finishing.is_some();
                        if !due {
                            continue;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => channel_closed = true,
                }
            } else {
                std::thread::sleep(next_attempt.saturating_duration_since(Instant::now()));
            }

            if !self.pending.is_empty() && !given_up {
                let pending_before = self.pending.len();
                let sent = self.replayer.send(&mut self.pending);
                if let Ok(mut shared) = self.shared.lock() {
                    shared.run_id = self.replayer.run_id().map(str::to_string);
                    shared.settled += pending_before - self.pending.len();
                }
                match sent {
                    Ok(()) => {
                        if offline {
                            tracing::info!(
                                "MLflow at {} answers again; held-back events are sent",
                                self.uri
                            );
                        }
                        offline = false;
                        retry_wait = self.options.flush_interval;
                    }
                    Err(err) if err.is_transient() => {
                        if !offline {
                            // The URI once, then what failed: the request and the transport's reason.
                            let cause = match &err {
                                Error::Unreachable {
                                    endpoint, source, ..
                                } => format!("{endpoint}: {}", error_chain(source)),
                                other => error_chain(other),
                            };
                            tracing::warn!(
                                "MLflow at {} is unreachable ({cause}); training goes on, events stay in {} and are retried (or run `mwt mlflow-sync {}`)",
                                self.uri,
                                journal_dir(&self.run_dir).join(JOURNAL_FILE).display(),
                                self.run_dir.display()
                            );
                        }
                        offline = true;
                        retry_wait = (retry_wait * 2).min(self.options.max_retry_interval);
                    }
                    Err(err) => {
                        tracing::error!(
                            "stopped sending to MLflow at {}: {}; the journal keeps every event for `mwt mlflow-sync {}`",
                            self.uri,
                            error_chain(&err),
                            self.run_dir.display()
                        );
                        given_up = true;
                    }
                }
            }

            let now = Instant::now();
            next_attempt = now
                + if offline {
                    retry_wait
                } else {
                    self.options.flush_interval
                };
            let done = self.pending.is_empty() || given_up;
            if let Some((deadline, reply)) = &finishing {
                if done || now >= *deadline {
                    let _ = reply.send(self.replayer.report.clone());
                    return;
                }
                // While finishing, try again soon rather than after a long backoff.
                next_attempt = next_attempt
                    .min(now + Duration::from_millis(500))
                    .min(*deadline);
            } else if channel_closed {
                return;
            }
        }
    }

    fn handle(&mut self, command: Command, finishing: &mut Option<(Instant, Sender<SyncReport>)>) {
        match command {
            Command::Event(record) => self.pending.push_back(record),
            Command::Finish { deadline, reply } => *finishing = Some((deadline, reply)),
        }
    }
}

fn key_value_of_tag(tag: &Tag) -> KeyValue {
    KeyValue {
        key: tag.key.clone(),
        value: tag.value.clone(),
    }
}

/// Unique enough to find this journal's run among an experiment's runs.
fn new_run_key() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}
