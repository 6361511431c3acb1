//! `sink run`: a consumer group member that reads the topic into the store with an
//! exactly-once effect.
//!
//! The poll loop owns a `BaseConsumer` and decodes each message into the batch of
//! the writer its partition belongs to (partition p, writer p mod N). Each writer
//! thread, with its own PostgreSQL connection, takes a batch when it is idle and
//! writes it with [`Store::write_batch`] in one transaction that also advances the
//! offsets stored in PostgreSQL (a small tokio runtime drives the connections), so
//! a partition's batches commit in order, one at a time. Only after that commit are
//! the offsets committed to Kafka (for
//! the next reader's convenience: PostgreSQL is the truth). On every partition
//! assignment the rebalance callback seeks each partition to its offset stored in
//! PostgreSQL, and the transaction skips any message below it, so a crash at any
//! moment, a re-delivery, or two members meeting on a partition across a rebalance
//! neither loses nor repeats a record.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cardet_record::KafkaUnreachable;
use cardet_store::{Batch, DeadLetter, Message as StoredMessage, Store};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;
use tokio::runtime::Handle;

use crate::SinkConfig;
use crate::error::{Error, kafka};

/// What a run did; printed as JSON with `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkSummary {
    pub topic: String,
    pub group: String,
    pub schema: String,
    /// Messages polled from Kafka.
    pub n_messages: u64,
    /// Records written to the store by this process.
    pub n_records: u64,
    /// Messages skipped because the store already had them.
    pub n_already_stored: u64,
    pub n_dead_letters: u64,
    pub n_batches: u64,
    /// Partitions this process wrote records or dead letters from.
    pub partitions: BTreeSet<i32>,
    pub seconds: f64,
    /// From the first message polled to the last batch committed.
    pub busy_seconds: f64,
    /// Records written per busy second.
    pub records_per_s: f64,
    #[serde(skip)]
    first_polled: Option<Instant>,
}

/// Consumes until `stop` is raised or, with `until_idle`, until no message came
/// for that long.
pub fn consume(config: &SinkConfig, stop: &AtomicBool) -> Result<SinkSummary, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    // One connection per writer; the first migrates before the others connect.
    let n_writers = config.writers.max(1);
    let mut stores = Vec::with_capacity(n_writers);
    for index in 0..n_writers {
        let store = runtime.block_on(async {
            let mut store = Store::connect(&config.database_url, &config.schema).await?;
            if index == 0 {
                store.migrate().await?;
            }
            Ok::<_, Error>(store)
        })?;
        stores.push(Arc::new(tokio::sync::Mutex::new(store)));
    }
    let context = SinkContext {
        handle: runtime.handle().clone(),
        // The rebalance callback reads stored offsets through the first writer's
        // connection; it waits for that writer's transaction at most.
        store: Arc::clone(&stores[0]),
        group: config.group.clone(),
        assigned: Mutex::new(HashSet::new()),
    };
    let consumer: BaseConsumer<SinkContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap)
        .set("group.id", &config.group)
        .set("client.id", "cardet-sink")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Eager assignment: the rebalance callback assigns whole lists with the
        // offsets it read from PostgreSQL.
        .set("partition.assignment.strategy", "range")
        .set(
            "session.timeout.ms",
            config.session_timeout.as_millis().to_string(),
        )
        .set("socket.connection.setup.timeout.ms", "5000")
        // librdkafka's default of 500 ms is how long tansu holds a fetch that finds one
        // partition drained while others still have a backlog: catching up on three
        // partitions then took 0.65 s instead of 0.17 s (5,000 records).
        .set("fetch.wait.max.ms", "50")
        .set("log_level", "4")
        .create_with_context(context)
        .map_err(kafka("creating the consumer"))?;
    consumer
        .fetch_metadata(Some(&config.topic), config.connect_timeout)
        .map_err(|error| KafkaUnreachable::new(&config.bootstrap, config.connect_timeout, error))?;
    consumer
        .subscribe(&[&config.topic])
        .map_err(kafka(format!("subscribing to {}", config.topic)))?;

    let mut summary = SinkSummary {
        topic: config.topic.clone(),
        group: config.group.clone(),
        schema: config.schema.clone(),
        ..SinkSummary::default()
    };
    let started = Instant::now();
    // Each writer has a rendezvous channel: a batch changes hands only when that
    // writer is idle, so at most two batches per writer are in memory (one being
    // written, one filling). A partition always goes to the same writer, so its
    // batches commit in order.
    let (to_consumer, written) = std::sync::mpsc::channel::<Result<Written, Error>>();
    let loop_result = std::thread::scope(|scope| {
        let mut to_writers = Vec::with_capacity(stores.len());
        for store in &stores {
            let (to_writer, from_consumer) = std::sync::mpsc::sync_channel::<Filled>(0);
            to_writers.push(to_writer);
            let (runtime, store, to_consumer) = (&runtime, &**store, to_consumer.clone());
            scope.spawn(move || {
                for filled in from_consumer {
                    let result = write(runtime, store, config, filled);
                    let failed = result.is_err();
                    if to_consumer.send(result).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(to_consumer);
        // Returns with the senders dropped, so each writer ends after the batch in hand.
        poll_loop(&consumer, config, stop, to_writers, &written, &mut summary)
    });
    let mut pending_commit = loop_result?;
    // What the writer committed after the loop stopped listening.
    for result in written.try_iter() {
        absorb(&consumer, &mut summary, &mut pending_commit, result?);
    }
    commit(&consumer, &config.topic, pending_commit, CommitMode::Sync);
    summary.seconds = started.elapsed().as_secs_f64();
    summary.records_per_s = summary.n_records as f64 / summary.busy_seconds.max(1e-9);
    drop(consumer);
    Ok(summary)
}

/// What the writer reports for one committed batch.
struct Written {
    outcome: cardet_store::BatchOutcome,
    partitions: BTreeSet<i32>,
    n_messages: usize,
    first_polled: Instant,
    committed: Instant,
}

/// Polls and hands batches to the writers until stopped or idle; returns the
/// offsets the writers committed to PostgreSQL that Kafka has not yet been told.
fn poll_loop(
    consumer: &BaseConsumer<SinkContext>,
    config: &SinkConfig,
    stop: &AtomicBool,
    to_writers: Vec<SyncSender<Filled>>,
    written: &Receiver<Result<Written, Error>>,
    summary: &mut SinkSummary,
) -> Result<BTreeMap<i32, i64>, Error> {
    let mut pending_commit: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_commit = Instant::now();
    let mut last_message = Instant::now();
    let mut filling: Vec<Filled> = to_writers.iter().map(|_| Filled::default()).collect();
    'polling: loop {
        for result in written.try_iter() {
            absorb(consumer, summary, &mut pending_commit, result?);
        }
        let stopping = stop.load(Ordering::Relaxed);
        let idle = config
            .until_idle
            .is_some_and(|idle| last_message.elapsed() >= idle);
        if stopping || idle {
            for (batch, to_writer) in filling.iter_mut().zip(&to_writers) {
                if !batch.messages.is_empty() && to_writer.send(std::mem::take(batch)).is_err() {
                    break;
                }
            }
            if stopping {
                tracing::info!("sink: stopping on signal");
            } else {
                tracing::info!("sink: no message for {:?}; done", config.until_idle);
            }
            break;
        }
        let any_filling = filling.iter().any(|batch| !batch.messages.is_empty());
        let timeout = Duration::from_millis(if any_filling { 5 } else { 100 });
        let mut drained = false;
        match consumer.poll(timeout) {
            Some(Ok(message)) => {
                last_message = Instant::now();
                let batch =
                    &mut filling[message.partition().rem_euclid(to_writers.len() as i32) as usize];
                if batch.messages.is_empty() {
                    batch.since = last_message;
                }
                // Decoded here, while the writers write earlier batches.
                batch.messages.push(decode(&message));
            }
            Some(Err(error)) => tracing::warn!("consumer: {error}"),
            None => drained = true,
        }
        for (batch, to_writer) in filling.iter_mut().zip(&to_writers) {
            if batch.messages.len() >= config.batch_size {
                // Full: wait for its writer.
                if to_writer.send(std::mem::take(batch)).is_err() {
                    break 'polling;
                }
            } else if !batch.messages.is_empty()
                && (drained || batch.since.elapsed() >= config.batch_linger)
            {
                // Nothing more to read right now, or lingered long enough: hand over
                // if its writer is idle, else keep filling.
                match to_writer.try_send(std::mem::take(batch)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(back)) => *batch = back,
                    Err(TrySendError::Disconnected(_)) => break 'polling,
                }
            }
        }
        if last_commit.elapsed() > Duration::from_millis(500) {
            commit(
                consumer,
                &config.topic,
                std::mem::take(&mut pending_commit),
                CommitMode::Async,
            );
            last_commit = Instant::now();
        }
    }
    drop(to_writers);
    // A writer stops early only on an error, which it sent before stopping.
    for result in written.try_iter() {
        absorb(consumer, summary, &mut pending_commit, result?);
    }
    Ok(pending_commit)
}

/// Writes one batch in one transaction (the writer thread).
fn write(
    runtime: &tokio::runtime::Runtime,
    store: &tokio::sync::Mutex<Store>,
    config: &SinkConfig,
    filled: Filled,
) -> Result<Written, Error> {
    let n_messages = filled.messages.len();
    let first_polled = filled.since;
    let batch = Batch {
        topic: config.topic.clone(),
        messages: filled.messages,
    };
    let write_started = Instant::now();
    let outcome =
        runtime.block_on(async { store.lock().await.write_batch(&config.group, &batch).await })?;
    tracing::debug!(
        "sink: batch of {n_messages}: filled and handed over in {:?}, written in {:?}",
        write_started - first_polled,
        write_started.elapsed()
    );
    let partitions = batch
        .messages
        .iter()
        .filter(|message| message.offset >= 0)
        .map(|message| message.partition)
        .collect();
    Ok(Written {
        outcome,
        partitions,
        n_messages,
        first_polled,
        committed: Instant::now(),
    })
}

/// Counts a committed batch and queues its offsets for Kafka.
fn absorb(
    consumer: &BaseConsumer<SinkContext>,
    summary: &mut SinkSummary,
    pending_commit: &mut BTreeMap<i32, i64>,
    written: Written,
) {
    let Written {
        outcome,
        partitions,
        n_messages,
        first_polled,
        committed,
    } = written;
    summary.n_messages += n_messages as u64;
    summary.n_batches += 1;
    summary.n_records += outcome.n_records as u64;
    summary.n_already_stored += outcome.n_already_stored as u64;
    summary.n_dead_letters += outcome.n_dead_letters as u64;
    summary.partitions.extend(partitions);
    let first = *summary.first_polled.get_or_insert(first_polled);
    summary.busy_seconds = (committed - first).as_secs_f64();
    // The transaction committed: now Kafka may learn the offsets too.
    let assigned = consumer.context().assigned_partitions();
    for (partition, next) in &outcome.next_offsets {
        if assigned.contains(partition) {
            pending_commit.insert(*partition, *next);
        }
    }
}

/// A batch being filled by the poll loop: decoded messages, and when the first came.
struct Filled {
    since: Instant,
    messages: Vec<StoredMessage>,
}

impl Default for Filled {
    fn default() -> Filled {
        Filled {
            since: Instant::now(),
            messages: Vec::new(),
        }
    }
}

/// A record, or a dead letter with the reason it is not one.
fn decode(message: &BorrowedMessage<'_>) -> StoredMessage {
    let payload = message.payload().unwrap_or_default();
    let content = cardet_record::decode(payload).map_err(|error| DeadLetter {
        reason: error.to_string(),
        key: message.key().map(<[u8]>::to_vec),
        payload: payload.to_vec(),
    });
    StoredMessage {
        partition: message.partition(),
        offset: message.offset(),
        content,
    }
}

fn commit(
    consumer: &BaseConsumer<SinkContext>,
    topic: &str,
    offsets: BTreeMap<i32, i64>,
    mode: CommitMode,
) {
    if offsets.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (partition, next) in offsets {
        if let Err(error) = list.add_partition_offset(topic, partition, Offset::Offset(next)) {
            tracing::debug!("kafka commit list: {error}");
        }
    }
    // A failed Kafka commit loses nothing: PostgreSQL holds the offsets.
    if let Err(error) = consumer.commit(&list, mode) {
        tracing::debug!("kafka commit: {error}");
    }
}

/// The consumer's context: on assignment, seeks each partition to the offset
/// stored in PostgreSQL before the first fetch.
struct SinkContext {
    handle: Handle,
    store: Arc<tokio::sync::Mutex<Store>>,
    group: String,
    assigned: Mutex<HashSet<i32>>,
}

impl SinkContext {
    fn assigned_partitions(&self) -> HashSet<i32> {
        self.assigned
            .lock()
            .map(|set| set.clone())
            .unwrap_or_default()
    }
}

impl ClientContext for SinkContext {}

impl ConsumerContext for SinkContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let elements: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|element| (element.topic().to_string(), element.partition()))
                    .collect();
                for (topic, partitions) in group_by_topic(&elements) {
                    // This thread is not a runtime thread, so it may block on one.
                    let stored = self.handle.block_on(async {
                        self.store
                            .lock()
                            .await
                            .stored_offsets(&self.group, &topic, &partitions)
                            .await
                    });
                    match stored {
                        Ok(stored) => {
                            for (partition, next) in stored {
                                let _ = tpl.set_partition_offset(
                                    &topic,
                                    partition,
                                    Offset::Offset(next),
                                );
                            }
                        }
                        // The transaction still skips what is stored; only the seek is lost.
                        Err(error) => tracing::warn!("reading stored offsets: {error}"),
                    }
                }
                tracing::info!(
                    "sink: assigned partitions {:?}",
                    elements.iter().map(|(_, p)| *p).collect::<Vec<_>>()
                );
                if let Ok(mut assigned) = self.assigned.lock() {
                    *assigned = elements.iter().map(|(_, p)| *p).collect();
                }
                if let Err(error) = consumer.assign(tpl) {
                    tracing::error!("assigning partitions: {error}");
                }
            }
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::warn!("rebalance error: {err:?}");
                }
                if let Ok(mut assigned) = self.assigned.lock() {
                    assigned.clear();
                }
                if let Err(error) = consumer.unassign() {
                    tracing::warn!("unassigning partitions: {error}");
                }
            }
        }
    }
}

fn group_by_topic(elements: &[(String, i32)]) -> Vec<(String, Vec<i32>)> {
    let mut grouped: Vec<(String, Vec<i32>)> = Vec::new();
    for (topic, partition) in elements {
        match grouped.iter_mut().find(|(name, _)| name == topic) {
            Some((_, partitions)) => partitions.push(*partition),
            None => grouped.push((topic.clone(), vec![*partition])),
        }
    }
    grouped
}
