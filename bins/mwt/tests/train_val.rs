//! `mwt train` and `mwt val` as a user runs them: flag errors, and a tiny run whose
//! best checkpoint `mwt val` (tch and, after `mwt export`, ONNX Runtime) evaluates.

mod common;

use common::path_str;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mwt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mwt"))
        .args(args)
        .output()
        .expect("runs mwt")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn synth_dataset(root: &Path, n_train: usize, n_val: usize, size: (u32, u32)) -> PathBuf {
    common::synth_dataset(root, n_train, n_val, size, 11)
}

#[test]
fn help_shows_examples_and_bad_flags_fail_with_exit_2() {
    let help = mwt(&["train", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success());
    for needle in [
        "Examples:",
        "--close-mosaic",
        "--resume",
        "--cfg",
        "--hsv-h",
        "--time",
    ] {
        assert!(
            text.contains(needle),
            "train --help lacks {needle}:\n{text}"
        );
    }
    let typo = mwt(&["train", "--epochz", "3"]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(stderr(&typo).contains("--epochs"), "{}", stderr(&typo));

    let bad_size = mwt(&["train", "--data", "data.yaml", "--imgsz", "100"]);
    assert_eq!(bad_size.status.code(), Some(2));
    assert!(
        stderr(&bad_size).contains("imgsz 100"),
        "{}",
        stderr(&bad_size)
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nowhere/data.yaml");
    let no_data = mwt(&["train", "--data", path_str(&missing), "--epochs", "1"]);
    assert_eq!(no_data.status.code(), Some(2));
    assert!(
        stderr(&no_data).contains("nowhere/data.yaml"),
        "{}",
        stderr(&no_data)
    );

    let cfg = dir.path().join("args.yaml");
    std::fs::write(&cfg, "epochs: 3\nlr0: fast\n").expect("cfg");
    let bad_cfg = mwt(&["train", "--cfg", path_str(&cfg)]);
    assert_eq!(bad_cfg.status.code(), Some(2));
    assert!(
        stderr(&bad_cfg).contains("args.yaml:2"),
        "{}",
        stderr(&bad_cfg)
    );

    let val_split = mwt(&[
        "val",
        "--model",
        "m.safetensors",
        "--data",
        path_str(&missing),
    ]);
    assert_eq!(val_split.status.code(), Some(2));
}

#[test]
fn val_of_the_best_checkpoint_reproduces_the_trainers_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synth_dataset(&dir.path().join("data"), 8, 4, (128, 96));
    let project = dir.path().join("runs");
    let train = mwt(&[
        "train",
        "--data",
        path_str(&data),
        "--model",
        "n",
        "--epochs",
        "1",
        "--batch",
        "2",
        "--imgsz",
        "96",
        "--workers",
        "1",
        "--project",
        path_str(&project),
        "--name",
        "tiny",
        "--json",
    ]);
    assert!(train.status.success(), "{}", stderr(&train));
    let summary: serde_json::Value = serde_json::from_slice(&train.stdout).expect("summary JSON");
    let run = project.join("tiny");
    for file in [
        "args.yaml",
        "results.csv",
        "results.png",
        "confusion_matrix.png",
        "weights/best.safetensors",
        "weights/last.json",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let best = run.join("weights/best.safetensors");
    // The trainer validates with batches of twice the training batch; the same batches
    // give the same letterboxes, so the same numbers.
    let val = mwt(&[
        "val",
        "--model",
        path_str(&best),
        "--data",
        path_str(&data),
        "--imgsz",
        "96",
        "--batch",
        "4",
        "--workers",
        "1",
        "--json",
    ]);
    assert!(val.status.success(), "{}", stderr(&val));
    let report: serde_json::Value = serde_json::from_slice(&val.stdout).expect("val JSON");
    // At confidence 0.001 even a one-epoch model predicts boxes: the numbers below come
    // from real predictions, not from two empty evaluations.
    let predicted = report["evaluation"]["per_class"][0]["n_predictions"].as_u64();
    assert!(predicted.is_some_and(|n| n > 0), "{report}");
    eprintln!("val after one epoch: {}", report["evaluation"]);
    for (ours, theirs) in [
        ("map50", "metrics/mAP50(B)"),
        ("map50_95", "metrics/mAP50-95(B)"),
        ("precision", "metrics/precision(B)"),
        ("recall", "metrics/recall(B)"),
    ] {
        let a = report[ours].as_f64().expect("number");
        let b = summary["metrics"][theirs].as_f64().expect("number");
        assert!((a - b).abs() < 1e-9, "{ours}: val {a}, trainer {b}");
    }

    // The stripped best checkpoint exports, and its ONNX evaluates through ONNX Runtime.
    let repo = dir.path().join("repo");
    let export = mwt(&[
        "export",
        "--weights",
        path_str(&best),
        "--repo",
        path_str(&repo),
        "--name",
        "tiny",
        "--imgsz",
        "96",
    ]);
    assert!(export.status.success(), "{}", stderr(&export));
    let onnx = repo.join("tiny/1/model.onnx");
    let onnx_val = mwt(&[
        "val",
        "--model",
        path_str(&onnx),
        "--data",
        path_str(&data),
        "--imgsz",
        "96",
        "--workers",
        "1",
        "--json",
    ]);
    assert!(onnx_val.status.success(), "{}", stderr(&onnx_val));
    let onnx_report: serde_json::Value = serde_json::from_slice(&onnx_val.stdout).expect("json");
    assert_eq!(onnx_report["evaluation"]["n_images"], 4, "{onnx_report}");
    assert!(onnx_report["map50"].as_f64().is_some_and(f64::is_finite));
}
