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
    let export = mwt(&[
        "export",
        "--weights",
        path_str(&weights),
        "--repo",
        path_str(&repo),
        "--name",
        "cars",
        "--imgsz",
        "128",
        "--max-batch-size",
        "4",
        "--json",
    ]);
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
        mwt(&[
            "predict",
            "--model",
            path_str(model),
            "--source",
            path_str(&images),
            "--out",
            path_str(&out),
            "--imgsz",
            "128",
            "--conf",
            "0.0",
            "--batch",
            "2",
        ]);
        assert!(out.join("scene0.jpg").is_file() && out.join("scene1.jpg").is_file());
        serde_json::from_slice(&std::fs::read(out.join("predictions.json")).expect("json"))
            .expect("predictions.json parses")
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
