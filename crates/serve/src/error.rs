//! The crate's errors: [`Error`] for starting and loading, [`ApiError`] for answers.
//!
//! [`ApiError`] carries an [`ErrorKind`] that says what the caller can do about it;
//! each protocol maps kinds to its status codes in exactly one place
//! (`protocol::http` and `protocol::grpc`).

use std::path::PathBuf;

/// Failures while starting the server or loading models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model repository {0}: not a folder or s3://bucket/prefix URI")]
    RepositoryUri(String),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("s3://{bucket}/{key}: {message}")]
    S3 {
        bucket: String,
        key: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Config {
        path: PathBuf,
        source: crate::model_config::ConfigError,
    },
    #[error("model {model}: {message}")]
    Model { model: String, message: String },
    #[error("binding {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(String),
}

/// What a failed request can do next: fix the input, pick another model, retry later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (names, types, shapes, sizes, syntax).
    Validation,
    /// No such model or version.
    NotFound,
    /// Refused for load shedding that a client should back off from.
    Overloaded,
    /// Not ready, or the queue is full: retry later.
    Unavailable,
    /// The server failed.
    Backend,
}

/// An error answer, protocol-independent.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError {
            kind: ErrorKind::Validation,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            kind: ErrorKind::NotFound,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            kind: ErrorKind::Unavailable,
            message: message.into(),
        }
    }

    pub fn backend(message: impl Into<String>) -> ApiError {
        ApiError {
            kind: ErrorKind::Backend,
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        match error {
            Error::Config { .. } | Error::Model { .. } => ApiError::validation(error.to_string()),
            _ => ApiError::backend(error.to_string()),
        }
    }
}
