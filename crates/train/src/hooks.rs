//! Where other code plugs into the trainer without editing it: data-parallel gradient
//! exchange ([`GradientSync`], c10d lives in another crate) and run tracking
//! ([`TrainObserver`], MLflow and the console bar live in `mwt`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::Tensor;

use crate::Error;

/// Data-parallel collectives, with `DistributedDataParallel`'s semantics.
pub trait GradientSync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Makes every rank's `vars` equal rank 0's (called once before training).
    fn broadcast_parameters(&self, vars: &[Tensor]) -> Result<(), Error>;
    /// Replaces each gradient by its mean over the ranks, in place. Called once per
    /// optimiser step, after the accumulation; the trainer scales the loss by the world
    /// size first, as Ultralytics does, so the mean equals the single-process sum.
    fn all_reduce_gradients(&self, grads: &[Tensor]) -> Result<(), Error>;
    fn barrier(&self) -> Result<(), Error>;
}

/// One process: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl GradientSync for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn broadcast_parameters(&self, _vars: &[Tensor]) -> Result<(), Error> {
        Ok(())
    }
    fn all_reduce_gradients(&self, _grads: &[Tensor]) -> Result<(), Error> {
        Ok(())
    }
    fn barrier(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub epochs_completed: usize,
    /// 1-based epoch of the best fitness.
    pub best_epoch: usize,
    /// Ultralytics' fitness: `0.1 * mAP@0.5 + 0.9 * mAP@0.5:0.95`.
    pub best_fitness: f64,
    /// The best checkpoint's validation: `metrics/precision(B)`, ... (Ultralytics' names).
    pub metrics: BTreeMap<String, f64>,
    pub last: PathBuf,
    pub best: PathBuf,
    pub train_seconds: f64,
    pub images_per_second: f64,
    /// Why it stopped: `epochs`, `time` or `stopped`.
    pub stop_reason: String,
}

/// Run tracking. Only rank 0 calls it.
pub trait TrainObserver {
    /// The run's settings (`args.yaml` names) plus `save_dir`, the run folder the
    /// trainer chose (`<project>/<name>`, or `<name>2`... when that exists).
    fn on_start(&mut self, params: &BTreeMap<String, String>);
    /// After every batch: `step` counts batches since the start of training; the
    /// metrics are the epoch's running mean losses (`train/box_loss`, ...), the learning
    /// rates (`lr/pg0`..`lr/pg2`), `epoch` (1-based), `batch`, `batches` and
    /// `images_per_second`.
    fn on_step(&mut self, step: u64, metrics: &[(String, f64)]);
    /// After every epoch, with the `results.csv` row.
    fn on_epoch_end(&mut self, epoch: u64, metrics: &[(String, f64)]);
    /// A file the run wrote (checkpoint, plot, csv).
    fn on_artifact(&mut self, path: &Path);
    fn on_end(&mut self, summary: &TrainSummary);
}

/// Observes nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl TrainObserver for NoObserver {
    fn on_start(&mut self, _params: &BTreeMap<String, String>) {}
    fn on_step(&mut self, _step: u64, _metrics: &[(String, f64)]) {}
    fn on_epoch_end(&mut self, _epoch: u64, _metrics: &[(String, f64)]) {}
    fn on_artifact(&mut self, _path: &Path) {}
    fn on_end(&mut self, _summary: &TrainSummary) {}
}
