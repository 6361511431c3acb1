//! Sends journaled events to MLflow in order and records each acknowledgement.
//! The live logger's sender thread and [`crate::sync_run_folder`] share it, so
//! a sync does exactly what the logger would have done with the server up.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use crate::client::MlflowClient;
use crate::journal::{
    Ack, Event, JournalDiagnostic, JsonLines, KeyValue, RUN_KEY_TAG, Record, SENT_FILE, SenderLock,
    StartRun, journal_dir,
};
use crate::types::{Metric, Param, RunInfo, RunStatus, Tag, limits};
use crate::{Error, error_chain};

/// What a sync (or the logger so far) sent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    pub run_id: Option<String>,
    /// Journal events the server acknowledged in this sync.
    pub events_sent: u64,
    pub metric_points_sent: u64,
    pub artifact_files_uploaded: u64,
    /// Events a previous send had already delivered, left alone.
    pub already_acknowledged: u64,
    /// Events the server refused for good (sequence number, error); they are not retried.
    pub rejected: Vec<(u64, String)>,
    /// Journal lines that could not be read (a torn last line after a crash).
    pub diagnostics: Vec<JournalDiagnostic>,
}

pub(crate) struct Replayer {
    client: MlflowClient,
    start: Option<StartRun>,
    run: Option<RunInfo>,
    sent: JsonLines,
    journal_path: PathBuf,
    pub report: SyncReport,
    /// Released when the replayer (and with it the logger's thread) ends.
    _lock: SenderLock,
}

impl Replayer {
    /// `lock` must be held before the journal state was read, so that state is current.
    pub fn new(
        client: MlflowClient,
        run_dir: &Path,
        start: Option<StartRun>,
        known_run: Option<&Ack>,
        lock: SenderLock,
    ) -> Result<Replayer, Error> {
        let dir = journal_dir(run_dir);
        let run = match known_run {
            Some(Ack::Run {
                run_id,
                experiment_id,
                artifact_uri,
                ..
            }) => Some(RunInfo {
                run_id: run_id.clone(),
                experiment_id: experiment_id.clone(),
                run_name: String::new(),
                status: RunStatus::Running,
                start_time_ms: None,
                end_time_ms: None,
                artifact_uri: artifact_uri.clone(),
            }),
            _ => None,
        };
        let report = SyncReport {
            run_id: run.as_ref().map(|r| r.run_id.clone()),
            ..SyncReport::default()
        };
        Ok(Replayer {
            client,
            start,
            run,
            sent: JsonLines::open(&dir.join(SENT_FILE))?,
            journal_path: dir.join(crate::journal::JOURNAL_FILE),
            report,
            _lock: lock,
        })
    }

    pub fn run_id(&self) -> Option<&str> {
        self.run.as_ref().map(|r| r.run_id.as_str())
    }

    /// Sends `pending` from the front, popping each event the server acknowledged
    /// or refused for good. Returns the first transient error (the rest stays
    /// pending) or an error no retry can fix (no run start, a local write failing).
    pub fn send(&mut self, pending: &mut VecDeque<Record>) -> Result<(), Error> {
        while let Some(front) = pending.front() {
            let run = self.ensure_run()?;
            let group_len = match &front.event {
                Event::Params { .. } | Event::Tags { .. } | Event::Metrics { .. } => {
                    batchable_prefix(pending)
                }
                _ => 1,
            };
            let group: Vec<Record> = pending.iter().take(group_len).cloned().collect();
            match self.deliver(&run, &group) {
                Ok(()) => {
                    self.acknowledge(&group)?;
                    pending.drain(..group_len);
                }
                Err(err) if err.is_transient() => return Err(err),
                // One of several batched events is bad: find it by sending them one by one.
                Err(_) if group.len() > 1 => {
                    for record in group {
                        match self.deliver(&run, std::slice::from_ref(&record)) {
                            Ok(()) => self.acknowledge(std::slice::from_ref(&record))?,
                            Err(err) if err.is_transient() => return Err(err),
                            Err(err) => self.reject(&record, &err)?,
                        }
                        pending.pop_front();
                    }
                }
                Err(err) => {
                    self.reject(&group[0], &err)?;
                    pending.pop_front();
                }
            }
        }
        Ok(())
    }

    fn ensure_run(&mut self) -> Result<RunInfo, Error> {
        if let Some(run) = &self.run {
            return Ok(run.clone());
        }
        let start = self.start.clone().ok_or_else(|| Error::NoRunInJournal {
            path: self.journal_path.clone(),
        })?;
        let experiment_id = self
            .client
            .get_or_create_experiment(&start.experiment_name)?;
        // The process may have died after the server created the run but before
        // `sent.jsonl` said so: the run key tag finds that run instead of making a twin.
        let existing =
            self.client
                .search_runs_by_tag(&experiment_id, RUN_KEY_TAG, &start.run_key)?;
        let run = match existing.into_iter().next() {
            Some(run) => run.info,
            None => {
                let mut tags: Vec<Tag> = start.tags.iter().map(tag_of).collect();
                tags.push(Tag::new(RUN_KEY_TAG, start.run_key.clone()));
                self.client.create_run(
                    &experiment_id,
                    start.run_name.as_deref(),
                    start.start_time_ms,
                    &tags,
                )?
            }
        };
        self.sent.append(&Ack::Run {
            tracking_uri: self.client.tracking_uri().to_string(),
            run_id: run.run_id.clone(),
            experiment_id: run.experiment_id.clone(),
            artifact_uri: run.artifact_uri.clone(),
        })?;
        self.report.run_id = Some(run.run_id.clone());
        self.run = Some(run.clone());
        Ok(run)
    }

    fn deliver(&mut self, run: &RunInfo, group: &[Record]) -> Result<(), Error> {
        let mut metrics = Vec::new();
        let mut params = Vec::new();
        let mut tags = Vec::new();
        for record in group {
            match &record.event {
                // Creating the run was the whole work of this event.
                Event::StartRun(_) => {}
                Event::Params { params: logged } => {
                    params.extend(logged.iter().map(|kv| Param::new(&kv.key, &kv.value)));
                }
                Event::Tags { tags: logged } => tags.extend(logged.iter().map(tag_of)),
                Event::Metrics { metrics: logged } => {
                    metrics.extend(logged.iter().map(|point| Metric {
                        key: point.key.clone(),
                        value: point.value,
                        timestamp_ms: point.timestamp_ms,
                        step: point.step,
                    }));
                }
                Event::Artifact {
                    local_path,
                    artifact_dir,
                } => {
                    let uploaded =
                        self.client
                            .upload_artifacts(run, local_path, artifact_dir.as_deref())?;
                    self.report.artifact_files_uploaded += uploaded.files;
                }
                Event::EndRun {
                    status,
                    end_time_ms,
                } => {
                    self.client
                        .update_run(&run.run_id, *status, Some(*end_time_ms))?;
                }
            }
        }
        if !(metrics.is_empty() && params.is_empty() && tags.is_empty()) {
            self.client
                .log_batch(&run.run_id, &metrics, &params, &tags)?;
            self.report.metric_points_sent += metrics.len() as u64;
        }
        Ok(())
    }

    fn acknowledge(&mut self, group: &[Record]) -> Result<(), Error> {
        if let Some(last) = group.last() {
            self.sent.append(&Ack::Through { seq: last.seq })?;
            self.report.events_sent += group.len() as u64;
        }
        Ok(())
    }

    fn reject(&mut self, record: &Record, err: &Error) -> Result<(), Error> {
        let error = error_chain(err);
        tracing::warn!(
            seq = record.seq,
            "MLflow refused a journaled event for good, skipping it: {error}"
        );
        self.sent.append(&Ack::Rejected {
            seq: record.seq,
            error: error.clone(),
        })?;
        self.sent.append(&Ack::Through { seq: record.seq })?;
        self.report.rejected.push((record.seq, error));
        Ok(())
    }
}

/// How many leading events fit in one `log-batch` call together.
fn batchable_prefix(pending: &VecDeque<Record>) -> usize {
    let (mut n_metrics, mut n_params, mut n_tags) = (0, 0, 0);
    let mut taken = 0;
    for record in pending {
        let (metrics, params, tags) = match &record.event {
            Event::Metrics { metrics } => (metrics.len(), 0, 0),
            Event::Params { params } => (0, params.len(), 0),
            Event::Tags { tags } => (0, 0, tags.len()),
            _ => break,
        };
        let over = n_metrics + metrics > limits::METRICS_PER_BATCH
            || n_params + params > limits::PARAMS_PER_BATCH
            || n_tags + tags > limits::TAGS_PER_BATCH;
        if over && taken > 0 {
            break;
        }
        n_metrics += metrics;
        n_params += params;
        n_tags += tags;
        taken += 1;
    }
    taken.max(1)
}

fn tag_of(kv: &KeyValue) -> Tag {
    Tag::new(&kv.key, &kv.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::MetricPoint;

    fn metrics(n: usize) -> Event {
        let point = MetricPoint {
            key: "loss".into(),
            value: 1.0,
            timestamp_ms: 0,
            step: 0,
        };
        Event::Metrics {
            metrics: vec![point; n],
        }
    }

    fn params(n: usize) -> Event {
        let param = KeyValue {
            key: "k".into(),
            value: "v".into(),
        };
        Event::Params {
            params: vec![param; n],
        }
    }

    fn check(events: Vec<Event>, expected: usize) {
        let pending: VecDeque<Record> = (events.into_iter().enumerate())
            .map(|(seq, event)| Record {
                seq: seq as u64,
                event,
            })
            .collect();
        assert_eq!(batchable_prefix(&pending), expected);
    }

    #[test]
    fn events_batch_together_up_to_log_batch_limits() {
        let end = || Event::EndRun {
            status: RunStatus::Finished,
            end_time_ms: 0,
        };
        check(vec![metrics(4), metrics(4), params(2), end()], 3);
        check(vec![metrics(600), metrics(600)], 1);
        check(vec![metrics(2500)], 1);
        check(vec![params(60), params(60), metrics(1)], 1);
        check(vec![metrics(1), end(), metrics(1)], 1);
    }
}
