//! `produce`: streams a YOLO dataset or an image folder into a Kafka topic.
//!
//! Parses flags into a [`produce::Command`] and runs it; everything else lives in
//! the library half of this package.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use produce::{Command, Format, SetupConfig, StreamConfig, TeardownConfig, Verify};

/// streams a YOLO dataset or an image folder into a Kafka topic.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  produce setup --topic images --partitions 3\n  produce stream data/cars --topic images --json     # a YOLO dataset, labels included\n  produce stream frames/ --loop --rate 30             # a camera-like stream until Ctrl-C\n  KAFKA_BOOTSTRAP_SERVERS=kafka:9092 produce stream data/cars --format binary"
)]
struct Flags {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    bootstrap_servers: String,
    /// Seconds to wait for the broker's first answer.
    #[arg(long, default_value_t = 10, global = true)]
    connect_timeout: u64,
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Create the topic.
    Setup {
        #[arg(long, default_value = "images")]
        topic: String,
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication: i32,
        /// Delete the topic first. On the embedded broker (tansu) a delete removes EVERY topic.
        #[arg(long)]
        recreate: bool,
    },
    /// Send every image of a folder (a YOLO dataset: images/<split>/, labels/<split>/).
    Stream {
        /// The dataset or image folder.
        source: PathBuf,
        #[arg(long, default_value = "images")]
        topic: String,
        /// Record format: the Kafka Connect JSON envelope or the compact binary one.
        #[arg(long, value_enum, default_value_t = FormatFlag::Json)]
        format: FormatFlag,
        /// Start over at the end of the folder, until SIGINT/SIGTERM or --max-records.
        #[arg(long = "loop")]
        repeat: bool,
        /// Stop after this many records.
        #[arg(long)]
        max_records: Option<u64>,
        /// At most this many records per second (default: as fast as the broker takes them).
        #[arg(long)]
        rate: Option<f64>,
        /// The largest message to send; bigger images are reported and not sent.
        #[arg(long, default_value_t = 1_000_000)]
        max_message_bytes: usize,
        /// Milliseconds librdkafka keeps trying a send before reporting it failed.
        #[arg(long, default_value_t = 30_000)]
        message_timeout_ms: u64,
        /// Sends per record, the first included, before it counts as undelivered.
        #[arg(long, default_value_t = 10)]
        max_attempts: u32,
        /// How each image is checked before it is sent.
        #[arg(long, value_enum, default_value_t = VerifyFlag::Structure)]
        verify: VerifyFlag,
        /// Print the final summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Delete topics. On the embedded broker (tansu) a delete removes EVERY topic.
    Teardown {
        #[arg(long = "topic", default_value = "images")]
        topics: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatFlag {
    Json,
    Binary,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum VerifyFlag {
    /// Header and end marker (fast).
    Structure,
    /// Decode every pixel.
    Decode,
}

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    cardet_cli::init_logging();
    let flags = Flags::parse();
    let command = command(flags);
    cardet_cli::exit_code(
        "produce",
        produce::run(&command).map_err(anyhow::Error::from),
    )
}

fn command(flags: Flags) -> Command {
    let bootstrap = flags.bootstrap_servers;
    let connect_timeout = Duration::from_secs(flags.connect_timeout);
    match flags.command {
        Action::Setup {
            topic,
            partitions,
            replication,
            recreate,
        } => Command::Setup(SetupConfig {
            bootstrap,
            topic,
            partitions,
            replication,
            recreate,
            connect_timeout,
        }),
        Action::Teardown { topics } => Command::Teardown(TeardownConfig {
            bootstrap,
            topics,
            connect_timeout,
        }),
        Action::Stream {
            source,
            topic,
            format,
            repeat,
            max_records,
            rate,
            max_message_bytes,
            message_timeout_ms,
            max_attempts,
            verify,
            json,
            quiet,
        } => Command::Stream(StreamConfig {
            format: match format {
                FormatFlag::Json => Format::Json,
                FormatFlag::Binary => Format::Binary,
            },
            repeat_forever: repeat,
            max_records,
            rate,
            max_message_bytes,
            message_timeout: Duration::from_millis(message_timeout_ms),
            max_attempts: max_attempts.max(1),
            verify: match verify {
                VerifyFlag::Structure => Verify::Structure,
                VerifyFlag::Decode => Verify::Decode,
            },
            connect_timeout,
            progress: !quiet && !json,
            json,
            ..StreamConfig::new(&bootstrap, &topic, source)
        }),
    }
}
