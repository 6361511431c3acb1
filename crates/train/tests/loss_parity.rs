//! Parity with Ultralytics' `v8DetectionLoss`: the same randomised yolov8n (written by
//! `loss_fixture.py` from Ultralytics' own `DetectionModel`), the same images and
//! targets, in train mode; our total, three parts and the gradient of the first
//! convolution's weight against theirs.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use cardet_model::Detector;
use cardet_train::{DetectionLoss, LossGains};
use tch::{Device, Kind, Tensor};

const FIXTURE: &str = include_str!("loss_fixture.py");
const CASES: usize = 4;

#[test]
fn loss_parts_total_and_first_conv_gradient_equal_ultralytics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("loss_fixture.py");
    std::fs::write(&script, FIXTURE).expect("writes the script");
    let output = Command::new(cardet_testkit::venv_python())
        .arg(&script)
        .args(["loss", dir.path().to_str().expect("utf-8 temp dir")])
        .current_dir(dir.path())
        .env("YOLO_OFFLINE", "1")
        .env("YOLO_CONFIG_DIR", dir.path())
        .output()
        .expect("runs the venv's python");
    assert!(
        output.status.success(),
        "loss_fixture.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let detector =
        Detector::load(&dir.path().join("weights.safetensors"), Device::Cpu).expect("loads");
    let criterion = DetectionLoss::new(3, LossGains::default());
    let first_conv = detector
        .vs
        .variables()
        .remove("model.0.conv.weight")
        .expect("first conv weight");
    let mut positives_seen = 0;
    for case in 0..CASES {
        let expected = read(&dir.path().join(format!("case{case}.safetensors")));
        let images = &expected["images"];
        let targets = rows(&expected["targets"]);
        if !targets.is_empty() {
            positives_seen += 1;
        }
        zero_grad(&first_conv);
        let head = detector.net.forward_t(images, true);
        let loss = criterion.compute(&head, &targets).expect("loss");
        loss.total.backward();

        let theirs_total = expected["total"].double_value(&[0]);
        let ours_total = loss.total.double_value(&[]);
        assert_close(&format!("case {case} total"), ours_total, theirs_total);
        let ours_parts = loss.parts();
        for (i, name) in ["box", "cls", "dfl"].iter().enumerate() {
            let theirs = expected["items"].double_value(&[i as i64]);
            assert_close(&format!("case {case} {name}"), ours_parts[i], theirs);
        }
        eprintln!(
            "case {case}: total ours {ours_total:.6} theirs {theirs_total:.6}; parts ours {ours_parts:?}"
        );
        let grad = first_conv.grad();
        let theirs_grad = &expected["grad"];
        let diff = (&grad - theirs_grad).abs().max().double_value(&[]);
        let largest = theirs_grad.abs().max().double_value(&[]);
        assert!(
            diff <= 1e-4 * largest.max(1.0),
            "case {case}: first conv gradient differs by {diff} (values up to {largest})"
        );
    }
    assert!(positives_seen >= 3, "the fixture must exercise positives");
}

fn zero_grad(variable: &Tensor) {
    let mut grad = variable.grad();
    if grad.defined() {
        let _ = grad.zero_();
    }
}

/// Absolute 1e-4, relative where the value is large (a total is the sum times the batch).
fn assert_close(what: &str, ours: f64, theirs: f64) {
    let diff = (ours - theirs).abs();
    assert!(
        diff <= 1e-4 * theirs.abs().max(1.0),
        "{what}: ours {ours}, Ultralytics {theirs} (diff {diff})"
    );
}

fn rows(targets: &Tensor) -> Vec<[f32; 6]> {
    let flat = Vec::<f32>::try_from(&targets.to_kind(Kind::Float).flatten(0, -1)).expect("f32");
    flat.chunks_exact(6)
        .map(|row| [row[0], row[1], row[2], row[3], row[4], row[5]])
        .collect()
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .expect("reads safetensors")
        .into_iter()
        .collect()
}
