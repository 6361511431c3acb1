//! Parity with Ultralytics itself: fixtures come from `ultralytics_fixture.py`, run with
//! the venv's Python in a temp dir (randomised models, nothing downloaded).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use cardet_model::export::{ExportOptions, RepositoryOptions};
use cardet_model::{Detector, Error, Scale};
use cardet_onnx_export::triton::InstanceKind;
use tch::{Device, Tensor};

mod common;
use common::run_onnx;

const FIXTURE: &str = include_str!("ultralytics_fixture.py");
const IMPORT_WEIGHTS: &str = include_str!("../python/import_weights.py");
const TOLERANCE: f64 = 1e-4;

#[test]
fn var_store_keys_and_shapes_equal_the_ultralytics_state_dict_for_every_scale() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("keys.json");
    python(dir.path(), &["keys", path_str(&out)]);
    let text = std::fs::read_to_string(&out).expect("keys.json");
    let reference: BTreeMap<String, Vec<(String, Vec<i64>)>> =
        serde_json::from_str(&text).expect("keys json");
    for scale in Scale::ALL {
        let detector = Detector::new(scale, names(3), Device::Cpu);
        let ours: BTreeMap<String, Vec<i64>> = detector
            .vs
            .variables()
            .into_iter()
            .map(|(name, tensor)| (name, tensor.size()))
            .collect();
        let theirs: BTreeMap<String, Vec<i64>> =
            reference[&scale.to_string()].iter().cloned().collect();
        let only_ours: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
        let only_theirs: Vec<&String> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
        assert!(
            only_ours.is_empty() && only_theirs.is_empty(),
            "yolov8{scale}: only ours {only_ours:?}, only Ultralytics {only_theirs:?}"
        );
        for (name, shape) in &theirs {
            assert_eq!(&ours[name], shape, "yolov8{scale} {name}");
        }
    }
}

#[test]
fn yolov8n_matches_ultralytics_in_inference_and_train_mode() {
    check_forward(Scale::N, 80, 320, 320, 2);
}

#[test]
fn yolov8s_with_4_classes_at_320x480_matches_ultralytics() {
    check_forward(Scale::S, 4, 320, 480, 1);
}

#[test]
fn onnx_export_matches_ultralytics_export_at_batch_1_and_4() {
    let (height, width) = (320, 320);
    let dir = tempfile::tempdir().expect("temp dir");
    python(
        dir.path(),
        &[
            "export",
            &height.to_string(),
            &width.to_string(),
            path_str(dir.path()),
        ],
    );
    let detector =
        Detector::load(&dir.path().join("weights.safetensors"), Device::Cpu).expect("loads");
    let model = cardet_model::export_onnx(
        &detector.net,
        &detector.names,
        &ExportOptions {
            height,
            width,
            dynamic_size: false,
        },
    )
    .expect("exports");
    let repo = dir.path().join("model_repo");
    let written = cardet_model::write_model_repository(
        &repo,
        &model,
        &RepositoryOptions {
            name: "yolov8n_car".into(),
            version: 1,
            max_batch_size: 8,
            instance_kind: InstanceKind::Cpu,
            instance_count: 1,
        },
    )
    .expect("writes the repository");
    assert_eq!(written.onnx_path, repo.join("yolov8n_car/1/model.onnx"));
    let report_path = dir.path().join("report.json");
    python(
        dir.path(),
        &[
            "check_onnx",
            path_str(&written.onnx_path),
            path_str(&dir.path().join("ultralytics.onnx")),
            &height.to_string(),
            &width.to_string(),
            path_str(&report_path),
            path_str(&written.config_path),
        ],
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report"))
            .expect("json");
    let anchors = 40 * 40 + 20 * 20 + 10 * 10;
    for batch in [1, 4] {
        assert_eq!(
            report[format!("shape_{batch}")],
            serde_json::json!([[batch, 84, anchors], [batch, 84, anchors]])
        );
        let diff = report[format!("max_abs_diff_{batch}")]
            .as_f64()
            .expect("diff");
        assert!(
            diff <= TOLERANCE,
            "batch {batch}: max abs diff {diff} ({report})"
        );
    }
    assert!(report["opset"].as_i64().expect("opset") >= 17);
    assert_eq!(
        report["inputs"],
        serde_json::json!([["images", ["batch", 3, 320, 320]]])
    );
    assert_eq!(
        report["outputs"],
        serde_json::json!([["output0", ["batch", 84, anchors]]])
    );
    for key in ["names", "stride", "task", "imgsz", "channels"] {
        assert_eq!(
            report["metadata"][key], report["their_metadata"][key],
            "metadata {key}"
        );
    }
    // config.pbtxt, as tritonclient's ModelConfig protobuf reads it, names the ONNX
    // input and output with their dims less the batch axis.
    let config = &report["triton_config"];
    assert_eq!(config["platform"], "onnxruntime_onnx");
    assert_eq!(config["max_batch_size"], 8);
    assert_eq!(config["input"][0]["name"], "images");
    assert_eq!(config["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(
        config["input"][0]["dims"],
        serde_json::json!(["3", "320", "320"])
    );
    assert_eq!(config["output"][0]["name"], "output0");
    assert_eq!(
        config["output"][0]["dims"],
        serde_json::json!(["84", anchors.to_string()])
    );
    assert!(config["dynamic_batching"].is_object(), "{config}");
    assert_eq!(config["instance_group"][0]["kind"], "KIND_CPU");
    // Our ONNX in ONNX Runtime from Rust (what `serve` runs) against our tch network.
    let images = Tensor::rand([2, 3, height, width], tch::kind::FLOAT_CPU);
    let from_tch = tch::no_grad(|| detector.net.predict(&images));
    let from_ort = run_onnx(&written.onnx_path, &images);
    // Folded against unfolded BatchNorm: the same maths in another order, so a few ulps
    // of the largest box coordinate (hundreds of pixels) rather than an absolute 1e-4.
    let diff = (&from_ort - &from_tch).abs().max().double_value(&[]);
    let largest = from_tch.abs().max().double_value(&[]);
    assert!(
        diff <= 1e-5 * largest.max(1.0),
        "ort vs tch: {diff} (values up to {largest})"
    );
}

#[test]
fn imported_ultralytics_checkpoints_give_ultralytics_outputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    python(dir.path(), &["checkpoints", path_str(dir.path())]);
    let inputs = read(&dir.path().join("inputs.safetensors"));
    let expected = read(&dir.path().join("expected.safetensors"));
    for checkpoint in ["trainer", "fused"] {
        let weights = dir.path().join(format!("{checkpoint}.safetensors"));
        run_script(
            dir.path(),
            "import_weights.py",
            IMPORT_WEIGHTS,
            &[
                path_str(&dir.path().join(format!("{checkpoint}.pt"))),
                path_str(&weights),
            ],
        );
        let detector = Detector::load(&weights, Device::Cpu).expect("loads the import");
        assert_eq!(detector.names, ["car", "bus", "it's"]);
        assert_eq!(detector.net.config.scale, Scale::N);
        let predict = tch::no_grad(|| detector.net.predict(&inputs["images"]));
        assert_close(checkpoint, &predict, &expected[checkpoint]);
    }
}

#[test]
fn a_mismatched_state_dict_names_the_first_bad_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("coco.safetensors");
    Detector::new(Scale::N, names(80), Device::Cpu)
        .save(&path)
        .expect("saves");
    let error = Detector::load_as(&path, Scale::N, names(4), Device::Cpu).expect_err("4 classes");
    let message = error.to_string();
    assert!(
        matches!(&error, Error::ShapeMismatch { name, expected, found, .. }
            if name == "model.22.cv3.0.0.conv.weight" && expected == &[64, 64, 3, 3] && found == &[80, 64, 3, 3]),
        "{message}"
    );
    assert!(
        message.contains("model.22.cv3.0.0.conv.weight")
            && message.contains("[80, 64, 3, 3]")
            && message.contains("[64, 64, 3, 3]")
            && message.contains("yolov8n with 4 classes"),
        "{message}"
    );
    let error = Detector::load_as(&path, Scale::S, names(80), Device::Cpu).expect_err("scale s");
    assert!(
        error
            .to_string()
            .contains("tensor model.0.conv.weight has shape [16, 3, 3, 3] in the file, the model expects [32, 3, 3, 3]"),
        "{error}"
    );
    // A round trip of the same configuration loads, with its metadata.
    let detector = Detector::load(&path, Device::Cpu).expect("loads its own save");
    assert_eq!(
        (detector.net.config.scale, detector.names.len()),
        (Scale::N, 80)
    );
}

fn check_forward(scale: Scale, num_classes: i64, height: i64, width: i64, batch: i64) {
    let dir = tempfile::tempdir().expect("temp dir");
    python(
        dir.path(),
        &[
            "forward",
            &scale.to_string(),
            &num_classes.to_string(),
            &height.to_string(),
            &width.to_string(),
            &batch.to_string(),
            path_str(dir.path()),
        ],
    );
    let detector =
        Detector::load(&dir.path().join("weights.safetensors"), Device::Cpu).expect("loads");
    assert_eq!(detector.names.len() as i64, num_classes);
    let inputs = read(&dir.path().join("inputs.safetensors"));
    let expected = read(&dir.path().join("expected.safetensors"));
    let images = &inputs["images"];
    let predict = tch::no_grad(|| detector.net.predict(images));
    let anchors: i64 = [8, 16, 32].iter().map(|s| (height / s) * (width / s)).sum();
    assert_eq!(predict.size(), [batch, 4 + num_classes, anchors]);
    assert_close("predict", &predict, &expected["predict"]);
    let head = tch::no_grad(|| detector.net.forward_t(images, true));
    for (level, pred) in head.pred.iter().enumerate() {
        assert_close(
            &format!("train.{level}"),
            pred,
            &expected[&format!("train.{level}")],
        );
    }
}

fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.size(), theirs.size(), "{what}: shapes");
    let diff = (ours - theirs).abs().max().double_value(&[]);
    let scale = theirs.abs().max().double_value(&[]);
    assert!(
        diff <= TOLERANCE,
        "{what}: max abs diff {diff} (values up to {scale})"
    );
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .expect("reads safetensors")
        .into_iter()
        .collect()
}

fn names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("class{i}")).collect()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Runs the fixture script with the venv's Python; panics with its stderr on failure.
fn python(dir: &Path, args: &[&str]) {
    run_script(dir, "ultralytics_fixture.py", FIXTURE, args);
}

fn run_script(dir: &Path, name: &str, text: &str, args: &[&str]) {
    let script = dir.join(name);
    std::fs::write(&script, text).expect("writes the script");
    let output = Command::new(cardet_testkit::venv_python())
        .arg(&script)
        .args(args)
        .current_dir(dir)
        .env("YOLO_OFFLINE", "1")
        .env("YOLO_CONFIG_DIR", dir)
        .output()
        .expect("runs the venv's python");
    assert!(
        output.status.success(),
        "{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
