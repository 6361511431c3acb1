//! A Kafka topic as an input: the records `produce` writes (`cardet-record`'s JSON
//! envelope or binary format), read from the start of every partition up to where
//! each partition ended when the run began, or, with `follow`, until stopped.
//!
//! The consumer is assigned its partitions by hand instead of joining a group: it
//! never commits and never takes part in a rebalance, so a client run cannot move
//! `sink`'s offsets or take partitions away from `sink`'s members. Its `group.id`
//! is fresh per run only because librdkafka wants one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cardet_detect::dataset::{YoloLabel, parse_label_line};
use cardet_record::{KafkaUnreachable, Record};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::inputs::{Input, InputImage, RecordPosition};

/// How long one `poll` waits before the reader looks at its stop flag again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Which topic to read and where to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaInput {
    /// Kafka's `bootstrap.servers`.
    pub bootstrap: String,
    pub topic: String,
    /// Stop after this many records, those that do not decode included.
    pub max_records: Option<u64>,
    /// Keep reading what arrives after the run began, until stopped.
    pub follow: bool,
    /// How long to wait for the broker's first answer.
    pub connect_timeout: Duration,
}

impl KafkaInput {
    /// The command line's defaults: the whole topic as it is now, a 10 s connect timeout.
    pub fn new(bootstrap: &str, topic: &str) -> KafkaInput {
        KafkaInput {
            bootstrap: bootstrap.to_string(),
            topic: topic.to_string(),
            max_records: None,
            follow: false,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A topic whose partitions are assigned, from their first offsets, with the end
/// offsets read before the first record.
pub(crate) struct OpenedTopic {
    consumer: BaseConsumer<QuietUntilOpen>,
    input: KafkaInput,
    /// Per partition still to read, the offset one past the last record of this
    /// run (the high watermark when it began); `None` when following.
    ends: Option<BTreeMap<i32, i64>>,
    /// Records between the low and high watermarks when the run began.
    n_available: u64,
}

/// Connects, finds the topic's partitions and their watermarks, and assigns them.
/// An unreachable broker fails here within `connect_timeout`, naming the address.
pub(crate) fn open(input: &KafkaInput) -> Result<OpenedTopic, Error> {
    let consumer: BaseConsumer<QuietUntilOpen> = client_config(input)
        .create_with_context(QuietUntilOpen::default())
        .map_err(|source| Error::Kafka {
            context: format!("creating a Kafka consumer for {}", input.bootstrap),
            source,
        })?;
    let metadata = consumer
        .fetch_metadata(Some(&input.topic), input.connect_timeout)
        .map_err(|error| KafkaUnreachable::new(&input.bootstrap, input.connect_timeout, error))?;
    let no_such_topic = || Error::NoSuchTopic {
        topic: input.topic.clone(),
        bootstrap: input.bootstrap.clone(),
    };
    let topic = metadata
        .topics()
        .iter()
        .find(|topic| topic.name() == input.topic)
        .ok_or_else(no_such_topic)?;
    match topic.error() {
        None => {}
        Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
            return Err(no_such_topic());
        }
        Some(code) => {
            return Err(Error::Kafka {
                context: format!("reading the metadata of topic {}", input.topic),
                source: KafkaError::MetadataFetch(RDKafkaErrorCode::from(code)),
            });
        }
    }
    let partitions: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(no_such_topic());
    }

    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    let mut n_available = 0u64;
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(&input.topic, partition, input.connect_timeout)
            .map_err(|source| Error::Kafka {
                context: format!(
                    "reading the offsets of topic {} partition {partition}",
                    input.topic
                ),
                source,
            })?;
        n_available += u64::try_from(high - low).unwrap_or(0);
        // Without `follow`, an empty partition has nothing for this run.
        if input.follow || low < high {
            assignment
                .add_partition_offset(&input.topic, partition, Offset::Offset(low))
                .map_err(|source| Error::Kafka {
                    context: format!("assigning topic {} partition {partition}", input.topic),
                    source,
                })?;
            ends.insert(partition, high);
        }
    }
    if n_available == 0 && !input.follow {
        return Err(Error::InvalidArgument(format!(
            "topic {} at {} holds no records (--follow waits for new ones)",
            input.topic, input.bootstrap
        )));
    }
    consumer
        .assign(&assignment)
        .map_err(|source| Error::Kafka {
            context: format!("assigning the partitions of topic {}", input.topic),
            source,
        })?;
    consumer.context().opened.store(true, Ordering::Relaxed);
    Ok(OpenedTopic {
        consumer,
        input: input.clone(),
        ends: (!input.follow).then_some(ends),
        n_available,
    })
}

impl OpenedTopic {
    /// How many records the reader will send; `None` when it follows the topic
    /// without a `max_records` limit.
    pub(crate) fn expected_records(&self) -> Option<u64> {
        expected_records(self.n_available, self.input.max_records, self.input.follow)
    }

    /// Sends every record of the run to `sender`: an image, or a skip (after one
    /// warning naming topic, partition and offset) for a record that does not
    /// decode. Returns at the end offsets, after `max_records`, when `stop` is
    /// raised or when the receiver is gone.
    pub(crate) fn read(self, sender: &mpsc::Sender<Input>, stop: &AtomicBool) {
        let topic = self.input.topic.as_str();
        let mut unfinished = self.ends;
        let mut n_read = 0u64;
        loop {
            if stop.load(Ordering::Relaxed) || sender.is_closed() {
                return;
            }
            if self.input.max_records.is_some_and(|max| n_read >= max)
                || unfinished.as_ref().is_some_and(BTreeMap::is_empty)
            {
                return;
            }
            let message = match self.consumer.poll(POLL_INTERVAL) {
                None => continue,
                Some(Ok(message)) => message,
                // The partition's present end, at or past the run's end offset
                // (reached also when the last offsets below it hold no record).
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Some(unfinished) = unfinished.as_mut() {
                        unfinished.remove(&partition);
                    }
                    continue;
                }
                Some(Err(error)) => {
                    tracing::warn!("reading topic {topic}: {error}");
                    continue;
                }
            };
            let (partition, offset) = (message.partition(), message.offset());
            if let Some(unfinished) = unfinished.as_mut() {
                match unfinished.get(&partition) {
                    Some(&end) if offset < end => {
                        if offset + 1 >= end {
                            unfinished.remove(&partition);
                        }
                    }
                    // Written after the run began: the next run's.
                    _ => {
                        unfinished.remove(&partition);
                        continue;
                    }
                }
            }
            n_read += 1;
            let position = RecordPosition {
                topic: topic.to_string(),
                partition,
                offset,
            };
            let input = match image_of_record(message.payload().unwrap_or_default()) {
                Ok((record, labels)) => Input::Image(InputImage {
                    name: record.file_name().to_string(),
                    bytes: record.image,
                    labels,
                    position: Some(position),
                }),
                Err(reason) => {
                    tracing::warn!("skipping the record at {position}: {reason}");
                    Input::Skipped
                }
            };
            if sender.blocking_send(input).is_err() {
                return;
            }
        }
    }
}

/// The records a run will read: those there at the start, or up to `max_records`;
/// a followed topic has no end of its own.
fn expected_records(n_available: u64, max_records: Option<u64>, follow: bool) -> Option<u64> {
    let available = (!follow).then_some(n_available);
    match (available, max_records) {
        (Some(available), Some(max)) => Some(available.min(max)),
        (available, max) => available.or(max),
    }
}

/// Decodes a message value into its record and ground truth, or says why not.
fn image_of_record(payload: &[u8]) -> Result<(Record, Option<Vec<YoloLabel>>), String> {
    let record = cardet_record::decode(payload).map_err(|error| error.to_string())?;
    let labels = ground_truth(&record)?;
    Ok((record, labels))
}

/// A record's labels, parsed from their exact text by the dataset reader's own line
/// parser, so a topic's mAP is the split's to the last bit. A record from a
/// dataset split with no label file is an image with no objects, as a dataset
/// reader takes it; one from a plain folder (no split, no labels) is not scored.
fn ground_truth(record: &Record) -> Result<Option<Vec<YoloLabel>>, String> {
    let Some(labels) = &record.labels else {
        return Ok(record.split.as_ref().map(|_| Vec::new()));
    };
    let mut parsed = Vec::new();
    for (line_idx, line) in labels.text().lines().enumerate() {
        match parse_label_line(line) {
            Ok(Some(label)) => parsed.push(label),
            Ok(None) => {}
            Err(reason) => return Err(format!("labels line {}: {reason}", line_idx + 1)),
        }
    }
    Ok(Some(parsed))
}

fn client_config(input: &KafkaInput) -> ClientConfig {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &input.bootstrap)
        .set("client.id", "cardet-triton-client")
        .set(
            "group.id",
            format!("cardet-triton-client-{}-{nanos:x}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Tells the reader a partition has nothing left, even when its last offsets
        // below the end hold no record (compaction, transaction markers).
        .set(
            "enable.partition.eof",
            if input.follow { "false" } else { "true" },
        )
        // Fail fast on a wrong address instead of retrying a resolver for minutes.
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("log_level", "4");
    config
}

/// librdkafka's own log lines and errors go to `debug` until the topic is open,
/// because an unreachable broker then ends the run with one line naming the
/// address (not one line per retry); after that they are warnings, as a broker
/// lost mid-run is news while librdkafka reconnects.
#[derive(Default)]
struct QuietUntilOpen {
    opened: AtomicBool,
}

impl QuietUntilOpen {
    fn report(&self, serious: bool, text: std::fmt::Arguments<'_>) {
        if serious && self.opened.load(Ordering::Relaxed) {
            tracing::warn!("librdkafka: {text}");
        } else {
            tracing::debug!("librdkafka: {text}");
        }
    }
}

impl ClientContext for QuietUntilOpen {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let serious = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
                | RDKafkaLogLevel::Warning
        );
        self.report(serious, format_args!("{facility} {message}"));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.report(true, format_args!("{error}: {reason}"));
    }
}

impl ConsumerContext for QuietUntilOpen {}

#[cfg(test)]
mod tests {
    use super::*;
    use cardet_record::{Format, Labels};

    fn record(labels: Option<&str>, split: Option<&str>) -> Record {
        Record::new(
            b"\x89PNG not really".to_vec(),
            labels.map(|text| Labels::parse(text).expect("labels")),
            split.map(str::to_string),
            "images/val/car.png".into(),
            (64, 48),
        )
        .expect("record")
    }

    fn check(value: &[u8], expected: Result<Option<Vec<YoloLabel>>, &str>) {
        match (image_of_record(value), expected) {
            (Ok((record, labels)), Ok(expected)) => {
                assert_eq!(record.file_name(), "car.png");
                assert_eq!(labels, expected);
            }
            (Err(reason), Err(expected)) => {
                assert!(reason.contains(expected), "{reason:?} lacks {expected:?}")
            }
            (actual, expected) => panic!("got {actual:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn records_give_images_and_ground_truth_as_a_dataset_reads_it() {
        let text = "2 0.5 0.25 0.1 0.2\n\n0 0.125 0.75 0.5 0.5\n";
        let from_the_dataset_reader: Vec<YoloLabel> = text
            .lines()
            .filter_map(|line| parse_label_line(line).expect("valid line"))
            .collect();
        for format in [Format::Json, Format::Binary] {
            let value = cardet_record::encode(&record(Some(text), Some("val")), format);
            check(&value, Ok(Some(from_the_dataset_reader.clone())));
            // No label file in a split: an image with no objects.
            let value = cardet_record::encode(&record(None, Some("val")), format);
            check(&value, Ok(Some(Vec::new())));
            // A plain folder's image: nothing to score against.
            let value = cardet_record::encode(&record(None, None), format);
            check(&value, Ok(None));
        }
        check(b"\x00\x01garbage", Err("not a cardet record"));
        let mut damaged = cardet_record::encode(&record(None, None), Format::Binary);
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        check(&damaged, Err("is not the sha-256 of the image"));
    }

    #[test]
    fn expected_records_follow_the_end_offsets_and_the_limit() {
        assert_eq!(expected_records(7, None, false), Some(7));
        assert_eq!(expected_records(7, Some(3), false), Some(3));
        assert_eq!(expected_records(7, Some(30), false), Some(7));
        assert_eq!(expected_records(7, None, true), None);
        assert_eq!(expected_records(7, Some(30), true), Some(30));
    }
}
