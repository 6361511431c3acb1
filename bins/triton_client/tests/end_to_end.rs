//! End to end through the stack: a YOLOv8n ONNX model folder is uploaded to the
//! stack's S3 server as a verified version, `serve` loads it from S3, and
//! `triton_client` runs a synthetic validation split through it over HTTP with
//! binary tensors, HTTP with JSON tensors, gRPC, and HTTP and gRPC with the tensors
//! in system shared-memory regions. All five must give the same
//! detections, and the mAP the client prints must equal the evaluator's on
//! predictions made in-process by ONNX Runtime on the same model and split.
//!
//! The model is Ultralytics' YOLOv8n with random weights (the same cached export
//! `serve`'s tests use): degenerate as a detector but deterministic, which is what a
//! protocol-equality test needs. Its class scores sit near Ultralytics' bias prior
//! (about 1e-5), hence the tiny confidence threshold. It is the only test in this file because it points
//! the process's AWS variables at the stack before anything reads them.

mod common;

use std::path::Path;

use cardet_detect::PostprocessConfig;
use serde_json::Value;

use common::IMAGE_SIDE;

/// Runs the client over the validation split with one protocol; returns the
/// detections by image, the metrics file and stderr.
fn run_client(
    url: &str,
    protocol: &[&str],
    data_yaml: &Path,
    work: &Path,
    label: &str,
) -> (Vec<(String, Value)>, Value, String) {
    let mut args: Vec<String> = ["--url", url, "--model", "car", "--conf", "0.000001"]
        .iter()
        .chain(protocol)
        .chain(&["--concurrency", "2", "--batch", "2", "--dataset"])
        .map(|arg| arg.to_string())
        .collect();
    args.push(data_yaml.display().to_string());
    let run = common::run_client(&args, work, label);
    let metrics = run.metrics.clone().expect("a split has labels, so metrics");
    (run.detections_by_image(), metrics, run.stderr)
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
    let work = tempfile::tempdir().expect("tempdir");
    let data_yaml = common::synthetic_dataset(&work.path().join("synth"));
    // SAFETY: the only test of this binary, before any other thread exists.
    let served = unsafe { common::serve_from_s3(work.path()) };
    let (http, grpc) = (&served.http, &served.grpc);

    let (binary, binary_metrics, stderr) =
        run_client(http, &[], &data_yaml, work.path(), "http-binary");
    let (json, json_metrics, _) =
        run_client(http, &["--json"], &data_yaml, work.path(), "http-json");
    let (grpc_lines, grpc_metrics, _) = run_client(
        grpc,
        &["--protocol", "grpc"],
        &data_yaml,
        work.path(),
        "grpc",
    );
    let (shared_memory, shared_memory_metrics, _) = run_client(
        http,
        &["--shared-memory"],
        &data_yaml,
        work.path(),
        "shared-memory",
    );
    let (grpc_shared_memory, grpc_shared_memory_metrics, _) = run_client(
        grpc,
        &["--protocol", "grpc", "--shared-memory"],
        &data_yaml,
        work.path(),
        "grpc-shared-memory",
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
    // Three batches on two slots: the first answer of each slot comes back in the
    // body, the third through the output region the slot made after it.
    assert_eq!(
        binary, shared_memory,
        "HTTP binary and shared memory disagree"
    );
    assert_eq!(
        binary, grpc_shared_memory,
        "HTTP binary and gRPC with shared memory disagree"
    );
    assert_eq!(binary_metrics, shared_memory_metrics);
    assert_eq!(binary_metrics, json_metrics);
    assert_eq!(binary_metrics, grpc_metrics);
    assert_eq!(binary_metrics, grpc_shared_memory_metrics);

    let (map50, map50_95) = reference_map(
        &served.onnx_runtime,
        &served.folder.join("1/model.onnx"),
        &data_yaml,
    );
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
}
