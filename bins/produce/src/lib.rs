//! `produce`: streams a YOLO dataset (or any image folder) into a Kafka topic, one
//! record per image with its labels, split and source path, keyed by the SHA-256
//! of the image bytes.
//!
//! [`run`] takes a [`Command`]: [`SetupConfig`] creates the topic,
//! [`StreamConfig`] streams a folder (see [`stream`] for delivery and re-sending)
//! and [`TeardownConfig`] deletes topics. The record formats are `cardet-record`'s;
//! the producer is idempotent with `acks=all`, and a record whose delivery failed
//! is sent again once the broker answers.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! let config = produce::StreamConfig::new("127.0.0.1:9092", "images", "dataset".into());
//! let summary = produce::stream::stream(&config, &AtomicBool::new(false)).expect("streams");
//! println!("{} delivered", summary.n_delivered);
//! ```

mod error;
pub mod kafka;
pub mod source;
pub mod stream;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

pub use cardet_record::Format;

pub use crate::error::Error;
pub use crate::source::Verify;
pub use crate::stream::{Skipped, StreamSummary};

/// One invocation of `produce`.
#[derive(Debug, Clone)]
pub enum Command {
    Setup(SetupConfig),
    Stream(StreamConfig),
    Teardown(TeardownConfig),
}

#[derive(Debug, Clone)]
pub struct SetupConfig {
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    pub replication: i32,
    /// Delete the topic first (on the embedded broker this deletes every topic).
    pub recreate: bool,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TeardownConfig {
    pub bootstrap: String,
    pub topics: Vec<String>,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub bootstrap: String,
    pub topic: String,
    pub source: PathBuf,
    pub format: Format,
    /// Start over at the end of the folder until stopped (or `max_records`).
    pub repeat_forever: bool,
    pub max_records: Option<u64>,
    /// Records per second at most; as fast as the broker takes them when `None`.
    pub rate: Option<f64>,
    /// The producer's `message.max.bytes`; bigger records are reported, not sent.
    pub max_message_bytes: usize,
    /// How long librdkafka keeps trying one send before reporting it failed.
    pub message_timeout: Duration,
    /// Sends per record, the first included, before it counts as undelivered.
    pub max_attempts: u32,
    pub verify: Verify,
    pub connect_timeout: Duration,
    pub progress: bool,
    /// Print the summary as JSON on stdout.
    pub json: bool,
}

impl StreamConfig {
    /// The defaults of the command line.
    pub fn new(bootstrap: &str, topic: &str, source: PathBuf) -> StreamConfig {
        StreamConfig {
            bootstrap: bootstrap.to_string(),
            topic: topic.to_string(),
            source,
            format: Format::Json,
            repeat_forever: false,
            max_records: None,
            rate: None,
            max_message_bytes: 1_000_000,
            message_timeout: Duration::from_secs(30),
            max_attempts: 10,
            verify: Verify::Structure,
            connect_timeout: Duration::from_secs(10),
            progress: false,
            json: false,
        }
    }
}

/// Runs one command; for a stream, prints the summary and fails when any record
/// was not delivered.
pub fn run(command: &Command) -> Result<(), Error> {
    match command {
        Command::Setup(config) => kafka::setup(config),
        Command::Teardown(config) => kafka::teardown(config),
        Command::Stream(config) => {
            let stop =
                cardet_cli::stop_flag_on_signal("stopping: finishing the records already sent");
            let summary = stream::stream(config, &stop)?;
            if config.json {
                let mut stdout = std::io::stdout().lock();
                serde_json::to_writer(&mut stdout, &summary).map_err(std::io::Error::from)?;
                writeln!(stdout)?;
            }
            eprintln!(
                "produce: {} records to {}: {} delivered, {} failed deliveries, {} re-sent, {} undelivered, {} skipped, {} too large; {:.1} records/s, {:.2} MB/s",
                summary.n_records,
                summary.topic,
                summary.n_delivered,
                summary.n_failed_deliveries,
                summary.n_resent,
                summary.n_undelivered,
                summary.skipped.len(),
                summary.too_large.len(),
                summary.records_per_s,
                summary.mb_per_s
            );
            summary.check()
        }
    }
}
