//! The run folder's MLflow journal: what the trainer logged
//! (`<run_dir>/mlflow/journal.jsonl`) and what the server acknowledged
//! (`<run_dir>/mlflow/sent.jsonl`), each one JSON object per line, append-only.
//!
//! Two files rather than one so that the trainer's thread and the sender's
//! thread each own one file and never interleave writes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::types::RunStatus;

pub(crate) const JOURNAL_FILE: &str = "journal.jsonl";
pub(crate) const SENT_FILE: &str = "sent.jsonl";

/// `<run_dir>/mlflow`, where both files live.
pub fn journal_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("mlflow")
}

/// One journaled event with its sequence number (0, 1, 2, ... in file order).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Record {
    pub seq: u64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    StartRun(StartRun),
    Params {
        params: Vec<KeyValue>,
    },
    Tags {
        tags: Vec<KeyValue>,
    },
    Metrics {
        metrics: Vec<MetricPoint>,
    },
    Artifact {
        local_path: PathBuf,
        artifact_dir: Option<String>,
    },
    EndRun {
        status: RunStatus,
        end_time_ms: i64,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct StartRun {
    pub experiment_name: String,
    pub run_name: Option<String>,
    pub start_time_ms: i64,
    pub tags: Vec<KeyValue>,
    /// Tagged on the MLflow run as [`RUN_KEY_TAG`], so a sync that finds the run
    /// already created (the process died before it recorded the id) reuses it.
    pub run_key: String,
}

/// The run tag holding the key a journal made for its run at start, so a sync
/// finds a run the server created but the journal never heard back about.
pub const RUN_KEY_TAG: &str = "cardet.run_key";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct MetricPoint {
    pub key: String,
    #[serde(with = "crate::wire::proto_double")]
    pub value: f64,
    pub timestamp_ms: i64,
    pub step: i64,
}

/// One line of `sent.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "ack", rename_all = "snake_case")]
pub(crate) enum Ack {
    /// The journal's run exists on the server.
    Run {
        tracking_uri: String,
        run_id: String,
        experiment_id: String,
        artifact_uri: String,
    },
    /// Every event up to and including `seq` is on the server (or was refused, see `Rejected`).
    Through { seq: u64 },
    /// The server refused the event for good (a 4xx); it is not sent again.
    Rejected { seq: u64, error: String },
}

pub(crate) const LOCK_FILE: &str = "sender.lock";

/// Held by whoever sends a folder's journal (a logger's thread or a sync), so
/// two senders never both create the run. An advisory `flock`: the kernel drops
/// it when the holder's process dies, so a crash leaves no stale lock.
pub(crate) struct SenderLock {
    _file: File,
}

impl SenderLock {
    /// Takes the lock, waiting up to `wait` for a holder that is about to let go
    /// (a dropped logger's thread making its last attempt).
    pub fn acquire(run_dir: &Path, wait: std::time::Duration) -> Result<SenderLock, Error> {
        let dir = journal_dir(run_dir);
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(Error::io(&path))?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(SenderLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(Error::FolderBusy { path }),
                Err(std::fs::TryLockError::Error(err)) => return Err(Error::io(&path)(err)),
            }
        }
    }
}

/// A line that could not be read, kept as data rather than stopping a sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalDiagnostic {
    pub path: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for JournalDiagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} line {}: {}",
            self.path.display(),
            self.line,
            self.reason
        )
    }
}

/// An append-only JSON-lines file. Each line goes out in one `write` call, so a
/// crash leaves at most one torn last line, which the reader skips.
pub(crate) struct JsonLines {
    path: PathBuf,
    file: File,
}

impl JsonLines {
    pub fn open(path: &Path) -> Result<JsonLines, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(Error::io(path))?;
        Ok(JsonLines {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn append(&mut self, value: &impl Serialize) -> Result<(), Error> {
        let mut line = serde_json::to_vec(value).map_err(|err| Error::Io {
            path: self.path.clone(),
            source: std::io::Error::other(err),
        })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(Error::io(&self.path))
    }

    /// Forces the lines to disk (at the end of a run; a per-step fsync would cost the trainer).
    pub fn sync(&mut self) -> Result<(), Error> {
        self.file.sync_data().map_err(Error::io(&self.path))
    }
}

/// Reads every well-formed line; bad lines (a torn last line after a crash,
/// hand edits) become diagnostics. A missing file reads as empty.
pub(crate) fn read_lines<T: for<'de> Deserialize<'de>>(
    path: &Path,
) -> Result<(Vec<T>, Vec<JournalDiagnostic>), Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(Error::io(path)(err)),
    };
    let mut values = Vec::new();
    let mut diagnostics = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(value) => values.push(value),
            Err(err) => diagnostics.push(JournalDiagnostic {
                path: path.to_path_buf(),
                line: index + 1,
                reason: err.to_string(),
            }),
        }
    }
    Ok((values, diagnostics))
}

/// What the two files say together.
pub(crate) struct JournalState {
    pub start: Option<StartRun>,
    pub records: Vec<Record>,
    pub run: Option<Ack>,
    /// Events with `seq <= acked_through` are done.
    pub acked_through: Option<u64>,
    pub next_seq: u64,
    pub diagnostics: Vec<JournalDiagnostic>,
}

impl JournalState {
    pub fn load(run_dir: &Path) -> Result<JournalState, Error> {
        let dir = journal_dir(run_dir);
        let (records, mut diagnostics) = read_lines::<Record>(&dir.join(JOURNAL_FILE))?;
        let (acks, sent_diagnostics) = read_lines::<Ack>(&dir.join(SENT_FILE))?;
        diagnostics.extend(sent_diagnostics);
        let start = records.iter().find_map(|record| match &record.event {
            Event::StartRun(start) => Some(start.clone()),
            _ => None,
        });
        let mut run = None;
        let mut acked_through = None;
        for ack in acks {
            match ack {
                Ack::Run { .. } => run = Some(ack),
                Ack::Through { seq } => acked_through = acked_through.max(Some(seq)),
                Ack::Rejected { .. } => {}
            }
        }
        let next_seq = records.iter().map(|r| r.seq + 1).max().unwrap_or(0);
        Ok(JournalState {
            start,
            records,
            run,
            acked_through,
            next_seq,
            diagnostics,
        })
    }

    /// The events the server has not acknowledged, in order.
    pub fn unsent(&self) -> Vec<Record> {
        self.records
            .iter()
            .filter(|record| self.acked_through.is_none_or(|acked| record.seq > acked))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_last_line_is_a_diagnostic_and_the_rest_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = journal_dir(dir.path()).join(JOURNAL_FILE);
        let mut journal = JsonLines::open(&path).expect("open journal");
        let metrics = Record {
            seq: 0,
            event: Event::Metrics {
                metrics: vec![MetricPoint {
                    key: "loss".into(),
                    value: f64::NAN,
                    timestamp_ms: 1,
                    step: 3,
                }],
            },
        };
        journal.append(&metrics).expect("append");
        drop(journal);
        let mut file = OpenOptions::new().append(true).open(&path).expect("reopen");
        file.write_all(br#"{"seq":1,"event":"par"#)
            .expect("torn write");

        let state = JournalState::load(dir.path()).expect("load");
        assert_eq!(state.records.len(), 1);
        assert!(
            matches!(&state.records[0].event, Event::Metrics { metrics } if metrics[0].value.is_nan() && metrics[0].step == 3)
        );
        assert_eq!(state.diagnostics.len(), 1);
        assert_eq!(state.diagnostics[0].line, 2);
        assert_eq!(state.next_seq, 1);
    }

    #[test]
    fn acknowledged_events_are_not_unsent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mlflow_dir = journal_dir(dir.path());
        let mut journal = JsonLines::open(&mlflow_dir.join(JOURNAL_FILE)).expect("journal");
        for seq in 0..5 {
            let record = Record {
                seq,
                event: Event::Tags {
                    tags: vec![KeyValue {
                        key: "k".into(),
                        value: seq.to_string(),
                    }],
                },
            };
            journal.append(&record).expect("append");
        }
        let mut sent = JsonLines::open(&mlflow_dir.join(SENT_FILE)).expect("sent");
        sent.append(&Ack::Through { seq: 1 }).expect("ack");
        sent.append(&Ack::Through { seq: 2 }).expect("ack");
        let unsent: Vec<u64> = JournalState::load(dir.path())
            .expect("load")
            .unsent()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(unsent, vec![3, 4]);
    }
}
