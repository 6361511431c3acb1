//! YOLOv8 training on libtorch, with Ultralytics' recipe: the loss
//! ([`loss::DetectionLoss`], `v8DetectionLoss`), its task-aligned assigner, optimiser
//! parameter groups, warm-up and learning-rate schedules, the model EMA and the trainer
//! loop with validation, checkpoints and resume.

pub mod assigner;
mod error;
pub mod loss;

pub use error::Error;
pub use loss::{DetectionLoss, LossGains, LossOutput};
pub mod ema;
pub mod optim;
pub mod schedule;

pub use ema::ModelEma;
pub use optim::{Optimizer, OptimizerName};
