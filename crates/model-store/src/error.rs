//! The one error type of the crate; variants follow what the caller can do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answered at the endpoint (refused, DNS, TLS, timeout).
    #[error("cannot reach the S3 endpoint {endpoint} (bucket {bucket}): {message}")]
    Unreachable {
        endpoint: String,
        bucket: String,
        message: String,
    },
    /// The server does not accept the key pair.
    #[error(
        "the S3 endpoint {endpoint} rejected the credentials for bucket {bucket} ({code}): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or MINIO_ACCESS_KEY/MINIO_SECRET_KEY)"
    )]
    Credentials {
        endpoint: String,
        bucket: String,
        code: String,
    },
    /// The key pair is valid but may not do this.
    #[error("the S3 endpoint {endpoint} denied access to s3://{bucket}/{key}: {message}")]
    AccessDenied {
        endpoint: String,
        bucket: String,
        key: String,
        message: String,
    },
    #[error("the S3 endpoint {endpoint} has no bucket {bucket}")]
    NoBucket { endpoint: String, bucket: String },
    /// Any other answer of the server.
    #[error("S3 {operation} of s3://{bucket}/{key} at {endpoint}: {message}")]
    S3 {
        operation: &'static str,
        endpoint: String,
        bucket: String,
        key: String,
        message: String,
    },
    /// An object's bytes do not hash to what the manifest says.
    #[error(
        "checksum mismatch for s3://{bucket}/{key}: the manifest says sha256 {expected}, the object has {actual}"
    )]
    Checksum {
        bucket: String,
        key: String,
        expected: String,
        actual: String,
    },
    #[error(
        "size mismatch for s3://{bucket}/{key}: the manifest says {expected} bytes, the object has {actual}"
    )]
    Size {
        bucket: String,
        key: String,
        expected: u64,
        actual: u64,
    },
    #[error("{key}: not a cardet version manifest: {message}")]
    Manifest { key: String, message: String },
    #[error(
        "{model} version {version} already exists (it has a manifest); delete it first or pick another --version"
    )]
    VersionExists { model: String, version: u64 },
    #[error("{model} has no complete version {version} (no manifest)")]
    NoVersion { model: String, version: u64 },
    #[error("{path}: {reason}")]
    ModelFolder { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("MLflow at {url}: {message}")]
    Mlflow { url: String, message: String },
    #[error("{0}")]
    InvalidArgument(String),
}
