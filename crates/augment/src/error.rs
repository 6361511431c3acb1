//! The one error type of the crate.

use std::sync::Arc;

/// Everything that can fail in `cardet-augment`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The loader's configuration cannot work (zero batch size, a rank outside the
    /// world, a size that is not a multiple of the stride, ...).
    #[error("invalid loader configuration: {0}")]
    InvalidConfig(String),
    /// An image could not be read or decoded; the message names its path. Shared,
    /// because every sample of a mosaic group that needs the image sees the same failure.
    #[error(transparent)]
    Image(Arc<cardet_detect::Error>),
    /// A worker thread panicked while building this batch (a bug, not bad data).
    #[error("a loader worker panicked while building batch {batch_idx}")]
    WorkerPanicked { batch_idx: usize },
    /// No worker thread could be started.
    #[error("cannot start a loader worker thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl From<cardet_detect::Error> for Error {
    fn from(error: cardet_detect::Error) -> Error {
        Error::Image(Arc::new(error))
    }
}
