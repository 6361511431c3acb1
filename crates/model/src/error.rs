use std::path::PathBuf;

use crate::Scale;

/// What can go wrong loading, saving or exporting a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    #[error("{path} is not a safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(
        "{path} does not fit yolov8{scale} with {num_classes} classes: tensor {name} has shape {found:?} in the file, the model expects {expected:?}"
    )]
    ShapeMismatch {
        path: PathBuf,
        scale: Scale,
        num_classes: i64,
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error(
        "{path} does not fit yolov8{scale} with {num_classes} classes: tensor {name} is missing from the file"
    )]
    MissingTensor {
        path: PathBuf,
        scale: Scale,
        num_classes: i64,
        name: String,
    },
    #[error(
        "{path} does not fit yolov8{scale} with {num_classes} classes: the file has tensor {name}, which the model does not"
    )]
    UnexpectedTensor {
        path: PathBuf,
        scale: Scale,
        num_classes: i64,
        name: String,
    },
    #[error("{path}: tensor {name} has dtype {dtype}, which cardet does not read")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: metadata `{key}`: {reason}")]
    Metadata {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    #[error("invalid export settings: {0}")]
    Export(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
