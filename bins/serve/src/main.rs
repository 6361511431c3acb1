//! `serve`: a KServe v2 / Triton-compatible inference server on ONNX Runtime.
//!
//! Glue only: Triton-compatible flags become a [`cardet_serve::Config`], ONNX Runtime
//! is loaded and version-checked before any port is bound, and
//! [`cardet_serve::run`] serves until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

/// A KServe v2 / Triton-compatible inference server on ONNX Runtime.
///
/// Serves a Triton model repository (a folder or s3://bucket/prefix; S3 endpoint and
/// keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION)
/// over REST and gRPC, with Triton's binary tensor data, model configuration,
/// statistics and repository extensions, dynamic batching from config.pbtxt, and
/// KServe ModelMesh's model-runtime service on the gRPC port. Triton's flags keep
/// their meaning, so scripts written for tritonserver run unchanged.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:
  serve --model-repository model_repo
  serve --model-repository s3://modelmesh-models/cardetect --model-control-mode poll --repository-poll-secs 5
  serve --model-repository model_repo --model-control-mode explicit --load-model yolov8n_car
  serve --model-repository model_repo --http-port 8008 --grpc-port 8085 --allow-metrics false
  serve --runtime-info   # which ONNX Runtime is loaded, and its version
  serve --model-repository model_repo --allow-shared-memory   # clients on this host may pass tensors through /dev/shm
  . ~/.cache/cardet/gpu/env.sh && serve --model-repository model_repo --gpu 0

Message sizes: one 640x640 FP32 image is 4.9 MB, so the REST body limit and gRPC's
message limits (tonic's default is 4 MB) are both raised to --max-message-bytes
(default 128 MiB, enough for a batch of 8 as binary data or JSON of one image).
gRPC's HTTP/2 windows are 8 MiB per stream and 16 MiB per connection, with frames
up to 1 MiB, so a client sends one image without waiting on window updates.
Compression as in Triton: a REST infer body may come with Content-Encoding gzip or
deflate (the limit counts its decoded size), the answer is compressed when
Accept-Encoding asks for it, and gRPC accepts gzip and deflate requests.
A full queue (--max-queue-size requests or --max-queue-bytes of inputs per model
version, or a model's dynamic_batching { default_queue_policy { max_queue_size } })
answers 503 / UNAVAILABLE naming the model; bad input answers 400 / INVALID_ARGUMENT
with {\"error\": ...}.

GPU: a model whose config.pbtxt says instance_group { kind: KIND_GPU gpus: [N] }, or
every model with --gpu N, runs on CUDA through ONNX Runtime's CUDA provider. That
needs the onnxruntime-gpu build: `cargo xtask setup --gpu` installs it and writes
~/.cache/cardet/gpu/env.sh with the ORT_DYLIB_PATH and LD_LIBRARY_PATH to use. With
the CPU build the model fails to load with an error that says so. KIND_AUTO runs on the CPU.
With dynamic_batching, a queue delay of about 1 ms lets concurrent clients fill the
batches (max_queue_delay_microseconds: 1000); each instance's merged batches are
page-locked for the upload, up to --pinned-memory-pool-byte-size in all.

Threads: ONNX Runtime's intra-op threads do the inference; the async threads only
move requests, so by default they are half the cores (1 on a 2-core machine) and do
not take CPU time from inference. Set both on a shared machine:
  serve --model-repository model_repo --intra-op-threads 2 --async-threads 1
A model with one CPU instance (the default) runs a lone request on all its intra-op
threads and, while other requests wait, two batches at once on half of them each;
it holds three sessions of the model for that. There --intra-op-threads 0 counts
one thread per physical core this process may use (hyperthreads once, as ONNX
Runtime's default does; its cgroup's quota included). In config.pbtxt,
parameters { key: \"cardet_split_when_busy\" value: { string_value: \"false\" } }
keeps one session.

Memory: freed memory is kept for the next batch (glibc's allocator is set to one
heap without per-block mmap) and handed back to the system once a model instance
has been idle for 30 s. GLIBC_TUNABLES or any MALLOC_* variable in the environment
leaves glibc's allocator as those set it."
)]
struct Flags {
    /// Load ONNX Runtime, print its version and path as JSON, and exit.
    #[arg(long)]
    runtime_info: bool,
    /// The model repository: a folder or s3://bucket/prefix.
    #[arg(long, alias = "model-store", value_name = "PATH|URI")]
    model_repository: Option<String>,
    /// Address the HTTP and metrics endpoints listen on.
    #[arg(long, default_value = "0.0.0.0")]
    http_address: String,
    #[arg(long, default_value_t = 8000)]
    http_port: u16,
    /// Address the gRPC endpoint listens on.
    #[arg(long, default_value = "0.0.0.0")]
    grpc_address: String,
    #[arg(long, default_value_t = 8001)]
    grpc_port: u16,
    /// Port of Prometheus /metrics.
    #[arg(long, default_value_t = 8002)]
    metrics_port: u16,
    /// Serve /metrics at all.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allow_metrics: bool,
    /// none: load everything at start; poll: also follow the repository; explicit:
    /// load what --load-model and the repository API ask for.
    #[arg(long, value_enum, default_value_t = Mode::None)]
    model_control_mode: Mode,
    /// Seconds between repository polls in poll mode.
    #[arg(long, default_value_t = 15)]
    repository_poll_secs: u64,
    /// A model to load at start in explicit mode (repeat; `*` loads all).
    #[arg(long = "load-model", value_name = "NAME")]
    load_models: Vec<String>,
    /// Run every model instance on this CUDA device, whatever the models' instance_group.
    #[arg(long, value_name = "DEVICE")]
    gpu: Option<i32>,
    /// Host memory page-locked for the merged batches of CUDA instances, in bytes (the
    /// GPU reads it by DMA: a batch of 8 YOLOv8n images ran in 5.6 ms instead of 9.8 on
    /// an H100); 0 turns pinning off. Beyond it batches stay pageable.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    pinned_memory_pool_byte_size: usize,
    /// ONNX Runtime intra-op threads per instance (0: its default, one per core).
    #[arg(long, default_value_t = 0)]
    intra_op_threads: usize,
    /// ONNX Runtime inter-op threads per instance (0: its default).
    #[arg(long, default_value_t = 0)]
    inter_op_threads: usize,
    /// Requests waiting or running per model version; more are refused with 503.
    #[arg(long, default_value_t = 64)]
    max_queue_size: usize,
    /// Input bytes of the requests waiting or running per model version; more are
    /// refused with 503 (default 1 GiB: 200 images of 640x640 FP32).
    #[arg(long, default_value_t = 1 << 30)]
    max_queue_bytes: usize,
    /// Threads of the async runtime that runs HTTP and gRPC (default: half the cores,
    /// at least 1, so they do not compete with ONNX Runtime's threads).
    #[arg(long)]
    async_threads: Option<usize>,
    /// Largest REST body and gRPC message, in bytes.
    #[arg(long, alias = "http-max-body-bytes", default_value_t = 128 << 20)]
    max_message_bytes: usize,
    /// Memory ModelMesh may fill with models, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    modelmesh_capacity_bytes: u64,
    /// Where an S3 repository is mirrored (default: a folder in the temp dir).
    #[arg(long)]
    cache_dir: Option<std::path::PathBuf>,
    /// Let clients on this host register system shared-memory regions (Triton's
    /// system_shared_memory extension, REST and gRPC): tensors then travel through
    /// /dev/shm instead of the socket. Off by default, as Triton's
    /// --allow-client-shm, because a client may map any /dev/shm object serve can open.
    #[arg(long, alias = "allow-client-shm", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    allow_shared_memory: bool,
    /// Log lines as JSON objects instead of text.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Triton's verbosity level: above 0 logs at debug.
    #[arg(long, default_value_t = 0)]
    log_verbose: u32,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    None,
    Poll,
    Explicit,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    // Before any thread exists: threads that already have an arena keep it.
    cardet_serve::allocator::keep_freed_memory();
    let flags = Flags::parse();
    init_logging(&flags);
    cardet_cli::exit_code("serve", run(&flags))
}

fn init_logging(flags: &Flags) {
    let default = if flags.log_verbose > 0 {
        "debug"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match flags.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn config(flags: &Flags) -> anyhow::Result<cardet_serve::Config> {
    let model_repository = flags
        .model_repository
        .clone()
        .context("--model-repository is required (a folder or s3://bucket/prefix)")?;
    Ok(cardet_serve::Config {
        model_repository,
        http_address: flags.http_address.clone(),
        http_port: flags.http_port,
        grpc_address: flags.grpc_address.clone(),
        grpc_port: flags.grpc_port,
        metrics_port: flags.allow_metrics.then_some(flags.metrics_port),
        control_mode: match flags.model_control_mode {
            Mode::None => cardet_serve::ControlMode::None,
            Mode::Poll => cardet_serve::ControlMode::Poll,
            Mode::Explicit => cardet_serve::ControlMode::Explicit,
        },
        poll_interval: Duration::from_secs(flags.repository_poll_secs.max(1)),
        load_models: flags.load_models.clone(),
        threads: cardet_serve::Threads {
            intra_op: flags.intra_op_threads,
            inter_op: flags.inter_op_threads,
        },
        max_queue_size: flags.max_queue_size.max(1),
        max_queue_bytes: flags.max_queue_bytes.max(1),
        max_message_bytes: flags.max_message_bytes,
        modelmesh_capacity_bytes: flags.modelmesh_capacity_bytes,
        cache_dir: flags.cache_dir.clone(),
        allow_shared_memory: flags.allow_shared_memory,
        gpu: flags.gpu,
        pinned_memory_bytes: flags.pinned_memory_pool_byte_size,
        ..cardet_serve::Config::default()
    })
}

fn run(flags: &Flags) -> anyhow::Result<()> {
    // First, before anything else: a wrong library must fail here with its path.
    let runtime = cardet_onnx::load().context("loading ONNX Runtime")?;
    if flags.runtime_info {
        let report = serde_json::json!({
            "onnxruntime_version": runtime.version,
            "library": runtime.library.display().to_string(),
        });
        println!("{report}");
        return Ok(());
    }
    let config = config(flags)?;
    let repository = config.model_repository.clone();
    let async_threads = flags.async_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(async_threads.max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(cardet_serve::run(Arc::new(runtime), config))
        .with_context(|| format!("serving {repository}"))
}
