//! The trainer end to end on a tiny synthetic dataset: exact resume, and learning.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cardet_train::optim::OptimizerName;
use cardet_train::{
    Hooks, NoObserver, SingleProcess, TrainConfig, TrainObserver, TrainSummary, train,
};
use tch::Tensor;

/// Raises the stop flag when epoch `after` ends, like a signal would.
struct StopAfter {
    after: u64,
    flag: Arc<AtomicBool>,
}

impl TrainObserver for StopAfter {
    fn on_start(&mut self, _params: &BTreeMap<String, String>) {}
    fn on_step(&mut self, _step: u64, _metrics: &[(String, f64)]) {}
    fn on_epoch_end(&mut self, epoch: u64, _metrics: &[(String, f64)]) {
        if epoch >= self.after {
            self.flag.store(true, Ordering::Relaxed);
        }
    }
    fn on_artifact(&mut self, _path: &Path) {}
    fn on_end(&mut self, _summary: &TrainSummary) {}
}

fn tiny_config(data: &Path, project: &Path, name: &str) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        model: "n".into(),
        epochs: 2,
        batch: 4,
        imgsz: 128,
        optimizer: OptimizerName::Sgd,
        // No warm-up and 3 batches per step over 4 batches per epoch: the step
        // boundary falls inside epoch 2, so the checkpoint must carry pending gradients.
        warmup_epochs: 0.0,
        accumulate: Some(3),
        close_mosaic: 1,
        workers: 2,
        seed: 3,
        project: project.to_path_buf(),
        name: name.into(),
        ..TrainConfig::default()
    }
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .expect("reads safetensors")
        .into_iter()
        .collect()
}

#[test]
fn one_epoch_then_resume_equals_two_epochs_straight() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = common::synth_dataset(&dir.path().join("data"), 16, 4, (160, 120));
    let project = dir.path().join("runs");

    let straight = train(
        tiny_config(&data, &project, "straight"),
        None,
        Hooks {
            sync: &SingleProcess,
            observer: &mut NoObserver,
            stop: None,
        },
    )
    .expect("straight run");
    assert_eq!(straight.epochs_completed, 2);

    let flag = Arc::new(AtomicBool::new(false));
    let mut stopper = StopAfter {
        after: 1,
        flag: Arc::clone(&flag),
    };
    let first = train(
        tiny_config(&data, &project, "split"),
        None,
        Hooks {
            sync: &SingleProcess,
            observer: &mut stopper,
            stop: Some(flag),
        },
    )
    .expect("first half");
    assert_eq!(
        (first.epochs_completed, first.stop_reason.as_str()),
        (1, "stopped")
    );

    let resumed = train(
        // Only device and workers may differ on resume; the rest comes from the checkpoint.
        TrainConfig {
            workers: 1,
            ..TrainConfig::default()
        },
        Some(&first.last),
        Hooks {
            sync: &SingleProcess,
            observer: &mut NoObserver,
            stop: None,
        },
    )
    .expect("resumed run");
    assert_eq!(resumed.epochs_completed, 2);
    assert_eq!(resumed.run_dir, first.run_dir);

    let a = read(&straight.last);
    let b = read(&resumed.last);
    assert_eq!(a.len(), b.len());
    let mut compared = 0;
    for (name, tensor) in &a {
        let other = &b[name];
        let diff = (tensor - other).abs().max().double_value(&[]);
        assert!(diff == 0.0, "{name} differs by {diff} after resume");
        compared += 1;
    }
    assert!(compared > 100, "compared {compared} tensors");
    let csv = std::fs::read_to_string(resumed.run_dir.join("results.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let straight_csv = std::fs::read_to_string(straight.run_dir.join("results.csv")).expect("csv");
    let losses = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split(',').skip(2).take(3).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(losses(&csv), losses(&straight_csv));
}

/// Records each epoch's validation metrics.
#[derive(Default)]
struct Record {
    map50: Vec<f64>,
}

impl TrainObserver for Record {
    fn on_start(&mut self, _params: &BTreeMap<String, String>) {}
    fn on_step(&mut self, _step: u64, _metrics: &[(String, f64)]) {}
    fn on_epoch_end(&mut self, _epoch: u64, metrics: &[(String, f64)]) {
        if let Some((_, value)) = metrics.iter().find(|(k, _)| k == "metrics/mAP50(B)") {
            self.map50.push(*value);
        }
    }
    fn on_artifact(&mut self, _path: &Path) {}
    fn on_end(&mut self, _summary: &TrainSummary) {}
}

#[test]
fn a_short_run_learns_synthetic_vehicles() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = common::synth_dataset(&dir.path().join("data"), 48, 16, (256, 192));
    let config = TrainConfig {
        data: data.clone(),
        model: "n".into(),
        epochs: 12,
        batch: 8,
        imgsz: 256,
        warmup_epochs: 0.0,
        accumulate: Some(1),
        close_mosaic: 0,
        workers: 2,
        seed: 1,
        project: dir.path().join("runs"),
        name: "learn".into(),
        ..TrainConfig::default()
    };
    let mut config = config;
    config.augment.mosaic = 0.0;
    let mut record = Record::default();
    let started = std::time::Instant::now();
    let summary = train(
        config,
        None,
        Hooks {
            sync: &SingleProcess,
            observer: &mut record,
            stop: None,
        },
    )
    .expect("trains");
    eprintln!(
        "mAP50 per epoch {:?} in {:.0} s",
        record.map50,
        started.elapsed().as_secs_f64()
    );
    eprintln!("{summary:?}");
}
