//! `sink`: consumes the image topic into PostgreSQL and exports YOLO datasets.
//!
//! Parses flags into a [`sink::Command`] and runs it; everything else lives in the
//! library half of this package.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sink::{Command, ExportConfig, ExportOptions, SinkConfig, SplitRule};

/// consumes the image topic into PostgreSQL and exports YOLO datasets.
#[derive(Debug, Parser)]
#[command(version)]
struct Flags {
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Args)]
struct Database {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://cardet:cardet@127.0.0.1:5432/cardet"
    )]
    database_url: String,
    /// PostgreSQL schema holding the tables (created by the migrations).
    #[arg(long, default_value = "cardet")]
    schema: String,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Consume the topic into PostgreSQL until SIGINT/SIGTERM (or --until-idle).
    Run {
        #[command(flatten)]
        database: Database,
        /// Kafka bootstrap servers.
        #[arg(
            long,
            env = "KAFKA_BOOTSTRAP_SERVERS",
            default_value = "127.0.0.1:9092"
        )]
        bootstrap_servers: String,
        #[arg(long, default_value = "images")]
        topic: String,
        /// Consumer group: members of one group share the partitions.
        #[arg(long, default_value = "cardet-sink")]
        group: String,
        /// Messages per transaction at most.
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
        /// Milliseconds a batch waits to fill once it has a message.
        #[arg(long, default_value_t = 200)]
        batch_linger_ms: u64,
        /// Writer threads, each with its own PostgreSQL connection (partition p goes
        /// to writer p mod N, so each partition still commits in order).
        #[arg(long, default_value_t = 2)]
        writers: usize,
        /// Stop after this many seconds without a message.
        #[arg(long)]
        until_idle: Option<f64>,
        /// Consumer group session timeout in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        session_timeout_ms: u64,
        /// Seconds to wait for the broker's first answer.
        #[arg(long, default_value_t = 10)]
        connect_timeout: u64,
        /// Print the final summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write the store out as a YOLO dataset (incremental: reruns add what is new).
    Export {
        #[command(flatten)]
        database: Database,
        /// The dataset folder.
        #[arg(long)]
        out: PathBuf,
        /// How to split: by a stable hash of the image id, or as the source was split.
        #[arg(long, value_enum, default_value_t = SplitFlag::Hash)]
        split: SplitFlag,
        /// Share of images in `val` under the hash split.
        #[arg(long, default_value_t = 0.2)]
        val_fraction: f64,
        /// Class names for data.yaml, comma separated.
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
        /// Rows read per page.
        #[arg(long, default_value_t = 500)]
        page_size: i64,
        #[arg(long)]
        json: bool,
    },
    /// Create or upgrade the tables, then exit.
    Migrate {
        #[command(flatten)]
        database: Database,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SplitFlag {
    Hash,
    Source,
}

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    cardet_cli::init_logging();
    let command = command(Flags::parse());
    cardet_cli::exit_code("sink", sink::run(&command).map_err(anyhow::Error::from))
}

fn command(flags: Flags) -> Command {
    match flags.command {
        Action::Run {
            database,
            bootstrap_servers,
            topic,
            group,
            batch_size,
            batch_linger_ms,
            writers,
            until_idle,
            session_timeout_ms,
            connect_timeout,
            json,
        } => Command::Run(SinkConfig {
            schema: database.schema,
            group,
            batch_size: batch_size.max(1),
            batch_linger: Duration::from_millis(batch_linger_ms),
            writers: writers.max(1),
            until_idle: until_idle.map(|seconds| Duration::from_secs_f64(seconds.max(0.0))),
            session_timeout: Duration::from_millis(session_timeout_ms),
            connect_timeout: Duration::from_secs(connect_timeout),
            json,
            ..SinkConfig::new(&bootstrap_servers, &database.database_url, &topic)
        }),
        Action::Export {
            database,
            out,
            split,
            val_fraction,
            names,
            page_size,
            json,
        } => Command::Export(ExportConfig {
            database_url: database.database_url,
            schema: database.schema,
            options: ExportOptions {
                out,
                split_rule: match split {
                    SplitFlag::Hash => SplitRule::Hash,
                    SplitFlag::Source => SplitRule::Source,
                },
                val_fraction: val_fraction.clamp(0.0, 1.0),
                names,
                page_size: page_size.max(1),
            },
            json,
        }),
        Action::Migrate { database } => Command::Migrate {
            database_url: database.database_url,
            schema: database.schema,
        },
    }
}
