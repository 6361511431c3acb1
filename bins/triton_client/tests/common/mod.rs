//! What the client's integration tests share: Ultralytics' YOLOv8n as a Triton
//! model folder, served by `serve` from the stack's S3 server, a small synthetic
//! validation split, and the `triton_client` binary run with its outputs read back.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;

/// The served model's input side.
pub const IMAGE_SIDE: u32 = 320;

/// `car/config.pbtxt` and `car/1/model.onnx` at `IMAGE_SIDE`.
pub fn model_folder(root: &Path) -> PathBuf {
    let folder = root.join("car");
    std::fs::create_dir_all(folder.join("1")).expect("folder");
    std::fs::write(
        folder.join("config.pbtxt"),
        format!(
            "name: \"car\"\nbackend: \"onnxruntime\"\nmax_batch_size: 8\n\
             input [ {{ name: \"images\" data_type: TYPE_FP32 dims: [ 3, {IMAGE_SIDE}, {IMAGE_SIDE} ] }} ]\n\
             output [ {{ name: \"output0\" data_type: TYPE_FP32 dims: [ -1, -1 ] }} ]\n\
             instance_group [ {{ count: 1 kind: KIND_CPU }} ]\n"
        ),
    )
    .expect("config");
    std::fs::copy(
        cardet_testkit::ultralytics_yolov8n_onnx(),
        folder.join("1/model.onnx"),
    )
    .expect("model");
    folder
}

/// A synthetic YOLO dataset of 12 scenes, every second one in `val`; returns its
/// `data.yaml`.
pub fn synthetic_dataset(root: &Path) -> PathBuf {
    cardet_detect::synth::write_dataset(
        &cardet_detect::synth::SynthConfig {
            out: root.to_path_buf(),
            n_images: 12,
            seed: 7,
            size: (400, 300),
            val_every: 2,
        },
        &|_| {},
    )
    .expect("synthetic dataset")
}

/// `serve` on `repo` at free local ports, with or without `--allow-shared-memory`.
pub fn serve_local(
    runtime: &tokio::runtime::Runtime,
    onnx: &Arc<cardet_onnx::Runtime>,
    repo: &Path,
    allow_shared_memory: bool,
) -> cardet_serve::Server {
    let config = cardet_serve::Config {
        model_repository: repo.display().to_string(),
        http_address: "127.0.0.1".into(),
        http_port: 0,
        grpc_address: "127.0.0.1".into(),
        grpc_port: 0,
        metrics_port: None,
        load_models: vec!["*".into()],
        threads: cardet_serve::Threads {
            intra_op: 1,
            inter_op: 1,
        },
        allow_shared_memory,
        ..cardet_serve::Config::default()
    };
    runtime
        .block_on(cardet_serve::start(onnx.clone(), config))
        .expect("serve starts")
}

/// `serve` running the model folder it fetched from the stack's S3 server.
pub struct ServedFromS3 {
    /// Dropped first (fields drop in order), which tells its tasks to stop.
    pub server: cardet_serve::Server,
    /// Runs `serve`'s tasks.
    pub runtime: tokio::runtime::Runtime,
    /// The process's one ONNX Runtime environment, for reference predictions.
    pub onnx_runtime: Arc<cardet_onnx::Runtime>,
    /// The model folder that was uploaded.
    pub folder: PathBuf,
    pub http: String,
    pub grpc: String,
}

/// Uploads `model_folder` to a new bucket of the stack's S3 server as a verified
/// version and starts `serve` on it, with `work` for the files.
///
/// # Safety
///
/// Points this process's AWS variables at the stack (`serve`'s repository reads
/// them through the AWS SDK): call it before any other thread exists, so from the
/// only test of a test binary.
pub unsafe fn serve_from_s3(work: &Path) -> ServedFromS3 {
    let stack = cardet_testkit::Stack::from_env();
    assert!(
        !stack.s3_access_key.is_empty(),
        "no S3 credentials: run `cargo xtask stack up s3` (it writes them into .env)"
    );
    // SAFETY: the caller guarantees no other thread exists yet.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", &stack.s3_endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", &stack.s3_access_key);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", &stack.s3_secret_key);
        std::env::set_var("AWS_REGION", &stack.s3_region);
    }
    let folder = model_folder(work);
    let bucket = cardet_testkit::unique_name("client-e2e").to_lowercase();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // One ONNX Runtime environment per process: serve's and the reference's.
    let onnx_runtime = Arc::new(cardet_onnx::load().expect("onnxruntime"));
    let server = runtime.block_on(async {
        let store = cardet_model_store::ModelStore::connect(
            &cardet_model_store::S3Settings::from_env(),
            &bucket,
            "repo",
        )
        .await;
        let report = store
            .upload(
                &folder,
                "car",
                &cardet_model_store::UploadOptions::default(),
                &|_| {},
            )
            .await
            .expect("upload");
        assert_eq!(report.version, 1);
        let config = cardet_serve::Config {
            model_repository: format!("s3://{bucket}/repo"),
            http_address: "127.0.0.1".into(),
            http_port: 0,
            grpc_address: "127.0.0.1".into(),
            grpc_port: 0,
            metrics_port: None,
            control_mode: cardet_serve::ControlMode::None,
            load_models: vec!["*".into()],
            cache_dir: Some(work.join("cache")),
            threads: cardet_serve::Threads {
                intra_op: 2,
                inter_op: 1,
            },
            allow_shared_memory: true,
            ..cardet_serve::Config::default()
        };
        cardet_serve::start(onnx_runtime.clone(), config)
            .await
            .expect("serve starts")
    });
    assert!(
        work.join("cache/car/1/manifest.json").is_file(),
        "serve did not fetch the verified version from S3"
    );
    ServedFromS3 {
        http: format!("http://{}", server.http),
        grpc: format!("http://{}", server.grpc),
        server,
        runtime,
        onnx_runtime,
        folder,
    }
}

/// What one successful `triton_client` run wrote.
pub struct ClientRun {
    /// The JSON lines, in the order written.
    pub lines: Vec<Value>,
    /// The mAP report, when there were labels.
    pub metrics: Option<Value>,
    /// `--summary-json`.
    pub summary: Value,
    pub stderr: String,
}

impl ClientRun {
    /// `(image, detections)` per line, sorted by image name.
    pub fn detections_by_image(&self) -> Vec<(String, Value)> {
        let mut by_image: Vec<(String, Value)> = self
            .lines
            .iter()
            .map(|line| {
                (
                    line["image"].as_str().expect("image name").to_string(),
                    line["detections"].clone(),
                )
            })
            .collect();
        by_image.sort_by(|a, b| a.0.cmp(&b.0));
        by_image
    }
}

/// Runs the client binary with `args` (server, model and input) plus its output
/// files under `work`, named by `label`. The run must exit 0, or 2 when it skipped
/// bad inputs (having answered and written all the others).
pub fn run_client(args: &[String], work: &Path, label: &str) -> ClientRun {
    let jsonl = work.join(format!("{label}.jsonl"));
    let metrics = work.join(format!("{label}.metrics.json"));
    let summary = work.join(format!("{label}.summary.json"));
    let output = Command::new(env!("CARGO_BIN_EXE_triton_client"))
        .args(args)
        .arg("--no-progress")
        .arg("--jsonl")
        .arg(&jsonl)
        .arg("--metrics-out")
        .arg(&metrics)
        .arg("--summary-json")
        .arg(&summary)
        .output()
        .expect("running triton_client");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let read_json = |path: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).expect("JSON file")).expect("JSON")
    };
    let summary_json = read_json(&summary);
    let skipped = summary_json["n_skipped"].as_u64().unwrap_or(0) > 0;
    assert_eq!(
        output.status.code(),
        Some(if skipped { 2 } else { 0 }),
        "triton_client {label}: {stderr}"
    );
    if skipped {
        assert!(stderr.contains("inputs skipped"), "{stderr}");
    }
    ClientRun {
        lines: std::fs::read_to_string(&jsonl)
            .expect("JSON lines")
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect(),
        metrics: metrics.is_file().then(|| read_json(&metrics)),
        summary: summary_json,
        stderr,
    }
}
