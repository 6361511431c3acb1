//! Fixtures for serve's tests, generated at test time: a tiny ONNX model written by
//! the venv's `onnx` package, a YOLOv8n exported by Ultralytics (random weights,
//! cached between runs), and model repositories around them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `y = x * factor` and `sum = ReduceSum(x, axis 1)`, input `x` FP32 `[batch, 4]`.
pub const TINY_MODEL_SCRIPT: &str = r#"
import sys, onnx
from onnx import helper, TensorProto
factor = float(sys.argv[2])
x = helper.make_tensor_value_info('x', TensorProto.FLOAT, ['batch', 4])
y = helper.make_tensor_value_info('y', TensorProto.FLOAT, ['batch', 4])
s = helper.make_tensor_value_info('sum', TensorProto.FLOAT, ['batch', 1])
graph = helper.make_graph(
    [helper.make_node('Mul', ['x', 'factor'], ['y']),
     helper.make_node('ReduceSum', ['x', 'axes'], ['sum'], keepdims=1)],
    'tiny', [x], [y, s],
    [helper.make_tensor('factor', TensorProto.FLOAT, [1], [factor]),
     helper.make_tensor('axes', TensorProto.INT64, [1], [1])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
model.ir_version = 8
onnx.save(model, sys.argv[1])
"#;

pub const TINY_CONFIG: &str = r#"
name: "tiny"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "y" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "sum" data_type: TYPE_FP32 dims: [ 1 ] }
]
dynamic_batching { max_queue_delay_microseconds: 2000 }
"#;

pub fn python() -> PathBuf {
    cardet_testkit::venv_python()
}

/// Writes the tiny model to `path`.
pub fn write_tiny_model(path: &Path, factor: f32) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("model folder");
    }
    let output = Command::new(python())
        .args(["-c", TINY_MODEL_SCRIPT])
        .arg(path)
        .arg(factor.to_string())
        .output()
        .expect("running the venv's python");
    assert!(
        output.status.success(),
        "writing the tiny model: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A repository with `tiny` (versions 1 and 2: factors 2 and 3), in `root`.
pub fn tiny_repository(root: &Path) {
    let model = root.join("tiny");
    std::fs::create_dir_all(&model).expect("folder");
    std::fs::write(model.join("config.pbtxt"), TINY_CONFIG).expect("config");
    write_tiny_model(&model.join("1/model.onnx"), 2.0);
}

/// `yolov8n` at 640 and `yolov8n_small` at 160 (the same dynamic export), batching to 8.
pub fn yolo_repository(root: &Path) {
    for (name, size) in [("yolov8n", 640), ("yolov8n_small", 160)] {
        yolo_model(
            root,
            name,
            size,
            "dynamic_batching { max_queue_delay_microseconds: 1000 }\n\
             instance_group [ { count: 1 kind: KIND_CPU } ]\n",
        );
    }
}

/// The Ultralytics YOLOv8n export as `root/<name>/1/model.onnx` (linked, else
/// copied), configured for `size`x`size` images and batches up to 8, with `extra`
/// (batching, instances, parameters) at the end of its `config.pbtxt`.
pub fn yolo_model(root: &Path, name: &str, size: usize, extra: &str) {
    let model = root.join(name);
    std::fs::create_dir_all(model.join("1")).expect("folder");
    std::fs::write(
        model.join("config.pbtxt"),
        format!(
            "name: \"{name}\"\nbackend: \"onnxruntime\"\nmax_batch_size: 8\n\
             input [ {{ name: \"images\" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]\n\
             output [ {{ name: \"output0\" data_type: TYPE_FP32 dims: [ -1, -1 ] }} ]\n{extra}"
        ),
    )
    .expect("config");
    let onnx = cardet_testkit::ultralytics_yolov8n_onnx();
    let target = model.join("1/model.onnx");
    if std::fs::hard_link(&onnx, &target).is_err() {
        std::fs::copy(&onnx, &target).expect("model");
    }
}

/// This process's ONNX Runtime. A file's tests share it because `cargo test` runs
/// them on parallel threads, and ONNX Runtime refuses an environment built while
/// another one is (nextest, one process per test, never hit it).
pub fn runtime() -> std::sync::Arc<cardet_onnx::Runtime> {
    static RUNTIME: std::sync::OnceLock<std::sync::Arc<cardet_onnx::Runtime>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| std::sync::Arc::new(cardet_onnx::load().expect("onnxruntime")))
        .clone()
}

/// A test server on free ports, in this process.
pub async fn start(
    repository: &Path,
    mode: cardet_serve::ControlMode,
    max_message_bytes: usize,
) -> cardet_serve::Server {
    start_with(config(repository, mode, max_message_bytes)).await
}

/// What [`start`] starts, for a test that changes a setting first.
pub fn config(
    repository: &Path,
    mode: cardet_serve::ControlMode,
    max_message_bytes: usize,
) -> cardet_serve::Config {
    cardet_serve::Config {
        model_repository: repository.display().to_string(),
        http_address: "127.0.0.1".into(),
        http_port: 0,
        grpc_address: "127.0.0.1".into(),
        grpc_port: 0,
        metrics_port: Some(0),
        control_mode: mode,
        load_models: vec!["*".into()],
        threads: cardet_serve::Threads {
            intra_op: 2,
            inter_op: 1,
        },
        max_message_bytes,
        ..cardet_serve::Config::default()
    }
}

pub async fn start_with(config: cardet_serve::Config) -> cardet_serve::Server {
    cardet_serve::start(runtime(), config)
        .await
        .expect("server starts")
}

/// Sends one image (`size`x`size`, FP32 little-endian `image`) to `url` over REST
/// with binary tensor data and returns `output0`'s shape and values.
pub async fn infer_binary_image(
    client: &reqwest::Client,
    url: &str,
    size: usize,
    image: &[u8],
) -> (serde_json::Value, Vec<f32>) {
    let header = format!(
        r#"{{"inputs":[{{"name":"images","shape":[1,3,{size},{size}],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"outputs":[{{"name":"output0","parameters":{{"binary_data":true}}}}]}}"#,
        image.len()
    );
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(image);
    let response = client
        .post(url)
        .header("Inference-Header-Content-Length", header.len().to_string())
        .body(body)
        .send()
        .await
        .expect("infer answers");
    assert_eq!(response.status().as_u16(), 200);
    let json_length: usize = response
        .headers()
        .get("inference-header-content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("binary output has a header length");
    let bytes = response.bytes().await.expect("body");
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[..json_length]).expect("header is JSON");
    let values = bytes[json_length..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (header["outputs"][0]["shape"].clone(), values)
}
