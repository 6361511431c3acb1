//! `mwt export` and `mwt predict` end to end on a small random yolov8n: the model
//! repository layout, and the same detections from the checkpoint (tch) and from its
//! ONNX export (ONNX Runtime).

use std::path::Path;
use std::process::Command;

use cardet_model::{Detector, Scale};

#[test]
fn export_writes_a_repository_and_predict_agrees_between_tch_and_onnx() {
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = dir.path().join("cars.safetensors");
    let names: Vec<String> = ["car", "bus", "truck"].map(String::from).to_vec();
    tch::manual_seed(1);
    Detector::new(Scale::N, names, tch::Device::Cpu)
        .save(&weights)
        .expect("saves weights");
    let repo = dir.path().join("model_repo");
    let export = export_cars(
        &weights,
        &repo,
        &["--imgsz", "128", "--max-batch-size", "4", "--json"],
    );
    let summary: serde_json::Value = serde_json::from_str(export.trim()).expect("json summary");
    assert_eq!(summary["output"], serde_json::json!(["batch", 7, 336]));
    let onnx = repo.join("cars/1/model.onnx");
    let config = std::fs::read_to_string(repo.join("cars/config.pbtxt")).expect("config.pbtxt");
    assert!(onnx.is_file());
    for line in [
        "name: \"cars\"",
        "platform: \"onnxruntime_onnx\"",
        "max_batch_size: 4",
        "dims: [ 3, 128, 128 ]",
        "dims: [ 7, 336 ]",
    ] {
        assert!(config.contains(line), "{line} missing from\n{config}");
    }

    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).expect("images dir");
    for index in 0..2 {
        let scene = cardet_detect::synth::render_scene(3, index, (160 + 40 * index as u32, 120));
        cardet_detect::image_io::save(&scene.image, &images.join(format!("scene{index}.png")))
            .expect("writes a scene");
    }
    let run = |model: &Path, out: &str| -> serde_json::Value {
        let out = dir.path().join(out);
        let report = predict(model, &images, &out, &["--batch", "2"]);
        assert!(out.join("scene0.jpg").is_file() && out.join("scene1.jpg").is_file());
        report
    };
    let from_tch = run(&weights, "tch");
    let from_onnx = run(&onnx, "onnx");
    assert_eq!(from_tch["images"].as_array().map(Vec::len), Some(2));
    for (ours, theirs) in from_tch["images"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(from_onnx["images"].as_array().into_iter().flatten())
    {
        // A random network scores almost everything alike: compare the top detection.
        let (a, b) = (&ours["detections"][0], &theirs["detections"][0]);
        assert_eq!(a["class_name"], b["class_name"], "{a} vs {b}");
        assert!(
            ["car", "bus", "truck"].contains(&a["class_name"].as_str().unwrap_or("")),
            "{a}"
        );
        for coordinate in 0..4 {
            let (x, y) = (
                a["box"][coordinate].as_f64().unwrap_or(f64::NAN),
                b["box"][coordinate].as_f64().unwrap_or(f64::NAN),
            );
            assert!((x - y).abs() < 1e-2, "{a} vs {b}");
        }
    }
}

#[test]
fn predict_letterboxes_to_a_rectangle_for_a_model_of_any_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = dir.path().join("cars.safetensors");
    tch::manual_seed(2);
    Detector::new(Scale::N, vec!["car".into()], tch::Device::Cpu)
        .save(&weights)
        .expect("saves weights");
    let repo = dir.path().join("model_repo");
    export_cars(&weights, &repo, &["--dynamic-size"]);
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).expect("images dir");
    // Landscape frames, and one portrait that needs the whole square.
    for (index, size) in [(160, 120), (200, 120), (120, 160)].into_iter().enumerate() {
        let scene = cardet_detect::synth::render_scene(4, index as u64, size);
        cardet_detect::image_io::save(&scene.image, &images.join(format!("scene{index}.png")))
            .expect("writes a scene");
    }
    let input_sizes = |extra: &[&str]| -> Vec<serde_json::Value> {
        let out = dir.path().join(format!("out{}", extra.len()));
        let onnx = repo.join("cars/1/model.onnx");
        let report = predict(&onnx, &images, &out, &[&["--no-draw"], extra].concat());
        let images = report["images"].as_array().cloned().unwrap_or_default();
        for image in &images {
            // Boxes come back in the source image's pixels, whatever the input was.
            let top = &image["detections"][0]["box"];
            let limit = |i: usize| top[i].as_f64().unwrap_or(f64::NAN);
            assert!(
                limit(0) >= 0.0 && limit(2) <= 200.0 && limit(3) <= 160.0,
                "{image}"
            );
        }
        images
            .iter()
            .map(|image| image["input_size"].clone())
            .collect()
    };
    // 160x120 scales to 128x96; 200x120 to 128x77, padded to 96.
    assert_eq!(
        input_sizes(&[]),
        [[128, 96], [128, 96], [96, 128]].map(|size| serde_json::json!(size))
    );
    // One batch holds all three: the square that fits both orientations.
    assert_eq!(
        input_sizes(&["--batch", "3"]),
        [[128, 128]; 3].map(|size| serde_json::json!(size))
    );
    assert_eq!(
        input_sizes(&["--no-rect"]),
        [[128, 128]; 3].map(|size| serde_json::json!(size))
    );
}

#[test]
fn export_of_mismatched_weights_names_the_tensor() {
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = dir.path().join("w.safetensors");
    Detector::new(Scale::N, vec!["car".into()], tch::Device::Cpu)
        .save(&weights)
        .expect("saves weights");
    let output = Command::new(env!("CARGO_BIN_EXE_mwt"))
        .args(["export", "--weights", path_str(&weights), "--scale", "s"])
        .args(["--repo", path_str(&dir.path().join("repo"))])
        .output()
        .expect("runs mwt");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tensor model.0.conv.weight has shape [16, 3, 3, 3] in the file, the model expects [32, 3, 3, 3]"),
        "{stderr}"
    );
}

/// `mwt export` of `weights` as model `cars` in `repo`: its stdout.
fn export_cars(weights: &Path, repo: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "export",
        "--weights",
        path_str(weights),
        "--repo",
        path_str(repo),
        "--name",
        "cars",
    ];
    args.extend_from_slice(extra);
    mwt(&args)
}

/// `mwt predict` at 128 with no confidence floor: its `predictions.json`.
fn predict(model: &Path, images: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "predict",
        "--model",
        path_str(model),
        "--source",
        path_str(images),
        "--out",
        path_str(out),
        "--imgsz",
        "128",
        "--conf",
        "0.0",
    ];
    args.extend_from_slice(extra);
    mwt(&args);
    serde_json::from_slice(&std::fs::read(out.join("predictions.json")).expect("json"))
        .expect("predictions.json parses")
}

fn mwt(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_mwt"))
        .args(args)
        .output()
        .expect("runs mwt");
    assert!(
        output.status.success(),
        "mwt {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}
