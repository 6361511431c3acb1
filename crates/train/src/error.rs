use std::path::PathBuf;

/// What can go wrong while training or validating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {reason}")]
    Shape { what: &'static str, reason: String },
    #[error("target row {row}: {reason}")]
    Target { row: usize, reason: String },
    #[error("invalid training settings: {0}")]
    Config(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("distributed: {0}")]
    Distributed(String),
    #[error(transparent)]
    Model(#[from] cardet_model::Error),
    #[error(transparent)]
    Data(#[from] cardet_augment::Error),
    #[error(transparent)]
    Detect(#[from] cardet_detect::Error),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
