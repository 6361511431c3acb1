//! Throughput of `serve` against a raw ONNX Runtime session, for `cargo xtask bench serve`.
//!
//! ```text
//! serve_bench raw     --batch 1 [--secs 10] [--threads 2]      # one session in-process
//! serve_bench raw     --best ...                              # best of batch 1, 2, 4, 8
//! serve_bench raw     ... [--arena-off] [--pattern-off]       # without ORT's CPU arena / memory patterns
//! serve_bench raw     ... --spinning-stop                     # its pool stops spinning after each run, as serve's
//! serve_bench raw     ... --sessions 2 --threads 1            # two sessions side by side
//! serve_bench serve   ... --instances 2 --threads 1           # two model instances
//! serve_bench serve   --clients 8 [--secs 10] [--threads 2] [--no-batching] [--max-batch 8]
//! serve_bench serve   ... --shared-memory                     # tensors through /dev/shm regions
//! serve_bench serve   ... --grpc                              # gRPC ModelInfer, raw contents, a connection per client
//! serve_bench serve   ... --client-threads 4                  # the clients on 4 threads (a GPU machine's spare cores)
//! serve_bench rss                                             # a bare session's resident memory
//! serve_bench backend [--secs 40] [raw flags]                 # a raw session against serve's backend, no transport
//! serve_bench pair    --clients 8 --best [--slices 6] [--secs 2] [serve flags]
//! serve_bench pair    --batch 1 --slices 100 --slice-ms 500   # shorter turns, more of them
//! serve_bench pair    ... --instances 2 --threads 1 --raw-threads 2  # serve's instances against one 2-thread session
//! serve_bench batching --clients 8 [--gpu] [--shared-memory] [--max-batch 8] [--slices 6] [--secs 2]
//!                                                             # dynamic batching on against off, alternated
//! serve_bench batching ... --conv-search 0                    # cuDNN's exhaustive search (1 heuristic, 2 default)
//! serve_bench batching ... --pad-pow2 | --pad-max             # merged batches padded to 2^n or max_batch_size rows
//! serve_bench batching ... --delay-us 2000 --instances 2      # max_queue_delay_microseconds, instances on each side
//! serve_bench transfer --gpu [--max-batch 8]                  # one CUDA run: pageable or page-locked input, or none
//! serve_bench pair    ... --malloc-defaults                   # glibc's allocator as it comes (serve's main tunes it)
//! serve_bench batching ... --no-pin                           # merged batches not page-locked (--pinned-memory-pool-byte-size 0)
//! serve_bench pair    ... --no-split                          # one instance never splits its threads (cardet_split_when_busy)
//! serve_bench shapes  --gpu [--max-batch 8]                   # each batch size's first run, and runs switching sizes, on CUDA
//! ```
//! `pair` runs both sides in one process, alternating in short slices (raw first in
//! even slices, `serve` first in odd ones, with an untimed pause before each turn),
//! so that both see the same moments of a machine whose speed drifts by ±20% within
//! a minute. Each side's rate is its images over its own time summed over the
//! slices; a `serve` slice ends when its last request in flight has been answered,
//! so its drain counts against it.
//! Both sides run the same YOLOv8n export (random weights, 640x640, made by Ultralytics
//! in the venv and cached) with the same ONNX Runtime threads. `serve` is started
//! in-process on a free port and driven over REST with binary tensor data, one
//! request of one image per client at a time. The last stdout line is
//! `{"value": images/s, "unit": "images/s", "higher_is_better": true}`; for `pair`
//! it also holds the raw side's best rate as `"baseline"`, and for `backend` the
//! value is the ratio (unit `x`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cardet_serve::protocol::grpc::pb::inference as v2;
use ort::session::Session;
use ort::value::Tensor;
use v2::grpc_inference_service_client::GrpcInferenceServiceClient;

struct Args {
    mode: String,
    batch: usize,
    best: bool,
    clients: usize,
    secs: u64,
    threads: usize,
    batching: bool,
    /// The raw session without ONNX Runtime's CPU arena.
    arena_off: bool,
    /// The raw session without memory patterns.
    pattern_off: bool,
    /// The raw session's pool stops spinning when a run returns, as `serve`'s does.
    spinning_stop: bool,
    /// Clients pass the input and output through system shared-memory regions.
    shared_memory: bool,
    /// Clients send gRPC `ModelInfer` with raw contents instead of binary REST.
    grpc: bool,
    /// Threads of the clients' async runtime (1: one thread, as on a 2-core machine).
    client_threads: usize,
    /// Model instances in `serve` (`instance_group { count }`).
    instances: usize,
    /// Raw sessions run side by side.
    sessions: usize,
    /// `max_batch_size` in the model's `config.pbtxt`.
    max_batch: usize,
    /// `pair`: how many times each side runs.
    slices: usize,
    /// `pair`: each side's turn in milliseconds, instead of `--secs`.
    slice_ms: Option<u64>,
    /// `pair`: the raw side's intra-op threads, when not `--threads` (`serve`'s).
    raw_threads: Option<usize>,
    /// `serve`'s instances on CUDA device 0 (`instance_group { kind: KIND_GPU }`).
    gpu: bool,
    /// `parameters { key: "cudnn_conv_algo_search" }`: 0 exhaustive, 1 heuristic, 2 default.
    conv_search: Option<u64>,
    /// `parameters { key: "cardet_pad_batch" }`: "pow2" or "max".
    pad: Option<&'static str>,
    /// `dynamic_batching { max_queue_delay_microseconds }`.
    delay_us: u64,
    /// `serve`'s merged batches stay pageable (`Config::pinned_memory_bytes` 0).
    no_pin: bool,
    /// `parameters { key: "cardet_split_when_busy" value: "false" }`: one instance
    /// runs every batch on all of its threads.
    no_split: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        mode: String::new(),
        batch: 1,
        best: false,
        clients: 1,
        secs: 10,
        threads: 2,
        batching: true,
        arena_off: false,
        pattern_off: false,
        spinning_stop: false,
        shared_memory: false,
        grpc: false,
        client_threads: 1,
        instances: 1,
        sessions: 1,
        max_batch: 8,
        slices: 6,
        slice_ms: None,
        raw_threads: None,
        gpu: false,
        conv_search: None,
        pad: None,
        delay_us: 0,
        no_pin: false,
        no_split: false,
    };
    let mut iter = std::env::args().skip(1);
    args.mode = iter.next().unwrap_or_default();
    while let Some(flag) = iter.next() {
        let mut value = || iter.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match flag.as_str() {
            "--batch" => args.batch = value() as usize,
            "--best" => args.best = true,
            "--clients" => args.clients = value() as usize,
            "--secs" => args.secs = value(),
            "--threads" => args.threads = value() as usize,
            "--no-batching" => args.batching = false,
            "--instances" => args.instances = value() as usize,
            "--sessions" => args.sessions = value() as usize,
            "--max-batch" => args.max_batch = value() as usize,
            "--slices" => args.slices = value() as usize,
            "--slice-ms" => args.slice_ms = Some(value()),
            "--raw-threads" => args.raw_threads = Some(value() as usize),
            "--arena-off" => args.arena_off = true,
            "--pattern-off" => args.pattern_off = true,
            "--spinning-stop" => args.spinning_stop = true,
            "--shared-memory" => args.shared_memory = true,
            "--grpc" => args.grpc = true,
            "--client-threads" => args.client_threads = (value() as usize).max(1),
            "--gpu" => args.gpu = true,
            "--conv-search" => args.conv_search = Some(value()),
            "--pad-pow2" => args.pad = Some("pow2"),
            "--pad-max" => args.pad = Some("max"),
            "--delay-us" => args.delay_us = value(),
            "--no-pin" => args.no_pin = true,
            "--no-split" => args.no_split = true,
            // Read in `main`, before any thread starts.
            "--malloc-defaults" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// The YOLOv8n export shared with the tests (`$CARDET_HOME/fixtures/serve`).
fn model() -> PathBuf {
    cardet_testkit::ultralytics_yolov8n_onnx()
}

fn image(batch: usize) -> Vec<f32> {
    (0..batch * 3 * 640 * 640)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect()
}

/// One image as the binary tensor data of a request: FP32, little-endian.
fn image_bytes() -> Vec<u8> {
    image(1).iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn report(images_per_second: f64) {
    println!(
        "{{\"value\": {images_per_second:.3}, \"unit\": \"images/s\", \"higher_is_better\": true}}"
    );
}

fn raw(args: &Args) -> f64 {
    let runtime = cardet_onnx::load().expect("onnxruntime");
    let mut sessions = raw_sessions(args, &runtime);
    let mut best: f64 = 0.0;
    for batch in raw_batches(args) {
        let (images, elapsed) = run_raw(&mut sessions, batch, Duration::from_secs(args.secs), true);
        let rate = images as f64 / elapsed.as_secs_f64();
        eprintln!("raw batch {batch}: {rate:.2} images/s");
        best = best.max(rate);
    }
    best
}

/// `--best`: 1, 2, 4 and 8; else `--batch`.
fn raw_batches(args: &Args) -> Vec<usize> {
    if args.best {
        vec![1, 2, 4, 8]
    } else {
        vec![args.batch]
    }
}

/// `--sessions` raw sessions with `--threads` intra-op threads each.
fn raw_sessions(args: &Args, runtime: &cardet_onnx::Runtime) -> Vec<Session> {
    let new_session = || {
        let mut builder = Session::builder(&runtime.environment)
            .expect("builder")
            .with_intra_threads(args.raw_threads.unwrap_or(args.threads))
            .expect("threads")
            .with_inter_threads(1)
            .expect("threads");
        if args.pattern_off {
            builder = builder.with_memory_pattern(false).expect("memory pattern");
        }
        if args.spinning_stop {
            builder = builder
                .with_config_entry("session.force_spinning_stop", "1")
                .expect("spinning stop");
        }
        if args.arena_off {
            builder = builder
                .with_execution_providers([ort::ep::CPU::default()
                    .with_arena_allocator(false)
                    .build()])
                .expect("cpu ep");
        }
        builder.commit_from_file(model()).expect("session")
    };
    // `--sessions N`: N sessions run side by side, as N instances of `serve` do.
    (0..args.sessions.max(1)).map(|_| new_session()).collect()
}

/// Runs every session on batches of `batch` for `duration` (after two warm-up runs
/// each with `warm_up`): the images done and the time taken.
fn run_raw(
    sessions: &mut [Session],
    batch: usize,
    duration: Duration,
    warm_up: bool,
) -> (usize, Duration) {
    let warmed = std::sync::Barrier::new(sessions.len() + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = sessions
            .iter_mut()
            .map(|session| {
                let warmed = &warmed;
                scope.spawn(move || {
                    let input =
                        Tensor::from_array(([batch, 3, 640, 640], image(batch))).expect("tensor");
                    // Warm up: the first runs allocate and tune.
                    for _ in 0..if warm_up { 2 } else { 0 } {
                        session.run(ort::inputs!["images" => &input]).expect("run");
                    }
                    warmed.wait();
                    let started = Instant::now();
                    let mut images = 0;
                    while started.elapsed() < duration {
                        session.run(ort::inputs!["images" => &input]).expect("run");
                        images += batch;
                    }
                    images
                })
            })
            .collect();
        warmed.wait();
        let started = Instant::now();
        let images: usize = workers
            .into_iter()
            .map(|worker| worker.join().expect("worker"))
            .sum();
        (images, started.elapsed())
    })
}

/// `serve`'s async runtime (half the cores, as `serve` sizes it) and the clients'
/// one (`client_threads` threads; one by default, so that on two cores the clients
/// take no more than the one core a real client process would).
fn runtimes(client_threads: usize) -> (tokio::runtime::Runtime, tokio::runtime::Runtime) {
    let async_threads =
        std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1));
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(async_threads)
        .enable_all()
        .build()
        .expect("tokio");
    let client_runtime = if client_threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(client_threads)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("tokio");
    (server_runtime, client_runtime)
}

fn serve(args: &Args) -> f64 {
    let (server_runtime, client_runtime) = runtimes(args.client_threads);
    let repository = tempfile::tempdir().expect("tempdir");
    let onnx = Arc::new(cardet_onnx::load().expect("onnxruntime"));
    let server =
        server_runtime.block_on(start_server(args, args.batching, repository.path(), onnx));
    let url = format!("http://{}/v2/models/yolov8n/infer", server.http);
    let rate = client_runtime.block_on(drive(args, url, server.grpc));
    server_runtime
        .block_on(server.shutdown())
        .expect("shutdown");
    rate
}

async fn start_server(
    args: &Args,
    batching: bool,
    repository: &std::path::Path,
    runtime: Arc<cardet_onnx::Runtime>,
) -> cardet_serve::Server {
    let folder = repository.join("yolov8n/1");
    std::fs::create_dir_all(&folder).expect("folder");
    std::fs::copy(model(), folder.join("model.onnx")).expect("model");
    let batching = if batching {
        format!(
            "dynamic_batching {{ max_queue_delay_microseconds: {} }}",
            args.delay_us
        )
    } else {
        String::new()
    };
    let kind = if args.gpu { "KIND_GPU" } else { "KIND_CPU" };
    let parameter = |key: &str, value: &str| {
        format!("parameters {{ key: \"{key}\" value: {{ string_value: \"{value}\" }} }}\n")
    };
    let mut parameters = String::new();
    if let Some(search) = args.conv_search {
        parameters += &parameter("cudnn_conv_algo_search", &search.to_string());
    }
    if let Some(pad) = args.pad {
        parameters += &parameter("cardet_pad_batch", pad);
    }
    if args.no_split {
        parameters += &parameter("cardet_split_when_busy", "false");
    }
    std::fs::write(
        repository.join("yolov8n/config.pbtxt"),
        format!(
            "max_batch_size: {}\ninput [{{ name: \"images\" data_type: TYPE_FP32 dims: [3, 640, 640] }}]\n\
             output [{{ name: \"output0\" data_type: TYPE_FP32 dims: [-1, -1] }}]\n{batching}\n\
             instance_group [{{ count: {} kind: {kind} }}]\n{parameters}",
            args.max_batch, args.instances
        ),
    )
    .expect("config");
    let config = cardet_serve::Config {
        model_repository: repository.display().to_string(),
        http_address: "127.0.0.1".into(),
        http_port: 0,
        grpc_address: "127.0.0.1".into(),
        grpc_port: 0,
        metrics_port: None,
        threads: cardet_serve::Threads {
            intra_op: args.threads,
            inter_op: 1,
        },
        allow_shared_memory: args.shared_memory,
        pinned_memory_bytes: if args.no_pin { 0 } else { 256 << 20 },
        ..cardet_serve::Config::default()
    };
    cardet_serve::start(runtime, config).await.expect("server")
}

type GrpcClient = GrpcInferenceServiceClient<tonic::transport::Channel>;

/// One client's request.
#[derive(Clone)]
enum Request {
    /// Over REST: the body and, for binary data, the JSON header's length.
    Rest {
        body: bytes::Bytes,
        header_length: Option<String>,
    },
    /// Over gRPC, on the client's own connection.
    Grpc {
        client: GrpcClient,
        request: Box<v2::ModelInferRequest>,
    },
}

/// A gRPC `ModelInfer` of one image in raw contents, on a connection of its own.
async fn grpc_request(address: SocketAddr) -> Request {
    // The client announces the same windows and frame size as `serve`: its
    // defaults (2 MiB stream window, 16 KiB frames) cost about 1.5 ms a request
    // on the answer's way back (BENCHMARKS.md).
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .initial_stream_window_size(cardet_serve::GRPC_STREAM_WINDOW)
        .initial_connection_window_size(cardet_serve::GRPC_CONNECTION_WINDOW)
        .max_frame_size(cardet_serve::GRPC_MAX_FRAME);
    let client = GrpcInferenceServiceClient::new(endpoint.connect().await.expect("gRPC connects"))
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let request = v2::ModelInferRequest {
        model_name: "yolov8n".into(),
        inputs: vec![v2::model_infer_request::InferInputTensor {
            name: "images".into(),
            datatype: "FP32".into(),
            shape: vec![1, 3, 640, 640],
            ..Default::default()
        }],
        raw_input_contents: vec![image_bytes().into()],
        ..Default::default()
    };
    Request::Grpc {
        client,
        request: Box::new(request),
    }
}

/// A binary-data request carrying the image.
fn binary_request() -> Request {
    let header = br#"{"inputs":[{"name":"images","shape":[1,3,640,640],"datatype":"FP32","parameters":{"binary_data_size":4915200}}],"outputs":[{"name":"output0","parameters":{"binary_data":true}}]}"#;
    let mut body = header.to_vec();
    body.extend_from_slice(&image_bytes());
    Request::Rest {
        body: bytes::Bytes::from(body),
        header_length: Some(header.len().to_string()),
    }
}

/// Room for YOLOv8n's `[1, 84, 8400]` FP32 output.
const OUTPUT_REGION_BYTES: usize = 4 << 20;

/// Creates client `index`'s input (holding the image) and output regions in
/// /dev/shm, registers them, and returns the JSON request that names them. The
/// objects are unlinked once registered: `serve` keeps its mappings.
async fn shared_memory_request(client: &reqwest::Client, url: &str, index: usize) -> Request {
    let base = url.split("/v2/").next().unwrap_or(url).to_string();
    let input = image_bytes();
    for (suffix, contents) in [("in", input), ("out", vec![0; OUTPUT_REGION_BYTES])] {
        let key = format!(
            "/cardet-serve-bench-{}-{index}-{suffix}",
            std::process::id()
        );
        let path = format!("/dev/shm{key}");
        std::fs::write(&path, &contents).expect("shared-memory object");
        let response = client
            .post(format!(
                "{base}/v2/systemsharedmemory/region/{index}-{suffix}/register"
            ))
            .body(
                serde_json::json!({"key": key, "offset": 0, "byte_size": contents.len()})
                    .to_string(),
            )
            .send()
            .await
            .expect("register");
        assert!(
            response.status().is_success(),
            "register: {}",
            response.status()
        );
        std::fs::remove_file(&path).expect("unlink");
    }
    let body = serde_json::json!({
        "inputs": [{"name": "images", "shape": [1, 3, 640, 640], "datatype": "FP32",
            "parameters": {"shared_memory_region": format!("{index}-in"), "shared_memory_byte_size": 4915200}}],
        "outputs": [{"name": "output0",
            "parameters": {"shared_memory_region": format!("{index}-out"), "shared_memory_byte_size": OUTPUT_REGION_BYTES}}],
    });
    Request::Rest {
        body: bytes::Bytes::from(body.to_string()),
        header_length: None,
    }
}

/// One request per client (`--clients`), each sent twice to warm up its connection
/// and the model. `grpc` is the server's gRPC address, used with `--grpc`.
async fn warmed_requests(
    args: &Args,
    client: &reqwest::Client,
    url: &str,
    grpc: SocketAddr,
) -> Vec<Request> {
    let mut requests = Vec::new();
    for index in 0..args.clients.max(1) {
        requests.push(if args.shared_memory {
            shared_memory_request(client, url, index).await
        } else if args.grpc {
            grpc_request(grpc).await
        } else {
            binary_request()
        });
    }
    for request in &requests {
        for _ in 0..2 {
            send(client.clone(), request.clone(), url.to_string()).await;
        }
    }
    requests
}

/// Sends `request` and reads the whole answer, which must be a success.
async fn send(client: reqwest::Client, request: Request, url: String) {
    let (body, header_length) = match request {
        Request::Rest {
            body,
            header_length,
        } => (body, header_length),
        Request::Grpc {
            mut client,
            request,
        } => {
            let answer = client.model_infer(*request).await.expect("ModelInfer");
            assert_eq!(answer.into_inner().raw_output_contents.len(), 1);
            return;
        }
    };
    let mut builder = client.post(&url).body(body);
    if let Some(length) = header_length {
        builder = builder.header("Inference-Header-Content-Length", length);
    }
    let response = builder.send().await.expect("request");
    let status = response.status();
    let body = response.bytes().await.expect("body");
    assert!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
}

async fn drive(args: &Args, url: String, grpc: SocketAddr) -> f64 {
    let client = reqwest::Client::new();
    let requests = warmed_requests(args, &client, &url, grpc).await;
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.secs);
    let mut tasks = Vec::new();
    for request in requests {
        let (client, url, done) = (client.clone(), url.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                send(client.clone(), request.clone(), url.clone()).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let elapsed = started.elapsed();
    let requests = done.load(Ordering::Relaxed);
    let rate = requests as f64 / elapsed.as_secs_f64();
    let transport = if args.shared_memory {
        "shared memory"
    } else if args.grpc {
        "gRPC"
    } else {
        "binary REST"
    };
    eprintln!(
        "serve, {} clients, {transport}: {rate:.2} images/s",
        args.clients
    );
    print_time_split(&client, &url, requests, elapsed).await;
    rate
}

/// `pair`: raw sessions and `serve` in one process, alternating slice by slice.
/// An untimed pause before each side's turn in `pair`. A raw session's pool keeps
/// spinning for about 48 ms after its last run (ONNX Runtime's default; measured
/// on the 2-core VM as process CPU time during a sleep right after a run), so
/// without the pause `serve`'s first request of each slice shared its cores with it.
const SETTLE: Duration = Duration::from_millis(100);

fn pair(args: &Args) -> (f64, f64) {
    let onnx = Arc::new(cardet_onnx::load().expect("onnxruntime"));
    let mut sessions = raw_sessions(args, &onnx);
    let batches = raw_batches(args);
    for &batch in &batches {
        run_raw(&mut sessions, batch, Duration::ZERO, true);
    }
    let (server_runtime, client_runtime) = runtimes(args.client_threads);
    let repository = tempfile::tempdir().expect("tempdir");
    let server = server_runtime.block_on(start_server(
        args,
        args.batching,
        repository.path(),
        onnx.clone(),
    ));
    let url = format!("http://{}/v2/models/yolov8n/infer", server.http);
    let clients = client_runtime.block_on(GatedClients::start(args, &url, server.grpc));
    let slice = args
        .slice_ms
        .map_or(Duration::from_secs(args.secs), Duration::from_millis);
    let mut raw_done = vec![(0, Duration::ZERO); batches.len()];
    let mut serve_done = (0, Duration::ZERO);
    let rate = |(images, elapsed): (usize, Duration)| images as f64 / elapsed.as_secs_f64();
    // Each slice's serve rate against its best raw rate, measured seconds apart.
    let mut slice_ratios = Vec::new();
    for index in 0..args.slices.max(1) {
        let (mut slice_best, mut slice_serve) = (0.0_f64, 0.0);
        let raw_first = index % 2 == 0;
        for raw_turn in [raw_first, !raw_first] {
            std::thread::sleep(SETTLE);
            if raw_turn {
                for (&batch, done) in batches.iter().zip(&mut raw_done) {
                    let (images, elapsed) = run_raw(&mut sessions, batch, slice, false);
                    *done = (done.0 + images, done.1 + elapsed);
                    slice_best = slice_best.max(rate((images, elapsed)));
                }
            } else {
                let (images, elapsed) = client_runtime.block_on(clients.slice(slice));
                serve_done = (serve_done.0 + images, serve_done.1 + elapsed);
                slice_serve = rate((images, elapsed));
            }
        }
        slice_ratios.push(slice_serve / slice_best);
    }
    drop(clients);
    slice_ratios.sort_by(f64::total_cmp);
    eprintln!(
        "per slice, serve against that slice's best raw batch: {}; median {:.3}x",
        slice_ratios
            .iter()
            .map(|ratio| format!("{ratio:.3}"))
            .collect::<Vec<_>>()
            .join(" "),
        slice_ratios[slice_ratios.len() / 2]
    );
    let mut best: f64 = 0.0;
    for (batch, done) in batches.iter().zip(&raw_done) {
        eprintln!("raw batch {batch}: {:.2} images/s", rate(*done));
        best = best.max(rate(*done));
    }
    let serve_rate = rate(serve_done);
    eprintln!(
        "serve, {} clients: {serve_rate:.2} images/s; {:.3}x the best raw batch, over {} alternated slices",
        args.clients,
        serve_rate / best,
        args.slices
    );
    // Whether the gap is inside `serve` (ONNX Runtime slower there) or around it.
    eprintln!(
        "raw batch {}: {:.2} ms per run",
        batches[0],
        raw_done[0].1.as_secs_f64() * 1e3 * batches[0] as f64 / raw_done[0].0.max(1) as f64
    );
    client_runtime.block_on(print_time_split(
        &reqwest::Client::new(),
        &url,
        serve_done.0 as u64,
        serve_done.1,
    ));
    server_runtime
        .block_on(server.shutdown())
        .expect("shutdown");
    (serve_rate, best)
}

/// `batching`: two `serve`s in one process, one with dynamic batching and one
/// without, driven by the same number of clients in alternated slices (after one
/// untimed slice each, which also lets CUDA pick its kernels for every batch size).
/// Returns both rates, batching first.
fn batching_on_against_off(args: &Args) -> (f64, f64) {
    let onnx = Arc::new(cardet_onnx::load().expect("onnxruntime"));
    let (server_runtime, client_runtime) = runtimes(args.client_threads);
    let slice = args
        .slice_ms
        .map_or(Duration::from_secs(args.secs), Duration::from_millis);
    let mut sides = Vec::new();
    for batching in [true, false] {
        let repository = tempfile::tempdir().expect("tempdir");
        let server = server_runtime.block_on(start_server(
            args,
            batching,
            repository.path(),
            onnx.clone(),
        ));
        let url = format!("http://{}/v2/models/yolov8n/infer", server.http);
        let clients = client_runtime.block_on(GatedClients::start(args, &url, server.grpc));
        client_runtime.block_on(clients.slice(slice));
        sides.push((repository, server, clients, url, (0, Duration::ZERO)));
    }
    for index in 0..args.slices.max(1) {
        let on_first = index % 2 == 0;
        for on_turn in [on_first, !on_first] {
            std::thread::sleep(SETTLE);
            let side = &mut sides[usize::from(!on_turn)];
            let (images, elapsed) = client_runtime.block_on(side.2.slice(slice));
            side.4 = (side.4.0 + images, side.4.1 + elapsed);
        }
    }
    let mut rates = Vec::new();
    for (repository, server, clients, url, (images, elapsed)) in sides {
        eprint!("batching {}: ", if rates.is_empty() { "on" } else { "off" });
        client_runtime.block_on(print_time_split(
            &reqwest::Client::new(),
            &url,
            images as u64,
            elapsed,
        ));
        drop(clients);
        server_runtime
            .block_on(server.shutdown())
            .expect("shutdown");
        drop(repository);
        rates.push(images as f64 / elapsed.as_secs_f64());
    }
    let device = if args.gpu { "CUDA device 0" } else { "CPU" };
    eprintln!(
        "{} clients on {device}: batching on {:.2} images/s, off {:.2}; {:.3}x over {} alternated slices",
        args.clients,
        rates[0],
        rates[1],
        rates[0] / rates[1],
        args.slices
    );
    (rates[0], rates[1])
}

/// `shapes`: `serve`'s backend on CUDA device 0, each cuDNN search mode in turn:
/// the time of each batch size's first run (when cuDNN picks its algorithms for
/// that shape) and of a later one.
fn shapes(args: &Args) {
    use cardet_serve::backend::{Backend, Batch, onnx::OnnxBackend};
    use cardet_serve::model_config::{ConvAlgoSearch, Device};
    let onnx = Arc::new(cardet_onnx::load().expect("onnxruntime"));
    let threads = cardet_serve::Threads {
        intra_op: args.threads,
        inter_op: 1,
    };
    let sizes: Vec<usize> = (1..=args.max_batch).collect();
    for search in [ConvAlgoSearch::Heuristic, ConvAlgoSearch::Exhaustive] {
        let backend =
            OnnxBackend::load(&onnx, &model(), threads, Device::Cuda(0), search).expect("backend");
        let inputs: Vec<_> = sizes
            .iter()
            .map(|&size| cardet_serve::tensor::Tensor {
                name: "images".into(),
                datatype: cardet_serve::tensor::DataType::Fp32,
                shape: vec![size as i64, 3, 640, 640],
                data: image_bytes().repeat(size).into(),
            })
            .collect();
        let run = |index: usize| {
            let began = Instant::now();
            backend
                .infer(Batch {
                    inputs: vec![inputs[index].clone()],
                })
                .expect("run");
            began.elapsed().as_secs_f64() * 1e3
        };
        // First runs of each size, then the same size again, then sizes in turn.
        let first: Vec<f64> = (0..sizes.len()).map(run).collect();
        let repeated: Vec<f64> = (0..sizes.len())
            .map(|index| {
                run(index);
                run(index)
            })
            .collect();
        let switching: Vec<f64> = (0..sizes.len()).map(run).collect();
        let list = |times: &[f64]| {
            times
                .iter()
                .map(|ms| format!("{ms:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        eprintln!(
            "{search:?}, batch 1..={} in ms: first {} | same size again {} | after another size {}",
            args.max_batch,
            list(&first),
            list(&repeated),
            list(&switching)
        );
    }
}

/// `transfer`: one CUDA session running batches of `--max-batch` images, in ms per
/// run (median of 20 after 3 untimed): the input as a pageable CPU tensor (as `serve`
/// passes a request's own buffer); the same buffer page-locked with `cudaHostRegister`
/// (as `serve` passes a merged batch); that input with the output in ONNX Runtime's
/// pinned memory (an `IoBinding` bound afresh each run, which `serve` does not do
/// yet); input and output left on the device (the GPU's own time). Also copying the
/// batch on the CPU, by one thread and by one thread per image.
fn transfer(args: &Args) {
    use cardet_serve::backend::HostPinning;
    use cardet_serve::backend::cuda_host::CudaHostMemory;
    use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
    let onnx = cardet_onnx::load().expect("onnxruntime");
    let mut session = Session::builder(&onnx.environment)
        .expect("builder")
        .with_execution_providers([ort::ep::CUDA::default()
            .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic)
            .build()
            .error_on_failure()])
        .expect("cuda")
        .commit_from_file(model())
        .expect("session");
    let rows = args.max_batch.max(1);
    let shape = [rows, 3, 640, 640];
    let data = image(rows);
    let median = |mut times: Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let time = |run: &mut dyn FnMut()| {
        for _ in 0..3 {
            run();
        }
        median(
            (0..20)
                .map(|_| {
                    let began = Instant::now();
                    run();
                    began.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        )
    };
    let mut input = Tensor::from_array((shape, data.clone())).expect("tensor");
    let pageable_ms = time(&mut || {
        session.run(ort::inputs!["images" => &input]).expect("run");
    });
    let pinning = CudaHostMemory::load(usize::MAX).expect("CUDA runtime");
    let byte_len = data.len() * 4;
    // SAFETY: the tensor owns `byte_len` bytes at this address until it is dropped,
    // after the `unpin` below.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(input.data_ptr_mut().cast::<u8>(), byte_len) };
    let pinned = pinning.pin(bytes);
    let registered_ms = time(&mut || {
        session.run(ort::inputs!["images" => &input]).expect("run");
    });
    let memory = |device, memory_type| {
        MemoryInfo::new(device, 0, AllocatorType::Device, memory_type).expect("memory info")
    };
    // The output in ONNX Runtime's own pinned memory too, bound afresh for every run
    // so that no run writes into the last one's output.
    let mut run_pinned_output = || -> ort::Result<()> {
        let mut binding = session.create_binding()?;
        binding.bind_input("images", &input)?;
        binding.bind_output_to_device(
            "output0",
            &memory(AllocationDevice::CUDA_PINNED, MemoryType::CPUOutput),
        )?;
        let outputs = session.run_binding(&binding)?;
        let (_, values) = outputs["output0"].try_extract_tensor::<f32>()?;
        std::hint::black_box(values.first());
        Ok(())
    };
    let pinned_output = match run_pinned_output() {
        Ok(()) => format!(
            "{:.2}",
            time(&mut || run_pinned_output().expect("pinned output"))
        ),
        Err(error) => format!("failed ({error})"),
    };
    if pinned {
        pinning.unpin(bytes);
    }
    let device_allocator = Allocator::new(
        &session,
        memory(AllocationDevice::CUDA, MemoryType::Default),
    )
    .expect("device allocator");
    let on_device = Tensor::<f32>::new(&device_allocator, shape).expect("device tensor");
    let mut binding = session.create_binding().expect("binding");
    binding
        .bind_input("images", &on_device)
        .expect("bind input");
    binding
        .bind_output_to_device(
            "output0",
            &memory(AllocationDevice::CUDA, MemoryType::Default),
        )
        .expect("bind output");
    let device_ms = time(&mut || {
        session.run_binding(&binding).expect("run");
        binding.synchronize_outputs().expect("sync");
    });
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut target = vec![0u8; bytes.len()];
    let one_thread_ms = time(&mut || target.copy_from_slice(&bytes));
    let per_image = bytes.len() / rows;
    let threaded_ms = time(&mut || {
        std::thread::scope(|scope| {
            for (to, from) in target.chunks_mut(per_image).zip(bytes.chunks(per_image)) {
                scope.spawn(move || to.copy_from_slice(from));
            }
        })
    });
    eprintln!(
        "batch {rows} on CUDA, ms per run: pageable input {pageable_ms:.2}; registered input \
         {registered_ms:.2} (pinned: {pinned}); registered input and output in pinned memory \
         {pinned_output}; on the device {device_ms:.2}. Copying the batch on the CPU: one \
         thread {one_thread_ms:.2}, a thread per image {threaded_ms:.2}"
    );
}

/// `--clients` clients that send only while a slice is on.
struct GatedClients {
    on: tokio::sync::watch::Sender<bool>,
    done: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
}

impl GatedClients {
    async fn start(args: &Args, url: &str, grpc: SocketAddr) -> GatedClients {
        let client = reqwest::Client::new();
        let requests = warmed_requests(args, &client, url, grpc).await;
        let (on, _) = tokio::sync::watch::channel(false);
        let done = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        for request in requests {
            let (client, url) = (client.clone(), url.to_string());
            let (done, in_flight, mut on) = (done.clone(), in_flight.clone(), on.subscribe());
            tokio::spawn(async move {
                // Ends when the sender is dropped. No await between the check and the
                // count: on this one-threaded runtime, a slice that has ended sees
                // every request it let start.
                while on.wait_for(|on| *on).await.is_ok() {
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    send(client.clone(), request.clone(), url.clone()).await;
                    done.fetch_add(1, Ordering::SeqCst);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
        GatedClients {
            on,
            done,
            in_flight,
        }
    }

    /// Lets the clients send for `duration`, then waits for their last answers:
    /// the requests answered and the time from the start to the last answer.
    async fn slice(&self, duration: Duration) -> (usize, Duration) {
        let before = self.done.load(Ordering::SeqCst);
        let started = Instant::now();
        self.on.send_replace(true);
        tokio::time::sleep(duration).await;
        self.on.send_replace(false);
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let answered = self.done.load(Ordering::SeqCst) - before;
        (answered as usize, started.elapsed())
    }
}

/// Where a request's time went, from the server's own statistics (the two warm-up
/// requests included): to see how much of the gap to a raw session is HTTP and copies.
async fn print_time_split(
    client: &reqwest::Client,
    infer_url: &str,
    requests: u64,
    elapsed: Duration,
) {
    let stats_url = infer_url.replace("/infer", "/stats");
    let Ok(response) = client.get(&stats_url).send().await else {
        return;
    };
    let Ok(stats) = response.json::<serde_json::Value>().await else {
        return;
    };
    let model = &stats["model_stats"][0];
    let per = |part: &str| -> f64 {
        let part = &model["inference_stats"][part];
        let count = part["count"].as_f64().unwrap_or(0.0).max(1.0);
        part["ns"].as_f64().unwrap_or(0.0) / count / 1e6
    };
    eprintln!(
        "ms: wall time per image {:.2}; per request in serve {:.2} (queue {:.2}, merge {:.2}, ONNX Runtime {:.2} per batch, split {:.2}); {} batches for {} requests",
        elapsed.as_secs_f64() * 1e3 / requests.max(1) as f64,
        per("success"),
        per("queue"),
        per("compute_input"),
        per("compute_infer"),
        per("compute_output"),
        model["execution_count"],
        model["inference_count"],
    );
}

/// Resident memory of this process holding one session after one inference, in KiB.
fn rss() -> f64 {
    let runtime = cardet_onnx::load().expect("onnxruntime");
    let mut session = Session::builder(&runtime.environment)
        .expect("builder")
        .with_intra_threads(2)
        .expect("threads")
        .commit_from_file(model())
        .expect("session");
    let input = Tensor::from_array(([1usize, 3, 640, 640], image(1))).expect("tensor");
    for _ in 0..3 {
        session.run(ort::inputs!["images" => &input]).expect("run");
    }
    let kib = cardet_testkit::own_status_kib("VmRSS:").unwrap_or(0) as f64;
    println!("{{\"value\": {kib}, \"unit\": \"KiB\", \"higher_is_better\": false}}");
    kib
}

/// `backend`: inference alone, without any transport. A raw session and `serve`'s
/// own backend (the session as `serve` configures it, fed a view of the request's
/// bytes as the REST edge hands them over) take turns of a few runs at batch 1, with
/// [`SETTLE`] between turns, so both see the same moments of the machine and neither
/// runs while the other's pool still spins. Returns the raw session's time per run
/// over the backend's (above 1: the backend is faster).
fn backend_against_raw(args: &Args) -> f64 {
    use cardet_serve::backend::{Backend, Batch, onnx::OnnxBackend};
    const RUNS_PER_TURN: u32 = 4;
    let onnx = Arc::new(cardet_onnx::load().expect("onnxruntime"));
    let mut sessions = raw_sessions(args, &onnx);
    let session = &mut sessions[0];
    let threads = cardet_serve::Threads {
        intra_op: args.threads,
        inter_op: 1,
    };
    let device = if args.gpu {
        cardet_serve::model_config::Device::Cuda(0)
    } else {
        cardet_serve::model_config::Device::Cpu
    };
    let backend =
        OnnxBackend::load(&onnx, &model(), threads, device, Default::default()).expect("backend");
    let raw_input = Tensor::from_array(([1usize, 3, 640, 640], image(1))).expect("tensor");
    let served_input = cardet_serve::tensor::Tensor {
        name: "images".into(),
        datatype: cardet_serve::tensor::DataType::Fp32,
        shape: vec![1, 3, 640, 640],
        data: image_bytes().into(),
    };
    let mut run = |raw: bool| {
        if raw {
            session
                .run(ort::inputs!["images" => &raw_input])
                .expect("run");
        } else {
            let inputs = vec![served_input.clone()];
            backend.infer(Batch { inputs }).expect("backend run");
        }
    };
    for raw in [true, false, true, false] {
        run(raw);
    }
    let (mut raw_time, mut backend_time, mut runs) = (Duration::ZERO, Duration::ZERO, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(args.secs) {
        for raw in [true, false, false, true] {
            std::thread::sleep(SETTLE);
            let began = Instant::now();
            for _ in 0..RUNS_PER_TURN {
                run(raw);
            }
            *if raw {
                &mut raw_time
            } else {
                &mut backend_time
            } += began.elapsed();
        }
        runs += 2 * RUNS_PER_TURN;
    }
    let per_run = |time: Duration| time.as_secs_f64() * 1e3 / f64::from(runs);
    let (raw_ms, backend_ms) = (per_run(raw_time), per_run(backend_time));
    eprintln!(
        "{runs} runs each: raw session {raw_ms:.2} ms, serve's backend {backend_ms:.2} ms per run; {:.4}x",
        raw_ms / backend_ms
    );
    raw_ms / backend_ms
}

fn main() {
    // As `serve`'s `main` does, unless the run is about glibc's defaults.
    if !std::env::args().any(|arg| arg == "--malloc-defaults") {
        cardet_serve::allocator::keep_freed_memory();
    }
    let args = parse_args();
    match args.mode.as_str() {
        "raw" => report(raw(&args)),
        "serve" => report(serve(&args)),
        "pair" => {
            // Both sides' rates: `cargo xtask bench serve` reads this as a paired case.
            let (serve_rate, raw_rate) = pair(&args);
            println!(
                "{{\"value\": {serve_rate:.3}, \"baseline\": {raw_rate:.3}, \"unit\": \"images/s\", \"higher_is_better\": true}}"
            );
        }
        "batching" => {
            let (on, off) = batching_on_against_off(&args);
            println!(
                "{{\"value\": {on:.3}, \"baseline\": {off:.3}, \"unit\": \"images/s\", \"higher_is_better\": true}}"
            );
        }
        "shapes" => shapes(&args),
        "transfer" => transfer(&args),
        "rss" => {
            rss();
        }
        "backend" => {
            let ratio = backend_against_raw(&args);
            println!("{{\"value\": {ratio:.4}, \"unit\": \"x\", \"higher_is_better\": true}}");
        }
        other => {
            eprintln!(
                "unknown mode {other:?}: raw, serve, pair, batching, shapes, transfer, backend or rss"
            );
            std::process::exit(2);
        }
    }
}
