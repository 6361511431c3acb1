//! `cardet-serve`: a KServe v2 / Triton-compatible inference server on ONNX Runtime.
//!
//! A model repository in Triton's layout (a folder or `s3://bucket/prefix`) is read
//! by [`repository`]; each model version gets a [`batcher::Batcher`] that merges
//! concurrent requests up to `max_batch_size` and feeds one OS thread per instance,
//! each owning an ONNX Runtime session ([`backend`]). The [`Infer`] handle holds the
//! loaded models; [`protocol`] serves it over REST (axum) and gRPC (tonic, with
//! ModelMesh's model-runtime service) at once, and Prometheus metrics on their own
//! port. Dependencies run one way: protocol → infer → batcher → backend.
//!
//! ```no_run
//! # async fn example() -> Result<(), cardet_serve::Error> {
//! let runtime = std::sync::Arc::new(cardet_onnx::load().expect("onnxruntime"));
//! let config = cardet_serve::Config {
//!     model_repository: "model_repo".into(),
//!     ..cardet_serve::Config::default()
//! };
//! let server = cardet_serve::start(runtime, config).await?;
//! println!("REST on {}, gRPC on {}", server.http, server.grpc);
//! server.shutdown().await
//! # }
//! ```

pub mod allocator;
pub mod backend;
pub mod batcher;
pub mod cores;
pub mod error;
pub mod infer;
pub mod metrics;
pub mod model_config;
pub mod protocol;
pub mod repository;
pub mod shared_memory;
pub mod tensor;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::backend::onnx::Threads;
pub use crate::error::{ApiError, Error, ErrorKind};
pub use crate::infer::{ControlMode, Infer};

/// The protocol extensions `serve` implements, as server metadata lists them.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
];

/// Everything the server is started with (the binary maps Triton's flags onto it).
#[derive(Clone, Debug)]
pub struct Config {
    /// A folder or `s3://bucket/prefix`; empty for none (ModelMesh loads by path).
    pub model_repository: String,
    pub http_address: String,
    /// 0 picks a free port.
    pub http_port: u16,
    pub grpc_address: String,
    pub grpc_port: u16,
    /// `None`: no metrics endpoint.
    pub metrics_port: Option<u16>,
    pub control_mode: ControlMode,
    pub poll_interval: Duration,
    /// Models to load at start in explicit mode (`*`: all).
    pub load_models: Vec<String>,
    pub threads: Threads,
    /// Requests waiting or running per model version before new ones get 503.
    pub max_queue_size: usize,
    /// Input bytes waiting or running per model version before new requests get 503.
    pub max_queue_bytes: usize,
    /// Largest REST body and gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// Memory ModelMesh may fill with models, in bytes.
    pub modelmesh_capacity_bytes: u64,
    /// Where an S3 repository is mirrored; default a folder under the temp dir.
    pub cache_dir: Option<PathBuf>,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Whether clients may register system shared-memory regions (REST and gRPC).
    pub allow_shared_memory: bool,
    /// Run every model instance on this CUDA device (`--gpu`), as if each model's
    /// `instance_group` said `kind: KIND_GPU gpus: [N]`.
    pub gpu: Option<i32>,
    /// Host memory that may be page-locked for CUDA instances' merged batches, in
    /// bytes (Triton's `--pinned-memory-pool-byte-size`; 0 turns pinning off).
    pub pinned_memory_bytes: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            model_repository: String::new(),
            http_address: "0.0.0.0".into(),
            http_port: 8000,
            grpc_address: "0.0.0.0".into(),
            grpc_port: 8001,
            metrics_port: Some(8002),
            control_mode: ControlMode::None,
            poll_interval: Duration::from_secs(15),
            load_models: Vec::new(),
            threads: Threads::default(),
            max_queue_size: 64,
            max_queue_bytes: 1 << 30,
            max_message_bytes: 128 << 20,
            modelmesh_capacity_bytes: 4 << 30,
            cache_dir: None,
            shutdown_grace: Duration::from_secs(30),
            allow_shared_memory: false,
            gpu: None,
            pinned_memory_bytes: 256 << 20,
        }
    }
}

/// A running server: its bound addresses and the handle to stop it.
pub struct Server {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub infer: Infer,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), Error>>>,
    grace: Duration,
}

/// Loads the models and starts serving; returns once every port is bound and the
/// initial models are loaded (or have failed, which is logged and leaves them out).
pub async fn start(runtime: Arc<cardet_onnx::Runtime>, config: Config) -> Result<Server, Error> {
    let http_listener = bind(&config.http_address, config.http_port).await?;
    let grpc_listener = bind(&config.grpc_address, config.grpc_port).await?;
    let metrics_listener = match config.metrics_port {
        Some(port) => Some(bind(&config.http_address, port).await?),
        None => None,
    };
    let repository = if config.model_repository.is_empty() {
        None
    } else {
        let cache = config.cache_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("cardet-serve-cache-{}", std::process::id()))
        });
        Some(repository::Repository::open(&config.model_repository, &cache).await?)
    };
    let infer = Infer::new(
        runtime,
        repository,
        infer::ModelOptions {
            control_mode: config.control_mode,
            threads: config.threads,
            max_queue_size: config.max_queue_size,
            max_queue_bytes: config.max_queue_bytes,
            gpu: config.gpu,
            pinned_memory_bytes: config.pinned_memory_bytes,
        },
    );
    load_initial_models(&infer, &config).await?;
    infer.set_ready(true);

    let (shutdown, watcher) = watch::channel(false);
    let signal = |mut watcher: watch::Receiver<bool>| async move {
        let _ = watcher.wait_for(|stop| *stop).await;
    };
    let address = |listener: &TcpListener| {
        listener.local_addr().map_err(|source| Error::Bind {
            address: "bound socket".into(),
            source,
        })
    };
    let http = address(&http_listener)?;
    let grpc = address(&grpc_listener)?;
    let metrics = metrics_listener.as_ref().map(address).transpose()?;
    let mut tasks = Vec::new();

    // One registry: a region registered over REST is usable over gRPC and back.
    let shared_memory = Arc::new(shared_memory::SharedMemory::new(config.allow_shared_memory));
    let router = protocol::http::router(
        infer.clone(),
        config.max_message_bytes,
        shared_memory.clone(),
    );
    let stop = signal(watcher.clone());
    tasks.push(tokio::spawn(async move {
        axum::serve(http_listener.tap_io(without_nagle), router)
            .with_graceful_shutdown(stop)
            .await
            .map_err(|error| Error::Serve(format!("http: {error}")))
    }));

    let grpc_service = protocol::grpc::GrpcService::new(infer.clone(), shared_memory)
        .server(config.max_message_bytes);
    let modelmesh =
        protocol::modelmesh::ModelMeshService::new(infer.clone(), config.modelmesh_capacity_bytes)
            .server();
    let stop = signal(watcher.clone());
    tasks.push(tokio::spawn(async move {
        tonic::transport::Server::builder()
            .initial_stream_window_size(GRPC_STREAM_WINDOW)
            .initial_connection_window_size(GRPC_CONNECTION_WINDOW)
            .max_frame_size(GRPC_MAX_FRAME)
            .add_service(grpc_service)
            .add_service(modelmesh)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                stop,
            )
            .await
            .map_err(|error| Error::Serve(format!("grpc: {error}")))
    }));

    if let Some(listener) = metrics_listener {
        let router = protocol::http::metrics_router(infer.clone());
        let stop = signal(watcher.clone());
        tasks.push(tokio::spawn(async move {
            axum::serve(listener.tap_io(without_nagle), router)
                .with_graceful_shutdown(stop)
                .await
                .map_err(|error| Error::Serve(format!("metrics: {error}")))
        }));
    }

    if config.control_mode == ControlMode::Poll {
        let poller = infer.clone();
        let interval = config.poll_interval.max(Duration::from_millis(100));
        let mut stop = watcher.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => poller.poll().await,
                    _ = stop.changed() => return Ok(()),
                }
            }
        }));
    }
    tracing::info!(%http, %grpc, metrics = ?metrics, repository = %config.model_repository, "serving");
    Ok(Server {
        http,
        grpc,
        metrics,
        infer,
        shutdown,
        tasks,
        grace: config.shutdown_grace,
    })
}

/// Starts the server and serves until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn run(runtime: Arc<cardet_onnx::Runtime>, config: Config) -> Result<(), Error> {
    let server = start(runtime, config).await?;
    wait_for_signal().await;
    tracing::info!("shutting down: finishing requests in flight");
    server.shutdown().await
}

impl Server {
    /// Stops accepting, lets requests in flight finish (up to the grace period), and returns.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.infer.set_ready(false);
        let deadline = tokio::time::Instant::now() + self.grace;
        let _ = self.shutdown.send(true);
        let all = futures_join(self.tasks);
        let served = match tokio::time::timeout_at(deadline, all).await {
            Ok(results) => results.into_iter().collect(),
            Err(_) => {
                tracing::warn!("requests still running after the grace period; stopping anyway");
                Ok(())
            }
        };
        // Wait for the instances to drop their sessions: a process that exits while
        // an instance thread is still freeing a CUDA session crashes in ONNX
        // Runtime's teardown ("double free or corruption" after `serve_bench
        // batching` on an H100).
        let instances = self.infer.unload_all();
        drop(self.infer);
        let joined = tokio::task::spawn_blocking(move || {
            for instance in instances {
                let _ = instance.join();
            }
        });
        if tokio::time::timeout_at(deadline, joined).await.is_err() {
            tracing::warn!("model instances still running after the grace period; stopping anyway");
        }
        served
    }
}

async fn futures_join(tasks: Vec<JoinHandle<Result<(), Error>>>) -> Vec<Result<(), Error>> {
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(match task.await {
            Ok(result) => result,
            Err(error) => Err(Error::Serve(error.to_string())),
        });
    }
    results
}

/// HTTP/2 flow control and framing for gRPC. A 640x640 FP32 image is 4.9 MB; under
/// hyper's defaults (1 MiB windows, 16 KiB frames) it arrives as 300 frames with
/// the client waiting on window updates, and a batch-1 `ModelInfer` spent about 2 ms
/// more around inference than with these (`serve_bench pair --batch 1 --grpc`,
/// BENCHMARKS.md). The windows are credit, not buffers: tonic consumes a message as
/// it arrives, up to `--max-message-bytes` whatever the window.
pub const GRPC_STREAM_WINDOW: u32 = 8 << 20;
/// The whole connection's window: two streams' worth.
pub const GRPC_CONNECTION_WINDOW: u32 = 16 << 20;
/// The largest frame a client may send.
pub const GRPC_MAX_FRAME: u32 = 1 << 20;

/// Turns Nagle's algorithm off on an accepted connection. Neither `axum::serve` nor
/// tonic's `serve_with_incoming` does it for a listener handed to them, and with it
/// on, the last partial segment of an answer waits for the client's ACK of the
/// segments before it.
fn without_nagle(connection: &mut tokio::net::TcpStream) {
    if let Err(error) = connection.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY on an accepted connection");
    }
}

async fn bind(address: &str, port: u16) -> Result<TcpListener, Error> {
    let joined = if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };
    TcpListener::bind(&joined)
        .await
        .map_err(|source| Error::Bind {
            address: joined,
            source,
        })
}

async fn load_initial_models(infer: &Infer, config: &Config) -> Result<(), Error> {
    let Some(repository) = infer.repository() else {
        return Ok(());
    };
    let available = repository.models().await?;
    let names: Vec<String> = match config.control_mode {
        ControlMode::None | ControlMode::Poll => available,
        ControlMode::Explicit if config.load_models.iter().any(|m| m == "*") => available,
        ControlMode::Explicit => config.load_models.clone(),
    };
    for name in names {
        let started = std::time::Instant::now();
        match infer.load(&name).await {
            Ok(()) => {
                tracing::info!(model = %name, ms = started.elapsed().as_millis() as u64, "loaded")
            }
            Err(error) => tracing::error!(model = %name, %error, "failed to load"),
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
