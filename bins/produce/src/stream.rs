//! `produce stream`: every image of a folder, once or in a loop, into a topic,
//! through an idempotent producer with `acks=all`.
//!
//! Delivery reports are counted by the producer's context. A record whose delivery
//! failed (the broker went away longer than `message.timeout.ms`) is kept, with
//! its key and value, and sent again once more records are due or at the end, up
//! to `max_attempts` times; a producer that hit a fatal error is replaced first.
//! A record that reaches the broker twice this way lands on the same key, and
//! `sink`'s keyed upsert absorbs it.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cardet_record::{Format, encode};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;

use crate::StreamConfig;
use crate::error::{Error, kafka};
use crate::kafka::{answers_metadata, check_reachable, client_config};
use crate::source::{self, SourceItem};

/// What a stream did; printed as JSON with `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamSummary {
    pub topic: String,
    pub format: String,
    /// Image files found in the source folder.
    pub n_files: usize,
    /// Records handed to the producer, first sends only.
    pub n_records: u64,
    /// Delivery reports that said delivered (a re-sent record counts once per success).
    pub n_delivered: u64,
    /// Delivery reports that said failed.
    pub n_failed_deliveries: u64,
    /// Records sent again after a failed delivery.
    pub n_resent: u64,
    /// Records never delivered after every attempt.
    pub n_undelivered: u64,
    /// Times the producer was replaced (a fatal error, or the broker refusing its
    /// records after a restart).
    pub n_producer_restarts: u64,
    /// Delivery errors by message, with their counts.
    pub delivery_errors: BTreeMap<String, u64>,
    /// Files that could not be read as an image with valid labels.
    pub skipped: Vec<Skipped>,
    /// Images whose record exceeds the message size limit.
    pub too_large: Vec<Skipped>,
    /// Message value bytes delivered.
    pub bytes_delivered: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Streams the folder; an error only for what stops the whole stream (no broker,
/// no folder). Undelivered and oversized records are in the summary, and
/// [`StreamSummary::check`] turns them into an error for the exit code.
pub fn stream(config: &StreamConfig, stop: &AtomicBool) -> Result<StreamSummary, Error> {
    // The folder first: a mistyped path fails at once, not after the broker's timeout.
    let items = source::scan(&config.source)?;
    let mut summary = StreamSummary {
        topic: config.topic.clone(),
        format: match config.format {
            Format::Json => "json".into(),
            Format::Binary => "binary".into(),
        },
        n_files: items.len(),
        ..StreamSummary::default()
    };
    let progress = progress_bar(config, &items);
    // Connects (a wrong address fails here, naming it) before the clock starts.
    let mut sender = Sender::new(config)?;
    let started = Instant::now();
    let mut last_draw = Instant::now();
    // Reading, checking and encoding run on a thread of their own, a few records
    // ahead, so that the files and the producer are busy at the same time.
    std::thread::scope(|scope| -> Result<(), Error> {
        let (prepared_tx, prepared_rx) = std::sync::mpsc::sync_channel::<Prepared>(64);
        let items = &items;
        scope.spawn(move || prepare_records(items, config, &prepared_tx));
        for prepared in prepared_rx {
            if stop.load(Ordering::Relaxed)
                || config
                    .max_records
                    .is_some_and(|max| summary.n_records >= max)
            {
                break;
            }
            let (key, value) = match prepared.content {
                Ok(message) => message,
                Err(Rejected::Skipped(skipped)) => {
                    tracing::warn!("skipping {}: {}", skipped.path.display(), skipped.reason);
                    summary.skipped.push(skipped);
                    continue;
                }
                Err(Rejected::TooLarge(skipped)) => {
                    tracing::error!("not sent {}: {}", skipped.path.display(), skipped.reason);
                    summary.too_large.push(skipped);
                    continue;
                }
            };
            sender.resend_failed(&mut summary)?;
            if let Some(rate) = config.rate {
                let due = started + Duration::from_secs_f64(summary.n_records as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            sender.send(prepared.index, 1, key, value, &mut summary)?;
            summary.n_records += 1;
            if last_draw.elapsed() > Duration::from_millis(200) {
                last_draw = Instant::now();
                draw(&progress, &sender, &summary, started);
            }
        }
        // Dropping the receiver ends the preparing thread at its next record.
        Ok(())
    })?;
    sender.finish(&mut summary)?;
    for failed in sender
        .context()
        .too_large
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
    {
        summary.too_large.push(Skipped {
            path: items[failed.index].path.clone(),
            reason: failed.error,
        });
    }
    draw(&progress, &sender, &summary, started);
    progress.finish_and_clear();
    let counters = sender.context();
    summary.n_delivered = counters.n_delivered.load(Ordering::Relaxed);
    summary.n_failed_deliveries = counters.n_failed.load(Ordering::Relaxed);
    summary.bytes_delivered = counters.bytes_delivered.load(Ordering::Relaxed);
    summary.delivery_errors = counters
        .errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.records_per_s = summary.n_delivered as f64 / summary.seconds.max(1e-9);
    summary.mb_per_s = summary.bytes_delivered as f64 / 1e6 / summary.seconds.max(1e-9);
    for failed in counters.take_failed() {
        tracing::error!(
            "undelivered after {} attempts: {}: {}",
            failed.attempt,
            items[failed.index].path.display(),
            failed.error
        );
        summary.n_undelivered += 1;
    }
    Ok(summary)
}

impl StreamSummary {
    /// An error when any record failed for good: undelivered or over the size limit.
    pub fn check(&self) -> Result<(), Error> {
        if self.n_undelivered > 0 {
            return Err(Error::Undelivered {
                n_undelivered: self.n_undelivered,
                n_records: self.n_records,
            });
        }
        if !self.too_large.is_empty() {
            return Err(Error::TooLarge(self.too_large.len()));
        }
        Ok(())
    }
}

/// One source file, read and encoded, or why it will not be sent.
struct Prepared {
    index: usize,
    content: Result<(Vec<u8>, Vec<u8>), Rejected>,
}

enum Rejected {
    Skipped(Skipped),
    TooLarge(Skipped),
}

/// Reads and encodes the files in order (again and again with `repeat_forever`)
/// until the receiver hangs up. A rejected file is reported once and not read again.
fn prepare_records(
    items: &[SourceItem],
    config: &StreamConfig,
    prepared_tx: &std::sync::mpsc::SyncSender<Prepared>,
) {
    let mut bad: HashSet<usize> = HashSet::new();
    loop {
        let mut n_sendable = 0;
        for (index, item) in items.iter().enumerate() {
            if bad.contains(&index) {
                continue;
            }
            let content = match source::load(item, config.verify) {
                Err(reason) => Err(Rejected::Skipped(Skipped {
                    path: item.path.clone(),
                    reason,
                })),
                Ok(record) => {
                    let key = record.image_id.to_hex().into_bytes();
                    let value = encode(&record, config.format);
                    if key.len() + value.len() + MESSAGE_OVERHEAD > config.max_message_bytes {
                        Err(Rejected::TooLarge(Skipped {
                            path: item.path.clone(),
                            reason: format!(
                                "record of {} bytes exceeds the message limit of {} bytes (raise --max-message-bytes and the broker's limit)",
                                value.len(),
                                config.max_message_bytes
                            ),
                        }))
                    } else {
                        Ok((key, value))
                    }
                }
            };
            if content.is_err() {
                bad.insert(index);
            } else {
                n_sendable += 1;
            }
            if prepared_tx.send(Prepared { index, content }).is_err() {
                return;
            }
        }
        if !config.repeat_forever || n_sendable == 0 {
            return;
        }
    }
}

/// Room for the record batch and message headers around key and value.
const MESSAGE_OVERHEAD: usize = 512;

/// Which source file a message carries and how many times it was sent.
struct Attempt {
    index: usize,
    attempt: u32,
}

struct Failed {
    index: usize,
    attempt: u32,
    key: Vec<u8>,
    value: Vec<u8>,
    error: String,
    /// The broker refused the record (not a local timeout): after a broker restart
    /// the idempotent producer's id and sequence numbers may be what it refuses,
    /// so the next attempt goes through a new producer.
    refused_by_broker: bool,
}

fn refused_by_broker(code: Option<RDKafkaErrorCode>) -> bool {
    !matches!(
        code,
        None | Some(
            RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::PurgeQueue
                | RDKafkaErrorCode::PurgeInflight
        )
    )
}

/// Counts delivery reports and keeps the failed records for another attempt.
#[derive(Default)]
struct Deliveries {
    n_delivered: AtomicU64,
    n_failed: AtomicU64,
    bytes_delivered: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    failed: Mutex<Vec<Failed>>,
    too_large: Mutex<Vec<Failed>>,
}

impl Deliveries {
    fn take_failed(&self) -> Vec<Failed> {
        self.failed
            .lock()
            .map(|mut failed| std::mem::take(&mut *failed))
            .unwrap_or_default()
    }

    fn n_failed_waiting(&self) -> usize {
        self.failed.lock().map(|failed| failed.len()).unwrap_or(0)
    }
}

#[derive(Clone, Default)]
struct DeliveryContext(Arc<Deliveries>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Attempt>;

    fn delivery(&self, result: &DeliveryResult<'_>, attempt: Box<Attempt>) {
        match result {
            Ok(message) => {
                self.0.n_delivered.fetch_add(1, Ordering::Relaxed);
                let n_bytes = message.payload_len() as u64;
                self.0.bytes_delivered.fetch_add(n_bytes, Ordering::Relaxed);
            }
            Err((error, message)) => {
                self.0.n_failed.fetch_add(1, Ordering::Relaxed);
                let text = error.to_string();
                if let Ok(mut errors) = self.0.errors.lock() {
                    *errors.entry(text.clone()).or_default() += 1;
                }
                let failed = Failed {
                    index: attempt.index,
                    attempt: attempt.attempt,
                    key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
                    value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    error: text,
                    refused_by_broker: refused_by_broker(error.rdkafka_error_code()),
                };
                let list =
                    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
                        &self.0.too_large
                    } else {
                        &self.0.failed
                    };
                if let Ok(mut list) = list.lock() {
                    list.push(failed);
                }
            }
        }
    }
}

/// The producer, replaced when it hits a fatal error, with what it needs to resend.
struct Sender<'a> {
    config: &'a StreamConfig,
    context: DeliveryContext,
    producer: ThreadedProducer<DeliveryContext>,
}

impl<'a> Sender<'a> {
    /// The producer, connected: its own metadata request is the reachability check,
    /// so the first records do not wait for the connection.
    fn new(config: &'a StreamConfig) -> Result<Sender<'a>, Error> {
        let context = DeliveryContext::default();
        let producer = create_producer(config, context.clone())?;
        answers_metadata(producer.client(), &config.bootstrap, config.connect_timeout)?;
        Ok(Sender {
            config,
            context,
            producer,
        })
    }

    fn context(&self) -> &Deliveries {
        &self.context.0
    }

    fn send(
        &mut self,
        index: usize,
        attempt: u32,
        key: Vec<u8>,
        value: Vec<u8>,
        summary: &mut StreamSummary,
    ) -> Result<(), Error> {
        loop {
            let record = BaseRecord::with_opaque_to(
                &self.config.topic,
                Box::new(Attempt { index, attempt }),
            )
            .key(&key)
            .payload(&value);
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((error, _)) => {
                    if self.producer.client().fatal_error().is_some() {
                        self.restart(summary)?;
                        continue;
                    }
                    let failed = Failed {
                        index,
                        attempt,
                        key,
                        value,
                        error: error.to_string(),
                        refused_by_broker: false,
                    };
                    let list = if error.rdkafka_error_code()
                        == Some(RDKafkaErrorCode::MessageSizeTooLarge)
                    {
                        &self.context.0.too_large
                    } else {
                        self.context.0.n_failed.fetch_add(1, Ordering::Relaxed);
                        &self.context.0.failed
                    };
                    if let Ok(mut list) = list.lock() {
                        list.push(failed);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Sends again the records whose delivery failed and that have attempts left.
    fn resend_failed(&mut self, summary: &mut StreamSummary) -> Result<(), Error> {
        if self.context.0.n_failed_waiting() == 0 {
            return Ok(());
        }
        let refused = self
            .context
            .0
            .failed
            .lock()
            .map(|failed| failed.iter().any(|failed| failed.refused_by_broker))
            .unwrap_or(false);
        if refused || self.producer.client().fatal_error().is_some() {
            self.restart(summary)?;
        }
        let (retry, give_up): (Vec<Failed>, Vec<Failed>) = self
            .context
            .0
            .take_failed()
            .into_iter()
            .partition(|failed| failed.attempt < self.config.max_attempts);
        if let Ok(mut failed) = self.context.0.failed.lock() {
            failed.extend(give_up);
        }
        for failed in retry {
            tracing::info!(
                "re-sending record {} (attempt {}) after: {}",
                String::from_utf8_lossy(&failed.key),
                failed.attempt + 1,
                failed.error
            );
            summary.n_resent += 1;
            self.send(
                failed.index,
                failed.attempt + 1,
                failed.key,
                failed.value,
                summary,
            )?;
        }
        Ok(())
    }

    /// Waits for every delivery report, re-sending failures until none is left
    /// with attempts to spare.
    fn finish(&mut self, summary: &mut StreamSummary) -> Result<(), Error> {
        loop {
            let flush_timeout = self.config.message_timeout + Duration::from_secs(10);
            if let Err(error) = self.producer.flush(flush_timeout) {
                tracing::warn!("flush: {error}");
            }
            let retryable = self
                .context
                .0
                .failed
                .lock()
                .map(|failed| {
                    failed
                        .iter()
                        .any(|failed| failed.attempt < self.config.max_attempts)
                })
                .unwrap_or(false);
            if !retryable && self.producer.in_flight_count() == 0 {
                return Ok(());
            }
            if retryable {
                // Give a broker that just came back a moment before the next round.
                std::thread::sleep(Duration::from_millis(500));
                let _ = check_reachable(&self.config.bootstrap, self.config.connect_timeout);
                self.resend_failed(summary)?;
            }
        }
    }

    /// Replaces a producer that hit a fatal error; what it still held is purged
    /// into the failed list and sent again by the new one.
    fn restart(&mut self, summary: &mut StreamSummary) -> Result<(), Error> {
        let reason = self
            .producer
            .client()
            .fatal_error()
            .map(|(code, text)| format!("fatal error {code:?}: {text}"))
            .unwrap_or_else(|| "the broker refused its records".into());
        tracing::warn!("replacing the producer ({reason})");
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        let _ = self.producer.flush(Duration::from_secs(1));
        self.producer = create_producer(self.config, self.context.clone())?;
        summary.n_producer_restarts += 1;
        Ok(())
    }
}

fn create_producer(
    config: &StreamConfig,
    context: DeliveryContext,
) -> Result<ThreadedProducer<DeliveryContext>, Error> {
    client_config(&config.bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.max.bytes", config.max_message_bytes.to_string())
        .set(
            "message.timeout.ms",
            config.message_timeout.as_millis().to_string(),
        )
        .create_with_context(context)
        .map_err(kafka("creating the producer"))
}

fn progress_bar(config: &StreamConfig, items: &[SourceItem]) -> ProgressBar {
    if !config.progress {
        return ProgressBar::hidden();
    }
    let length = match (config.repeat_forever, config.max_records) {
        (_, Some(max)) => Some(max),
        (false, None) => Some(items.len() as u64),
        (true, None) => None,
    };
    let bar = match length {
        Some(length) => ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr()),
        None => ProgressBar::new_spinner(),
    };
    let template = if length.is_some() {
        "{bar:30} {pos}/{len} records {msg}"
    } else {
        "{spinner} {pos} records {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

fn draw(bar: &ProgressBar, sender: &Sender<'_>, summary: &StreamSummary, started: Instant) {
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let delivered = sender.context().n_delivered.load(Ordering::Relaxed);
    let bytes = sender.context().bytes_delivered.load(Ordering::Relaxed);
    bar.set_position(summary.n_records);
    bar.set_message(format!(
        "{:.0} records/s {:.1} MB/s delivered, {} failed, {} skipped",
        delivered as f64 / seconds,
        bytes as f64 / 1e6 / seconds,
        sender.context().n_failed.load(Ordering::Relaxed),
        summary.skipped.len()
    ));
}
