//! End to end through the stack: a YOLOv8n ONNX model folder is uploaded to the
//! stack's S3 server as a verified version, `serve` loads it from S3, and
//! `triton_client` runs a synthetic validation split through it over HTTP with
//! binary tensors, HTTP with JSON tensors, and gRPC. The three must give the same
//! detections, and the mAP the client prints must equal the evaluator's on
//! predictions made in-process by ONNX Runtime on the same model and split.
//!
//! The model is Ultralytics' YOLOv8n with random weights (the same cached export
//! `serve`'s tests use): degenerate as a detector but deterministic, which is what a
//! protocol-equality test needs. Its class scores sit near Ultralytics' bias prior
//! (about 1e-5), hence the tiny confidence threshold. It is the only test in this file because it points
//! the process's AWS variables at the stack before anything reads them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cardet_detect::PostprocessConfig;
use serde_json::Value;

const IMAGE_SIDE: u32 = 320;

/// Ultralytics' dynamic YOLOv8n export, made once per machine (as `serve`'s tests do).
fn yolov8n_onnx() -> PathBuf {
    let cache = cardet_testkit::cardet_home().join("fixtures/serve");
    let path = cache.join("yolov8n-dynamic.onnx");
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&cache).expect("fixture cache");
    let work = tempfile::tempdir_in(&cache).expect("export folder");
    let output = Command::new(cardet_testkit::venv_python())
        .current_dir(work.path())
        .env("YOLO_OFFLINE", "1")
        .args([
            "-c",
            "from ultralytics import YOLO\n\
             YOLO('yolov8n.yaml').export(format='onnx', dynamic=True, simplify=False, imgsz=640)",
        ])
        .output()
        .expect("running ultralytics");
    assert!(
        output.status.success(),
        "exporting yolov8n: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(work.path().join("yolov8n.onnx"), &path).expect("placing the export");
    path
}

/// `car/config.pbtxt` and `car/1/model.onnx` at 320x320.
fn model_folder(root: &Path) -> PathBuf {
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
    std::fs::copy(yolov8n_onnx(), folder.join("1/model.onnx")).expect("model");
    folder
}

/// Runs the client binary over one protocol; returns the JSON lines by image and
/// the metrics file.
fn run_client(
    url: &str,
    protocol: &[&str],
    data_yaml: &Path,
    work: &Path,
    label: &str,
) -> (Vec<(String, Value)>, Value, String) {
    let jsonl = work.join(format!("{label}.jsonl"));
    let metrics = work.join(format!("{label}.metrics.json"));
    let output = Command::new(env!("CARGO_BIN_EXE_triton_client"))
        .args(["--url", url, "--model", "car", "--conf", "0.000001"])
        .args(protocol)
        .args(["--concurrency", "2", "--batch", "2", "--no-progress"])
        .arg("--dataset")
        .arg(data_yaml)
        .arg("--jsonl")
        .arg(&jsonl)
        .arg("--metrics-out")
        .arg(&metrics)
        .output()
        .expect("running triton_client");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "triton_client {label}: {stderr}");
    let mut lines: Vec<(String, Value)> = std::fs::read_to_string(&jsonl)
        .expect("JSON lines")
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("a JSON line");
            (
                value["image"].as_str().expect("image name").to_string(),
                value["detections"].clone(),
            )
        })
        .collect();
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).expect("metrics")).expect("JSON");
    (lines, metrics, stderr)
}

/// The evaluator's mAP on predictions ONNX Runtime makes in this process, with the
/// same letterbox and post-processing.
fn reference_map(runtime: &cardet_onnx::Runtime, model: &Path, data_yaml: &Path) -> (f64, f64) {
    let mut session = ort::session::Session::builder(&runtime.environment)
        .expect("session builder")
        .commit_from_file(model)
        .expect("session");
    let data = cardet_detect::dataset::read_data_yaml(data_yaml).expect("data.yaml");
    let config = PostprocessConfig {
        confidence_threshold: 0.000_001,
        ..PostprocessConfig::default()
    };
    let mut ground_truth = cardet_detect::eval::GroundTruth::default();
    let mut predictions = Vec::new();
    for (index, image_path) in data.split_images("val").expect("split").iter().enumerate() {
        let item = cardet_detect::dataset::read_item(image_path, data.names.len()).expect("item");
        let image = cardet_detect::image_io::load_rgb(image_path).expect("image");
        let batch = cardet_detect::letterbox::letterbox_batch(&[image], (IMAGE_SIDE, IMAGE_SIDE))
            .expect("letterbox");
        let shape: Vec<i64> = batch.shape.iter().map(|&side| side as i64).collect();
        let input = ort::value::Tensor::from_array((shape, batch.data)).expect("tensor");
        let outputs = session
            .run(ort::inputs!["images" => input])
            .expect("inference");
        let (output_shape, output) = outputs["output0"]
            .try_extract_tensor::<f32>()
            .expect("output");
        let output_shape: Vec<usize> = output_shape.iter().map(|&side| side as usize).collect();
        let (_, layout) = cardet_detect::YoloV8Layout::from_shape(&output_shape).expect("layout");
        let detections =
            cardet_detect::postprocess(output, layout, &batch.infos, &config).expect("decode");
        let image_id = index as u64 + 1;
        ground_truth.images.push(cardet_client::eval_image(
            image_id,
            &image_path.display().to_string(),
            item.image_size,
            &item.labels,
        ));
        predictions.extend(
            detections[0]
                .iter()
                .map(|detection| cardet_client::predicted_box(image_id, detection)),
        );
    }
    let mut category_ids: Vec<usize> = ground_truth
        .images
        .iter()
        .flat_map(|image| image.objects.iter().map(|object| object.category_id))
        .collect();
    category_ids.sort_unstable();
    category_ids.dedup();
    ground_truth.categories = category_ids
        .into_iter()
        .map(|id| (id, cardet_detect::classes::class_name(&data.names, id)))
        .collect();
    let report = cardet_detect::eval::evaluate(&ground_truth, &predictions);
    (report.map50, report.map50_95)
}

#[test]
fn a_model_uploaded_to_s3_serves_the_same_detections_over_every_protocol() {
    let stack = cardet_testkit::Stack::from_env();
    assert!(
        !stack.s3_access_key.is_empty(),
        "no S3 credentials: run `cargo xtask stack up s3` (it writes them into .env)"
    );
    // SAFETY: the only test of this binary, before any thread that reads the
    // environment exists; `serve`'s repository reads these through the AWS SDK.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", &stack.s3_endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", &stack.s3_access_key);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", &stack.s3_secret_key);
        std::env::set_var("AWS_REGION", &stack.s3_region);
    }
    let work = tempfile::tempdir().expect("tempdir");
    let data_yaml = cardet_detect::synth::write_dataset(
        &cardet_detect::synth::SynthConfig {
            out: work.path().join("synth"),
            n_images: 12,
            seed: 7,
            size: (400, 300),
            val_every: 2,
        },
        &|_| {},
    )
    .expect("synthetic dataset");
    let folder = model_folder(work.path());
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
            cache_dir: Some(work.path().join("cache")),
            threads: cardet_serve::Threads {
                intra_op: 2,
                inter_op: 1,
            },
            ..cardet_serve::Config::default()
        };
        cardet_serve::start(onnx_runtime.clone(), config)
            .await
            .expect("serve starts")
    });
    assert!(
        work.path().join("cache/car/1/manifest.json").is_file(),
        "serve did not fetch the verified version from S3"
    );
    let http = format!("http://{}", server.http);
    let grpc = format!("http://{}", server.grpc);

    let (binary, binary_metrics, stderr) =
        run_client(&http, &[], &data_yaml, work.path(), "http-binary");
    let (json, json_metrics, _) =
        run_client(&http, &["--json"], &data_yaml, work.path(), "http-json");
    let (grpc_lines, grpc_metrics, _) = run_client(
        &grpc,
        &["--protocol", "grpc"],
        &data_yaml,
        work.path(),
        "grpc",
    );
    assert_eq!(binary.len(), 6, "one line per validation image");
    let n_detections: usize = binary
        .iter()
        .map(|(_, detections)| detections.as_array().map_or(0, Vec::len))
        .sum();
    assert!(
        n_detections > 0,
        "no detections at all: nothing was compared"
    );
    assert_eq!(binary, json, "HTTP binary and HTTP JSON disagree");
    assert_eq!(binary, grpc_lines, "HTTP binary and gRPC disagree");
    assert_eq!(binary_metrics, json_metrics);
    assert_eq!(binary_metrics, grpc_metrics);

    let (map50, map50_95) = reference_map(&onnx_runtime, &folder.join("1/model.onnx"), &data_yaml);
    let printed = format!("mAP@0.5 {map50:.6}  mAP@0.5:0.95 {map50_95:.6}");
    assert!(
        stderr.contains(&printed),
        "the client printed other metrics than the evaluator's ({printed}):\n{stderr}"
    );
    let written = (
        binary_metrics["map50"].as_f64().expect("map50"),
        binary_metrics["map50_95"].as_f64().expect("map50_95"),
    );
    assert!(
        (written.0 - map50).abs() < 1e-9 && (written.1 - map50_95).abs() < 1e-9,
        "written {written:?}, evaluator ({map50}, {map50_95})"
    );
    drop(runtime);
}
