//! An export with `dynamic_size` runs at any multiple of 32 and gives there what our
//! tch network gives (its anchors are computed in the graph, not baked in), and at
//! the nominal size what the fixed export gives. Its config.pbtxt leaves the size
//! variable, so serve and Triton take any size and the client letterboxes to a
//! rectangle.

mod common;

use cardet_model::export::{ExportOptions, RepositoryOptions};
use cardet_model::{Detector, Scale};
use cardet_onnx_export::triton::InstanceKind;
use common::run_onnx;
use tch::{Device, Tensor};

fn write(
    dir: &std::path::Path,
    detector: &Detector,
    name: &str,
    dynamic_size: bool,
) -> cardet_model::export::ModelRepository {
    let model = cardet_model::export_onnx(
        &detector.net,
        &detector.names,
        &ExportOptions {
            height: 320,
            width: 320,
            dynamic_size,
        },
    )
    .expect("exports");
    cardet_model::write_model_repository(
        dir,
        &model,
        &RepositoryOptions {
            name: name.into(),
            version: 1,
            max_batch_size: 4,
            instance_kind: InstanceKind::Cpu,
            instance_count: 1,
        },
    )
    .expect("writes the repository")
}

/// The largest difference between `ours` and `reference`, against the scale of the
/// reference's values (box coordinates run to hundreds of pixels).
fn relative_diff(ours: &Tensor, reference: &Tensor) -> f64 {
    let diff = (ours - reference).abs().max().double_value(&[]);
    diff / reference.abs().max().double_value(&[]).max(1.0)
}

#[test]
fn a_dynamic_size_export_runs_at_any_multiple_of_32_like_the_network() {
    tch::manual_seed(7);
    let names: Vec<String> = ["car", "truck", "bus"].map(String::from).to_vec();
    let detector = Detector::new(Scale::N, names, Device::Cpu);
    let dir = tempfile::tempdir().expect("temp dir");
    let dynamic = write(dir.path(), &detector, "any_size", true);
    let fixed = write(dir.path(), &detector, "square", false);

    let config = std::fs::read_to_string(&dynamic.config_path).expect("config");
    assert!(config.contains("dims: [ 3, -1, -1 ]"), "{config}");
    assert!(config.contains("dims: [ 7, -1 ]"), "{config}");

    for (batch, height, width) in [(1, 320, 320), (2, 192, 320), (1, 384, 640), (1, 256, 96)] {
        let images = Tensor::rand([batch, 3, height, width], tch::kind::FLOAT_CPU);
        let from_tch = tch::no_grad(|| detector.net.predict(&images));
        let from_ort = run_onnx(&dynamic.onnx_path, &images);
        let anchors = cardet_model::export::anchor_count(height, width);
        assert_eq!(from_ort.size(), [batch, 7, anchors], "{height}x{width}");
        let diff = relative_diff(&from_ort, &from_tch);
        assert!(diff <= 1e-5, "{height}x{width}: ort vs tch {diff}");
    }
    let images = Tensor::rand([2, 3, 320, 320], tch::kind::FLOAT_CPU);
    let diff = relative_diff(
        &run_onnx(&dynamic.onnx_path, &images),
        &run_onnx(&fixed.onnx_path, &images),
    );
    assert!(diff <= 1e-6, "dynamic vs fixed export at 320x320: {diff}");
}
