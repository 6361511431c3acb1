//! Model versions in S3, in Triton's repository layout, made visible atomically.
//!
//! An upload writes every object of `<model>/<version>/` first, each with its
//! SHA-256 for the server to check, and the version's [`Manifest`] (every file with
//! its size and SHA-256) last. A reader trusts only versions with a manifest and
//! checks every byte it reads against it, so a version being uploaded, an upload
//! killed half-way, or an object corrupted at rest is never served.
//!
//! - [`ModelStore`]: a bucket and prefix; [`ModelStore::upload`],
//!   [`ModelStore::versions`], [`ModelStore::delete_version`] and the verified
//!   [`ModelStore::download_version`] that `serve` uses too.
//! - [`S3Settings`]: endpoint, region and keys from the AWS variables, with the
//!   original uploader's `MINIO_ACCESS_KEY`/`MINIO_SECRET_KEY` as fallbacks.
//! - [`mlflow`]: fetching a registered model or a run's artifacts first.
//!
//! ```no_run
//! use cardet_model_store::{ModelStore, S3Settings, UploadOptions};
//! # async fn run() -> Result<(), cardet_model_store::Error> {
//! let store = ModelStore::connect(&S3Settings::from_env(), "modelmesh-models", "cardetect").await;
//! let report = store
//!     .upload("model_repo/yolov8n_car".as_ref(), "yolov8n_car", &UploadOptions::default(), &|_| {})
//!     .await?;
//! println!("uploaded version {}", report.version);
//! # Ok(())
//! # }
//! ```

mod error;
mod manifest;
pub mod mlflow;
mod s3;
mod store;

pub use crate::error::Error;
pub use crate::manifest::{
    MANIFEST_FILE, MANIFEST_FORMAT, Manifest, ManifestFile, is_safe_relative_path, sha256_file,
    sha256_hex,
};
pub use crate::s3::S3Settings;
pub use crate::store::{
    ModelStore, PlannedFile, UploadEvent, UploadOptions, UploadReport, VersionInfo,
};
