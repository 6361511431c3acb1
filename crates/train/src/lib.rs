//! YOLOv8 training on libtorch, with Ultralytics' recipe: the loss
//! ([`loss::DetectionLoss`], `v8DetectionLoss`) and its task-aligned [`assigner`],
//! optimiser parameter groups ([`optim`]), warm-up and learning-rate [`schedule`]s, the
//! model [`ema`] and the [`trainer`] loop with validation, plots, checkpoints and resume.
//!
//! Other code plugs in through [`GradientSync`] (data-parallel collectives) and
//! [`TrainObserver`] (run tracking, progress bars).
//!
//! ```no_run
//! use cardet_train::{Hooks, NoObserver, SingleProcess, TrainConfig, train};
//! let config = TrainConfig { data: "data.yaml".into(), epochs: 3, ..TrainConfig::default() };
//! let hooks = Hooks { sync: &SingleProcess, observer: &mut NoObserver, stop: None };
//! let summary = train(config, None, hooks)?;
//! println!("best mAP@0.5:0.95 {:?}", summary.metrics.get("metrics/mAP50-95(B)"));
//! # Ok::<(), cardet_train::Error>(())
//! ```

pub mod amp;
pub mod assigner;
pub mod checkpoint;
pub mod config;
pub mod ema;
mod error;
pub mod hooks;
pub mod loss;
pub mod optim;
pub mod plots;
pub mod schedule;
pub mod trainer;
pub mod validate;

pub use amp::GradScaler;
pub use config::TrainConfig;
pub use ema::ModelEma;
pub use error::Error;
pub use hooks::{GradientSync, NoObserver, SingleProcess, TrainObserver, TrainSummary};
pub use loss::{DetectionLoss, LossGains, LossOutput};
pub use optim::{Optimizer, OptimizerName};
pub use trainer::{Hooks, train};
pub use validate::{ValOutput, validate, validate_with};
