//! A model that takes any input size (Ultralytics' dynamic export, dims -1 in its
//! config) gets each batch at the smallest multiple of 32 that holds its images,
//! as Ultralytics predicts; `--no-rect`, or a config that fixes the size, gets the
//! full square. The sizes are read from the JSON lines, which say what was sent, and
//! the server's answers (5,040 anchors at 640x384, 8,400 at 640x640) decode either way.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;

mod common;

/// Model `name` in `root`: Ultralytics' YOLOv8n (random weights) with `dims`.
fn place_model(root: &Path, name: &str, dims: &str) {
    let folder = root.join(name);
    std::fs::create_dir_all(folder.join("1")).expect("folder");
    std::fs::write(
        folder.join("config.pbtxt"),
        format!(
            "name: \"{name}\"\nbackend: \"onnxruntime\"\nmax_batch_size: 2\n\
             input [ {{ name: \"images\" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n\
             output [ {{ name: \"output0\" data_type: TYPE_FP32 dims: [ -1, -1 ] }} ]\n"
        ),
    )
    .expect("config");
    std::fs::copy(
        cardet_testkit::ultralytics_yolov8n_onnx(),
        folder.join("1/model.onnx"),
    )
    .expect("model");
}

/// The input size of each image the client sent, by file name.
fn input_sizes(http: &str, model: &str, extra: &[&str], images: &Path) -> Vec<(String, Value)> {
    let output = Command::new(env!("CARGO_BIN_EXE_triton_client"))
        .args([
            "--url",
            http,
            "--model",
            model,
            "--no-progress",
            "--conf",
            "0.9",
        ])
        .args(extra)
        .arg(images)
        .output()
        .expect("running triton_client");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut sizes: Vec<(String, Value)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("image").is_some())
        .map(|line| {
            let name = line["image"].as_str().unwrap_or_default().to_string();
            let name = name.rsplit('/').next().unwrap_or_default().to_string();
            (name, line["input_size"].clone())
        })
        .collect();
    sizes.sort_by(|a, b| a.0.cmp(&b.0));
    sizes
}

#[test]
fn a_model_of_any_size_gets_each_batch_at_its_rect_size() {
    let work = tempfile::tempdir().expect("tempdir");
    let repo = work.path().join("repo");
    place_model(&repo, "any_size", "3, -1, -1");
    place_model(&repo, "square", "3, 640, 640");
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).expect("images folder");
    for (index, (name, size)) in [("a_wide.png", (1280, 720)), ("b_vga.png", (640, 480))]
        .into_iter()
        .enumerate()
    {
        let scene = cardet_detect::synth::render_scene(5, index as u64, size);
        cardet_detect::image_io::save(&scene.image, &images.join(name)).expect("image");
    }

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let onnx = cardet_onnx::load().expect("onnxruntime");
    let server = common::serve_local(&runtime, &Arc::new(onnx), &repo, false);
    let http = format!("http://{}", server.http);

    let size = |width: u32, height: u32| serde_json::json!([width, height]);
    let named = |wide: Value, vga: Value| {
        vec![
            ("a_wide.png".to_string(), wide),
            ("b_vga.png".to_string(), vga),
        ]
    };
    assert_eq!(
        input_sizes(&http, "any_size", &[], &images),
        named(size(640, 384), size(640, 480)),
        "one image a request: each at its own rect size"
    );
    assert_eq!(
        input_sizes(&http, "any_size", &["--batch", "2"], &images),
        named(size(640, 480), size(640, 480)),
        "one request of both: the size that holds both"
    );
    assert_eq!(
        input_sizes(&http, "any_size", &["--no-rect"], &images),
        named(size(640, 640), size(640, 640)),
    );
    assert_eq!(
        input_sizes(&http, "any_size", &["--imgsz", "320"], &images),
        named(size(320, 192), size(320, 256)),
    );
    assert_eq!(
        input_sizes(&http, "square", &[], &images),
        named(size(640, 640), size(640, 640)),
        "a config that fixes the size is obeyed"
    );
}
