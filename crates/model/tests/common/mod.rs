//! What several of this crate's integration tests need.

use std::path::Path;
use std::sync::OnceLock;

use tch::Tensor;

/// `images` through the ONNX model at `path` in ONNX Runtime (what `serve` runs):
/// `output0`.
pub fn run_onnx(path: &Path, images: &Tensor) -> Tensor {
    // ONNX Runtime allows one environment per process.
    static RUNTIME: OnceLock<cardet_onnx::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| cardet_onnx::load().expect("loads onnxruntime"));
    let mut session = cardet_onnx::ort::session::Session::builder(&runtime.environment)
        .expect("session builder")
        .commit_from_file(path)
        .expect("loads our onnx");
    let shape: Vec<usize> = images.size().iter().map(|d| *d as usize).collect();
    let data = Vec::<f32>::try_from(&images.flatten(0, -1)).expect("f32 data");
    let input = ndarray::Array::from_shape_vec(shape, data).expect("array");
    let input = cardet_onnx::ort::value::Tensor::from_array(input).expect("ort tensor");
    let outputs = session
        .run(cardet_onnx::ort::inputs!["images" => input])
        .expect("runs");
    let (shape, values) = outputs["output0"]
        .try_extract_tensor::<f32>()
        .expect("f32 output");
    let dims: Vec<i64> = shape.iter().copied().collect();
    Tensor::from_slice(values).view(dims.as_slice())
}
