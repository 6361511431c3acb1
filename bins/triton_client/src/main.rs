//! `triton_client`: runs images through any KServe v2 / Triton server and draws the
//! detections. Glue over [`cardet_client::run`].

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cardet_client::{InputSpec, KafkaInput, Protocol, RunConfig};
use clap::{Parser, ValueEnum};

/// Runs images through any KServe v2 / Triton server and draws the detections.
///
/// Input size and tensor names come from the model's metadata; letterbox,
/// YOLOv8 decoding and NMS are the same code `mwt` validates with. One JSON line per
/// image goes to stdout (or --jsonl); a summary with images/s and latency
/// percentiles, and mAP for a dataset split or labelled Kafka records, goes to stderr.
#[derive(Debug, Parser)]
// `--version` is the model version, as in Triton's clients, so clap's own is off.
#[command(
    disable_version_flag = true,
    after_help = "Examples:
  triton_client --model yolov8n_car street.jpg
  triton_client --url http://127.0.0.1:8000 --model yolov8n_car --out drawn/ 'frames/**/*.jpg'
  triton_client --protocol grpc --url http://127.0.0.1:8001 --model yolov8n_car frames/
  triton_client --model yolov8n_car --json street.jpg          # JSON tensors, not binary
  triton_client --model yolov8n_car --shared-memory frames/    # tensors through /dev/shm (serve --allow-shared-memory)
  triton_client --model yolov8n_car --dataset data/synth/data.yaml --split val --conf 0.001 --metrics-out map.json
  triton_client --model yolov8n_car --concurrency 8 --batch 4 --retries 5 frames/ > detections.jsonl
  triton_client --model yolov8n_car --kafka-topic images --names data.yaml   # the topic as it is now, mAP from its labels
  triton_client --model yolov8n_car --kafka-topic images --max-records 100 --bootstrap-servers kafka:9092
  triton_client --model yolov8n_car --kafka-topic camera --follow --out drawn/    # until Ctrl-C

A server that is down or a model that is not ready fails at once with one line;
--retries retries those (and 503/429, UNAVAILABLE) with exponential back-off.
A topic is read from its first offsets, without committing (another consumer
group, such as sink's, is not moved), up to where each partition ended when the
run began. A file, record or image that cannot be read or decoded is a warning
naming it (a record by topic, partition and offset), counted in the summary; the
run goes on and exits 0."
)]
struct Flags {
    /// Image files, folders (searched recursively) or glob patterns.
    #[arg(conflicts_with_all = ["dataset", "kafka_topic"])]
    inputs: Vec<String>,
    /// A YOLO dataset's data.yaml: run a split and report mAP against its labels.
    #[arg(long, conflicts_with = "kafka_topic")]
    dataset: Option<PathBuf>,
    /// The dataset split.
    #[arg(long, default_value = "val")]
    split: String,
    /// Read the images from this Kafka topic (records as `produce` writes them);
    /// records with labels give mAP.
    #[arg(long, value_name = "TOPIC")]
    kafka_topic: Option<String>,
    /// Kafka bootstrap servers, for --kafka-topic.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap_servers: String,
    /// Seconds to wait for the Kafka broker's first answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    connect_timeout: u64,
    /// Stop after this many records (those that do not decode included).
    // `requires` alone lets a conflicting input through, so the conflicts are named too.
    #[arg(long, value_name = "N", requires = "kafka_topic", conflicts_with_all = ["inputs", "dataset"])]
    max_records: Option<u64>,
    /// Keep reading records that arrive after the start, until Ctrl-C (or SIGTERM).
    #[arg(long, requires = "kafka_topic", conflicts_with_all = ["inputs", "dataset"])]
    follow: bool,
    /// The server: its HTTP port, or its gRPC port with --protocol grpc.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    #[arg(long)]
    model: String,
    /// The model version (default: the server's choice).
    #[arg(long)]
    version: Option<String>,
    #[arg(long, value_enum, default_value_t = ProtocolFlag::Http)]
    protocol: ProtocolFlag,
    /// Over HTTP, send and receive tensors as JSON numbers instead of Triton's binary data.
    #[arg(long)]
    json: bool,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Images per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Write annotated images here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the JSON lines here instead of stdout.
    #[arg(long)]
    jsonl: Option<PathBuf>,
    /// Write the mAP report (JSON) here; default OUT/metrics.json with --out.
    #[arg(long)]
    metrics_out: Option<PathBuf>,
    /// Keep boxes whose best class score is above this.
    #[arg(long, default_value_t = 0.25)]
    conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.45)]
    iou: f32,
    #[arg(long, default_value_t = 300)]
    max_det: usize,
    /// One NMS across classes instead of one per class.
    #[arg(long)]
    agnostic: bool,
    /// Input side when the model's metadata leaves it variable (the largest side
    /// sent, unless --no-rect).
    #[arg(long, default_value_t = 640)]
    imgsz: u32,
    /// A model that takes any input size (dims -1 in its config) gets each image
    /// at the smallest multiple of 32 that holds it scaled to --imgsz, as
    /// Ultralytics predicts (a 1280x720 frame runs at 640x384); this flag sends the
    /// full --imgsz square instead.
    #[arg(long)]
    no_rect: bool,
    /// Class names from a data.yaml (default: the dataset's, else COCO's 80).
    #[arg(long)]
    names: Option<PathBuf>,
    /// Retries of a request that failed for a transient reason.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Pass the images and the outputs through system shared-memory regions that
    /// the server maps (Triton's system_shared_memory extension; serve needs
    /// --allow-shared-memory, Triton --allow-client-shm), not through the socket.
    /// The server must share this host's /dev/shm. HTTP binary or gRPC, not --json.
    #[arg(long)]
    shared_memory: bool,
    /// Seconds before a request is abandoned.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    no_progress: bool,
    /// Also write the summary (images/s, latency, mAP and per-class AP) as JSON here.
    #[arg(long, value_name = "PATH")]
    summary_json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtocolFlag {
    Http,
    Grpc,
}

fn main() -> ExitCode {
    cardet_cli::init_logging();
    let flags = Flags::parse();
    cardet_cli::exit_code("triton_client", run(flags))
}

#[tokio::main]
async fn run(flags: Flags) -> anyhow::Result<()> {
    let protocol = match (flags.protocol, flags.json) {
        (ProtocolFlag::Grpc, true) => anyhow::bail!("--json is for HTTP; gRPC sends raw bytes"),
        (ProtocolFlag::Grpc, false) => Protocol::Grpc,
        (ProtocolFlag::Http, true) => Protocol::HttpJson,
        (ProtocolFlag::Http, false) => Protocol::HttpBinary,
    };
    let input = match (&flags.dataset, &flags.kafka_topic, flags.inputs.is_empty()) {
        (Some(data_yaml), _, _) => InputSpec::Dataset {
            data_yaml: data_yaml.clone(),
            split: flags.split.clone(),
        },
        (None, Some(topic), _) => InputSpec::Kafka(KafkaInput {
            max_records: flags.max_records,
            follow: flags.follow,
            connect_timeout: Duration::from_secs(flags.connect_timeout.max(1)),
            ..KafkaInput::new(&flags.bootstrap_servers, topic)
        }),
        (None, None, false) => InputSpec::Paths(flags.inputs.clone()),
        (None, None, true) => anyhow::bail!(
            "give images, folders or globs, --dataset data.yaml, or --kafka-topic TOPIC"
        ),
    };
    let names = match &flags.names {
        Some(path) => Some(
            cardet_detect::dataset::read_data_yaml(path)
                .with_context(|| format!("reading class names from {}", path.display()))?
                .names,
        ),
        None => None,
    };
    let mut config = RunConfig::new(&flags.url, protocol, &flags.model);
    config.version = flags.version.clone();
    config.input = input;
    config.concurrency = flags.concurrency;
    config.batch = flags.batch;
    config.out = flags.out.clone();
    config.postprocess = cardet_detect::PostprocessConfig {
        confidence_threshold: flags.conf,
        iou_threshold: flags.iou,
        max_detections: flags.max_det,
        class_agnostic: flags.agnostic,
        ..cardet_detect::PostprocessConfig::default()
    };
    config.default_image_size = (flags.imgsz, flags.imgsz);
    config.rect = !flags.no_rect;
    config.names = names;
    config.retries = flags.retries;
    config.shared_memory = flags.shared_memory;
    config.timeout = Duration::from_secs(flags.timeout_s.max(1));
    config.progress_bar = !flags.no_progress;
    config.metrics_out = flags
        .metrics_out
        .clone()
        .or_else(|| flags.out.as_ref().map(|out| out.join("metrics.json")));
    if flags.follow {
        // Only a followed topic has no end of its own; elsewhere Ctrl-C keeps
        // its usual meaning.
        config.stop = cardet_cli::stop_flag_on_signal(
            "stopping: finishing the images in flight, then the summary",
        );
    }

    let summary = match &flags.jsonl {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            cardet_client::run(&config, &mut writer).await?
        }
        None => {
            let mut stdout = std::io::BufWriter::new(std::io::stdout());
            cardet_client::run(&config, &mut stdout).await?
        }
    };
    let transport = if flags.shared_memory {
        format!("{protocol}, shared memory")
    } else {
        protocol.to_string()
    };
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(
        stderr,
        "{} images ({} detections, {} skipped) in {:.2} s: {:.1} images/s, latency p50 {:.1} ms, p99 {:.1} ms ({transport}, concurrency {}, batch {})",
        summary.n_images,
        summary.n_detections,
        summary.n_skipped,
        summary.elapsed_s,
        summary.images_per_s,
        summary.latency_p50_ms,
        summary.latency_p99_ms,
        flags.concurrency,
        flags.batch,
    );
    if let Some(eval) = &summary.eval {
        let _ = writeln!(
            stderr,
            "mAP@0.5 {:.6}  mAP@0.5:0.95 {:.6}  ({} images)",
            eval.map50, eval.map50_95, eval.report.n_images
        );
    }
    if let Some(path) = &flags.summary_json {
        let mut object = serde_json::json!({
            "n_images": summary.n_images,
            "n_skipped": summary.n_skipped,
            "n_detections": summary.n_detections,
            "elapsed_s": summary.elapsed_s,
            "images_per_s": summary.images_per_s,
            "latency_p50_ms": summary.latency_p50_ms,
            "latency_p99_ms": summary.latency_p99_ms,
            "protocol": protocol.to_string(),
            "shared_memory": flags.shared_memory,
            "concurrency": flags.concurrency,
            "batch": flags.batch,
        });
        if let Some(eval) = &summary.eval {
            let report = eval.report.to_json();
            object["map50"] = eval.map50.into();
            object["map50_95"] = eval.map50_95.into();
            object["per_class"] = report["per_class"].clone();
        }
        std::fs::write(path, object.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // Bad input is not silent: everything else was answered and written above, and
    // the exit code still says that something was left out.
    if summary.n_skipped > 0 {
        anyhow::bail!(
            "{} of {} inputs skipped (each named in a warning above); the others were answered",
            summary.n_skipped,
            summary.n_images + summary.n_skipped
        );
    }
    Ok(())
}
