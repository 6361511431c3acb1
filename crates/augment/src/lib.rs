//! The training data pipeline: Ultralytics' augmentations and a loader that feeds
//! the trainer batches built ahead of it on worker threads.
//!
//! - [`transforms`]: `load_image` (long side to `imgsz`), the 4-image mosaic, the
//!   random perspective (one matrix for pixels and boxes, then `box_candidates`),
//!   HSV through lookup tables, flips, and the validation letterbox; [`resize`] is
//!   OpenCV's `INTER_LINEAR` in fixed point.
//! - [`Loader`]: batches of one rank, `DistributedSampler` sharding, rectangular
//!   validation batches, and randomness seeded per `(seed, epoch, sample)` so a
//!   batch never depends on how many workers built it.
//!
//! It knows nothing of libtorch: a [`Batch`] is `u8` CHW pixels plus Ultralytics'
//! `batch_idx, cls, bboxes` targets, which the trainer turns into tensors.
//!
//! ```no_run
//! use cardet_augment::{Loader, LoaderConfig};
//! use cardet_detect::dataset::read_dataset;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (dataset, _diagnostics) = read_dataset("data.yaml".as_ref())?;
//! let loader = Loader::new(dataset.train, LoaderConfig::train(640, 16, 0))?;
//! for epoch in 0..3 {
//!     for batch in loader.epoch(epoch, true) {
//!         let batch = batch?;
//!         println!("{:?} with {} objects", batch.shape, batch.targets.len());
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod error;
pub mod loader;
pub mod resize;
pub mod sampler;
pub mod transforms;

pub use config::{AugmentConfig, LoaderConfig};
pub use error::Error;
pub use loader::{Batch, BatchItem, EpochBatches, Loader};
