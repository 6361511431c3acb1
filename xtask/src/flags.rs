//! The command line of `cargo xtask`: one subcommand per stage.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "cardet's automation: setup, the local stack, tests, benchmarks",
    after_help = "Examples:\n  cargo xtask setup            # install every part into $CARDET_HOME (idempotent)\n  cargo xtask doctor           # what is installed, where, and whether it answers\n  cargo xtask stack up         # Kafka, PostgreSQL, S3 and MLflow on 127.0.0.1\n  cargo xtask test             # the CI gate: setup, fmt, clippy, stack, nextest\n  cargo xtask bench --list     # the benchmark areas and their baselines"
)]
pub struct Xtask {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Setup(Setup),
    Doctor(Doctor),
    Stack(Stack),
    Test(Test),
    Bench(Bench),
    Pipeline(Pipeline),
    Synth(Synth),
    ServeCheck(ServeCheck),
    ImportWeights(ImportWeights),
    Lint(Lint),
    Deploy(Deploy),
    Image(Image),
}

/// Install every part (Python venv with torch and onnxruntime, tansu, the S3
/// server, PostgreSQL and the Debian packages the build needs) into $CARDET_HOME.
///
/// Idempotent: a part already installed at its pinned version is left alone, so a
/// second run takes seconds. $CARDET_HOME defaults to ~/.cache/cardet, outside the
/// clone, so a fresh clone on the same machine reuses it.
#[derive(Debug, Parser)]
pub struct Setup {
    /// Only check what is missing; install nothing, exit 1 if anything is.
    #[arg(long)]
    pub check: bool,
    /// Also install ONNX Runtime's GPU build (PyPI onnxruntime-gpu with CUDA 13 and
    /// cuDNN 9 from NVIDIA's wheels, about 2 GB) into $CARDET_HOME/gpu, for
    /// `serve --gpu` and KIND_GPU models; prints the environment to use it.
    #[arg(long)]
    pub gpu: bool,
}

/// Print every part, its version, where it is and whether it answers.
///
/// Exits 1 when a part is missing, naming the command that installs it.
#[derive(Debug, Parser)]
pub struct Doctor {
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Run the local stack of real services on 127.0.0.1.
///
/// Ports and credentials come from the ecosystem's variables (or `.env`):
/// KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_URI. Missing S3 keys are generated into
/// the ignored `.env`. State lives in $CARDET_STACK_DIR (default $CARDET_HOME/stack).
#[derive(Debug, Parser)]
pub struct Stack {
    #[command(subcommand)]
    pub action: StackAction,
}

#[derive(Debug, Subcommand)]
pub enum StackAction {
    /// Start every service that is not running and wait until each answers.
    Up {
        /// Only these services (kafka, postgres, s3, mlflow); default all.
        services: Vec<String>,
    },
    /// Stop what `up` started, by recorded PID, and wait until it is gone.
    Down,
    /// Stop the named services, delete everything they stored, start them again
    /// empty. The embedded broker needs it: its topics cannot be deleted one by one
    /// (deleting one deletes all), so its file grows with every test and bench run.
    ///
    /// Example: `cargo xtask stack reset kafka`
    Reset {
        /// The services to empty (kafka, postgres, s3, mlflow); at least one.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// One line per service: PID, endpoint, and whether it answers.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The end of each service's log.
    Logs {
        /// Only this service.
        service: Option<String>,
        /// Lines per log.
        #[arg(short = 'n', long, default_value_t = 40)]
        lines: usize,
    },
    /// Print the stack's variables as `export NAME=value` lines, for `eval`.
    Env,
}

/// The CI gate: setup, `cargo fmt --check`, clippy with -D warnings, the stack
/// up, `cargo nextest run` over the workspace, the stack down even on failure.
#[derive(Debug, Parser)]
pub struct Test {
    /// Skip setup, fmt and clippy (a quicker loop while developing).
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments for `cargo nextest run` (a filter, `-p crate`, ...).
    #[arg(last = true)]
    pub nextest_args: Vec<String>,
}

/// `cargo fmt --check` and clippy with -D warnings over the workspace, in the shared
/// target folder (what `cargo xtask test` runs first).
#[derive(Debug, Parser)]
pub struct Lint {}

/// Render an overlay of deployments/ with `kubectl kustomize`, validate every object
/// offline (Kubernetes schemas, CRD schemas), and apply it to the current kubectl
/// context. With no cluster it validates and stops; secrets are filled from the
/// environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, DATABASE_URL) only in what
/// is sent to the cluster.
#[derive(Debug, Parser)]
#[command(
    after_help = "Examples:\n  cargo xtask deploy                          # the local overlay: render, validate, apply if a cluster answers\n  cargo xtask deploy --overlay production --dry-run\n  cargo xtask deploy --out manifests.yaml     # keep the rendered file"
)]
pub struct Deploy {
    /// The overlay in deployments/overlays.
    #[arg(long, default_value = "local")]
    pub overlay: String,
    /// Ask the cluster to check without changing anything (`--dry-run=server`).
    #[arg(long)]
    pub dry_run: bool,
    /// The Kubernetes version whose schemas validate the objects.
    #[arg(long, default_value = "1.32.0")]
    pub kubernetes_version: String,
    /// Where to write the rendered manifests (default target/deploy/<overlay>.yaml).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// Build or push the container images (mwt, serve, tools) with Docker or Podman.
#[derive(Debug, Parser)]
#[command(
    after_help = "Examples:\n  cargo xtask image build --tag dev\n  cargo xtask image push --registry registry.example.com --tag 1.4.0 --only serve"
)]
pub struct Image {
    #[command(subcommand)]
    pub action: ImageAction,
}

#[derive(Debug, Subcommand)]
pub enum ImageAction {
    /// Build the images from deployments/images/*.Dockerfile.
    Build(ImageOptions),
    /// Push the built images to the registry.
    Push(ImageOptions),
}

#[derive(Debug, clap::Args)]
pub struct ImageOptions {
    /// The registry prefix (`registry.example.com:5000`); images are `<registry>/cardet/<name>:<tag>`.
    #[arg(long, env = "CARDET_REGISTRY")]
    pub registry: Option<String>,
    /// The tag.
    #[arg(long, default_value = "dev")]
    pub tag: String,
    /// Only these images (mwt, serve, tools); default all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// Measure against the named baselines, side by side in one run, and record the
/// ratio rows in BENCHMARKS.md.
#[derive(Debug, Parser)]
pub struct Bench {
    /// The area to run (see --list); default every area.
    pub area: Option<String>,
    /// Run the GPU variants (needs CUDA on this machine).
    #[arg(long)]
    pub gpu: bool,
    /// Interleaved repetitions of measure and baseline.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// List the areas and their baselines, run nothing.
    #[arg(long)]
    pub list: bool,
    /// Print the rows, leave BENCHMARKS.md as it is.
    #[arg(long)]
    pub no_write: bool,
}

/// Write a YOLO dataset of synthetic traffic scenes (cars, buses, trucks and
/// motorcycles with COCO class ids 2, 5, 7, 3), deterministic from the seed; every
/// fifth image goes to `val`.
#[derive(Debug, Parser)]
#[command(
    after_help = "Example:\n  cargo xtask synth --out target/synth --images 2000 --seed 1 --size 640x640"
)]
pub struct Synth {
    /// The dataset folder (gets data.yaml, images/{train,val}, labels/{train,val}).
    #[arg(long, default_value = "target/synth")]
    pub out: std::path::PathBuf,
    /// How many images.
    #[arg(long, default_value_t = 1000)]
    pub images: usize,
    /// The seed; the same seed gives the same scenes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image size, WIDTHxHEIGHT.
    #[arg(long, default_value = "640x640")]
    pub size: String,
    /// Instead of a dataset, write a 4x3 grid of samples with their boxes (a PNG),
    /// at --size per tile.
    #[arg(long)]
    pub grid: Option<std::path::PathBuf>,
}

/// The whole loop end to end on the local stack (or the services your env names):
/// synthetic dataset → produce → sink → sink export → mwt train → mwt export →
/// MLflow registry → upload to S3 → serve from S3 → triton_client → report.
#[derive(Debug, Parser)]
#[command(
    after_help = "Examples:\n  cargo xtask pipeline                       # the whole loop (~15 minutes of training on 2 cores)\n  cargo xtask pipeline --smoke               # a few minutes: small dataset, one short epoch\n  cargo xtask pipeline --run-dir runs/pipeline/mine --from export --to upload\n  cargo xtask pipeline --keep-up             # leave the stack and serve running"
)]
pub struct Pipeline {
    /// A few minutes end to end: a small dataset and one short epoch.
    #[arg(long)]
    pub smoke: bool,
    /// Start at this step (its inputs come from --run-dir).
    #[arg(long, value_enum)]
    pub from: Option<PipelineStep>,
    /// Stop after this step.
    #[arg(long, value_enum)]
    pub to: Option<PipelineStep>,
    /// The run folder (default runs/pipeline/<UTC time>); --from needs an earlier one.
    #[arg(long)]
    pub run_dir: Option<std::path::PathBuf>,
    /// Training budget in minutes (default 15, smoke 1).
    #[arg(long)]
    pub train_minutes: Option<f64>,
    /// Synthetic images in the dataset (default 500, smoke 40).
    #[arg(long)]
    pub images: Option<usize>,
    /// Leave the stack and `serve` running at the end.
    #[arg(long)]
    pub keep_up: bool,
    /// Use the binaries already in the target folder (as `cargo nextest` left them)
    /// instead of building them first.
    #[arg(long)]
    pub no_build: bool,
}

/// The steps of `cargo xtask pipeline`, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum PipelineStep {
    Stack,
    Dataset,
    Produce,
    Sink,
    Train,
    Export,
    Upload,
    Serve,
    Client,
    Report,
}

/// serve's long checks, on demand: the fuzz loops and the wrk load test.
#[derive(Debug, Parser)]
#[command(
    after_help = "Examples:\n  cargo xtask serve-check fuzz --secs 600\n  cargo xtask serve-check load --secs 60 --connections 32"
)]
pub struct ServeCheck {
    #[command(subcommand)]
    pub check: ServeCheckKind,
}

#[derive(Debug, Subcommand)]
pub enum ServeCheckKind {
    /// Fuzz the REST request parser, config.pbtxt and gRPC requests (stable loop).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 600)]
        secs: u64,
        /// Only this target: rest, pbtxt or grpc.
        #[arg(long)]
        target: Option<String>,
    },
    /// wrk against the release serve with YOLOv8n; writes p50/p99 to BENCHMARKS.md.
    Load {
        #[arg(long, default_value_t = 60)]
        secs: u64,
        #[arg(long, default_value_t = 32)]
        connections: u32,
    },
}

/// Convert an Ultralytics YOLOv8 detection checkpoint (.pt) you already have into
/// safetensors with its class names and scale in the metadata, with the venv's
/// Python (offline). `mwt export`, `mwt predict` and `mwt train` read the result.
#[derive(Debug, Parser)]
#[command(
    after_help = "Examples:\n  cargo xtask import-weights --pt yolov8n.pt                 # writes yolov8n.safetensors\n  cargo xtask import-weights --pt best.pt --out car.safetensors --scale s"
)]
pub struct ImportWeights {
    /// The Ultralytics checkpoint.
    #[arg(long)]
    pub pt: std::path::PathBuf,
    /// The safetensors file to write (default: beside the .pt, `.safetensors`).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// The scale (n, s, m, l, x) when the checkpoint does not record it.
    #[arg(long)]
    pub scale: Option<String>,
}
