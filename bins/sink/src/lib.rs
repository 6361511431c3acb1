//! `sink`: reads the image topic into PostgreSQL with an exactly-once effect, and
//! writes the store back out as a YOLO dataset.
//!
//! [`run`] takes a [`Command`]: [`SinkConfig`] consumes (see [`consume`] for how
//! offsets and rows commit together), [`ExportConfig`] exports (incremental and
//! resumable, see `cardet-store`), and `Migrate` only creates the schema. Records
//! that do not decode go to the dead-letter table with their reason and their
//! topic, partition and offset; they never stop the consumer.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! let mut config = sink::SinkConfig::new("127.0.0.1:9092", "postgres://cardet:cardet@127.0.0.1/cardet", "images");
//! config.until_idle = Some(std::time::Duration::from_secs(5));
//! let summary = sink::consume::consume(&config, &AtomicBool::new(false)).expect("consumes");
//! println!("{} records", summary.n_records);
//! ```

pub mod consume;
mod error;

use std::io::Write;
use std::time::Duration;

pub use cardet_store::{ExportOptions, ExportSummary, SplitRule};

pub use crate::consume::SinkSummary;
pub use crate::error::Error;

/// One invocation of `sink`.
#[derive(Debug, Clone)]
pub enum Command {
    Run(SinkConfig),
    Export(ExportConfig),
    Migrate {
        database_url: String,
        schema: String,
    },
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub bootstrap: String,
    pub database_url: String,
    /// The PostgreSQL schema that holds the tables.
    pub schema: String,
    pub topic: String,
    pub group: String,
    /// Messages per transaction at most.
    pub batch_size: usize,
    /// How long a batch waits to fill once it has a message.
    pub batch_linger: Duration,
    /// Writer threads, each with its own PostgreSQL connection; partition `p` goes
    /// to writer `p mod writers`.
    pub writers: usize,
    /// Stop after this long without a message (batch use); run until a signal when `None`.
    pub until_idle: Option<Duration>,
    pub session_timeout: Duration,
    pub connect_timeout: Duration,
    pub json: bool,
}

impl SinkConfig {
    /// The defaults of the command line.
    pub fn new(bootstrap: &str, database_url: &str, topic: &str) -> SinkConfig {
        SinkConfig {
            bootstrap: bootstrap.to_string(),
            database_url: database_url.to_string(),
            schema: "cardet".into(),
            topic: topic.to_string(),
            group: "cardet-sink".into(),
            batch_size: 1000,
            batch_linger: Duration::from_millis(200),
            writers: 2,
            until_idle: None,
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            json: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub database_url: String,
    pub schema: String,
    pub options: ExportOptions,
    pub json: bool,
}

/// Runs one command and prints its summary (JSON on stdout with `--json`).
pub fn run(command: &Command) -> Result<(), Error> {
    match command {
        Command::Run(config) => {
            let stop = cardet_cli::stop_flag_on_signal(
                "stopping: finishing and committing the batch in hand",
            );
            let summary = consume::consume(config, &stop)?;
            if config.json {
                print_json(&summary)?;
            }
            eprintln!(
                "sink: {} messages from {}: {} records written, {} already stored, {} dead letters, partitions {:?}; {:.0} records/s",
                summary.n_messages,
                summary.topic,
                summary.n_records,
                summary.n_already_stored,
                summary.n_dead_letters,
                summary.partitions,
                summary.records_per_s
            );
            Ok(())
        }
        Command::Export(config) => {
            let summary = block_on(async {
                let store =
                    cardet_store::Store::connect(&config.database_url, &config.schema).await?;
                Ok::<_, Error>(store.export(&config.options).await?)
            })?;
            if config.json {
                print_json(&summary)?;
            }
            eprintln!(
                "sink export: {} images and {} label files written to {} ({:?}), {} renamed for a name clash",
                summary.n_images,
                summary.n_labels,
                config.options.out.display(),
                summary.per_split,
                summary.renamed.len()
            );
            Ok(())
        }
        Command::Migrate {
            database_url,
            schema,
        } => block_on(async {
            let mut store = cardet_store::Store::connect(database_url, schema).await?;
            Ok(store.migrate().await?)
        }),
    }
}

fn block_on<T>(future: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?
        .block_on(future)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, value).map_err(std::io::Error::from)?;
    writeln!(stdout)?;
    Ok(())
}
