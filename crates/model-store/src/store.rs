//! Model versions in a bucket, in Triton's layout:
//!
//! ```text
//! s3://<bucket>/<prefix><model>/config.pbtxt
//! s3://<bucket>/<prefix><model>/<version>/<files...>
//! s3://<bucket>/<prefix><model>/<version>/manifest.json   (written last)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine;

use crate::error::Error;
use crate::manifest::{MANIFEST_FILE, MANIFEST_FORMAT, Manifest, ManifestFile, sha256_file};
use crate::s3::{Request, S3Settings};

/// The user-metadata key that carries an object's SHA-256 (hex), so a resumed upload
/// can skip what is already there.
const SHA256_METADATA: &str = "sha256";

/// A bucket and prefix holding model versions.
#[derive(Clone, Debug)]
pub struct ModelStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Empty, or ending in `/`.
    prefix: String,
    endpoint: String,
}

/// One version as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionInfo {
    pub version: u64,
    /// `None`: no manifest, so the version is incomplete (being uploaded, or an
    /// upload that died) and readers ignore it.
    pub manifest: Option<Manifest>,
    pub n_objects: usize,
    pub bytes: u64,
}

/// How to upload.
#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// The version to write; `None`: resume the highest version if it has no
    /// manifest, else the highest plus one.
    pub version: Option<u64>,
    /// Which numeric folder of the local model folder to upload; `None`: the highest.
    pub local_version: Option<u64>,
    /// Plan only: read the folder and the bucket, write nothing.
    pub dry_run: bool,
    /// Files at least this large go up in parts.
    pub multipart_threshold: u64,
    pub part_size: u64,
}

impl Default for UploadOptions {
    fn default() -> UploadOptions {
        UploadOptions {
            version: None,
            local_version: None,
            dry_run: false,
            multipart_threshold: 64 << 20,
            part_size: 16 << 20,
        }
    }
}

/// One file to upload.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedFile {
    pub local: PathBuf,
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// What an upload did (or, dry, would do).
#[derive(Clone, Debug, PartialEq)]
pub struct UploadReport {
    pub model: String,
    pub version: u64,
    /// The version existed without a manifest: an interrupted upload being finished.
    pub resumed: bool,
    pub bucket_created: bool,
    /// The model's `config.pbtxt`, when the folder has one.
    pub config: Option<PlannedFile>,
    pub files: Vec<PlannedFile>,
    pub manifest_key: String,
    pub n_uploaded: usize,
    /// Objects already there with the same SHA-256 (a resumed upload).
    pub n_skipped: usize,
    pub bytes_uploaded: u64,
    pub dry_run: bool,
}

/// Progress of an upload, for a bar or a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadEvent<'a> {
    Uploaded { key: &'a str, bytes: u64 },
    Skipped { key: &'a str },
}

impl ModelStore {
    /// Wraps a client; `prefix` may be empty, with or without slashes.
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: &str,
        prefix: &str,
        endpoint: &str,
    ) -> ModelStore {
        let mut prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        ModelStore {
            client,
            bucket: bucket.to_string(),
            prefix,
            endpoint: endpoint.to_string(),
        }
    }

    /// A client for `settings`, on `bucket` and `prefix`.
    pub async fn connect(settings: &S3Settings, bucket: &str, prefix: &str) -> ModelStore {
        ModelStore::new(
            settings.client().await,
            bucket,
            prefix,
            &settings.endpoint_label(),
        )
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://bucket/prefix`.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The key of `relative` inside `model`'s folder.
    pub fn model_key(&self, model: &str, relative: &str) -> String {
        format!("{}{model}/{relative}", self.prefix)
    }

    fn request<'a>(&'a self, operation: &'static str, key: &'a str) -> Request<'a> {
        Request {
            operation,
            endpoint: &self.endpoint,
            bucket: &self.bucket,
            key,
        }
    }

    /// Whether the bucket exists; also proves the endpoint answers and the keys work.
    pub async fn bucket_exists(&self) -> Result<bool, Error> {
        // A listing rather than HEAD: its error body names the cause (a HEAD 403 cannot
        // tell wrong keys from a missing permission).
        match self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .max_keys(1)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(error) => match self.request("list", "").error(error) {
                Error::NoBucket { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Creates the bucket when missing; true when it was created.
    pub async fn ensure_bucket(&self) -> Result<bool, Error> {
        if self.bucket_exists().await? {
            return Ok(false);
        }
        self.client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|error| self.request("create bucket", "").error(error))?;
        tracing::info!(bucket = %self.bucket, "created the bucket");
        Ok(true)
    }

    /// Every `(key, size)` under `prefix`.
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| self.request("list", prefix).error(error))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    let size = object.size().unwrap_or(0).max(0) as u64;
                    objects.push((key.to_string(), size));
                }
            }
        }
        Ok(objects)
    }

    /// The model names under the prefix.
    pub async fn models(&self) -> Result<Vec<String>, Error> {
        let mut names = std::collections::BTreeSet::new();
        for (key, _) in self.list_objects(&self.prefix).await? {
            if let Some((model, _)) = key
                .strip_prefix(&self.prefix)
                .and_then(|rest| rest.split_once('/'))
            {
                names.insert(model.to_string());
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The versions of `model`, ascending, complete or not.
    pub async fn versions(&self, model: &str) -> Result<Vec<VersionInfo>, Error> {
        let model_prefix = self.model_key(model, "");
        let mut by_version: BTreeMap<u64, (usize, u64, bool)> = BTreeMap::new();
        for (key, size) in self.list_objects(&model_prefix).await? {
            let Some((version, file)) = key
                .strip_prefix(&model_prefix)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            let Ok(version) = version.parse::<u64>() else {
                continue;
            };
            let entry = by_version.entry(version).or_default();
            entry.0 += 1;
            entry.1 += size;
            entry.2 |= file == MANIFEST_FILE;
        }
        let mut versions = Vec::with_capacity(by_version.len());
        for (version, (n_objects, bytes, has_manifest)) in by_version {
            let manifest = if has_manifest {
                Some(self.read_manifest(model, version).await?)
            } else {
                None
            };
            versions.push(VersionInfo {
                version,
                manifest,
                n_objects,
                bytes,
            });
        }
        Ok(versions)
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, Error> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|error| self.request("get", key).error(error))?;
        let body = object.body.collect().await.map_err(|error| Error::S3 {
            operation: "get",
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            message: error.to_string(),
        })?;
        Ok(body.into_bytes().to_vec())
    }

    /// The manifest of a complete version.
    pub async fn read_manifest(&self, model: &str, version: u64) -> Result<Manifest, Error> {
        let key = self.model_key(model, &format!("{version}/{MANIFEST_FILE}"));
        let bytes = match self.get_bytes(&key).await {
            Ok(bytes) => bytes,
            Err(Error::S3 { message, .. }) if message.starts_with("NoSuchKey") => {
                return Err(Error::NoVersion {
                    model: model.to_string(),
                    version,
                });
            }
            Err(other) => return Err(other),
        };
        Manifest::parse(&bytes, &key)
    }

    /// Downloads a complete version into `version_folder`, checking every file's size
    /// and SHA-256 against the manifest; the manifest is written last, so a folder
    /// with one is complete and verified. Objects the manifest does not list are
    /// not read.
    pub async fn download_version(
        &self,
        model: &str,
        version: u64,
        version_folder: &Path,
    ) -> Result<Manifest, Error> {
        let manifest = self.read_manifest(model, version).await?;
        for file in &manifest.files {
            let key = self.model_key(model, &format!("{version}/{}", file.path));
            let bytes = self.get_bytes(&key).await?;
            self.verify(&key, file, &bytes)?;
            write_atomically(&version_folder.join(&file.path), &bytes)?;
        }
        write_atomically(&version_folder.join(MANIFEST_FILE), &manifest.to_json())?;
        Ok(manifest)
    }

    fn verify(&self, key: &str, file: &ManifestFile, bytes: &[u8]) -> Result<(), Error> {
        if bytes.len() as u64 != file.size {
            return Err(Error::Size {
                bucket: self.bucket.clone(),
                key: key.to_string(),
                expected: file.size,
                actual: bytes.len() as u64,
            });
        }
        let actual = crate::manifest::sha256_hex(bytes);
        if actual != file.sha256 {
            return Err(Error::Checksum {
                bucket: self.bucket.clone(),
                key: key.to_string(),
                expected: file.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Downloads the model's `config.pbtxt` into `path`; false when there is none.
    pub async fn download_config(&self, model: &str, path: &Path) -> Result<bool, Error> {
        let key = self.model_key(model, "config.pbtxt");
        match self.get_bytes(&key).await {
            Ok(bytes) => {
                write_atomically(path, &bytes)?;
                Ok(true)
            }
            Err(Error::S3 { message, .. }) if message.starts_with("NoSuchKey") => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Uploads a local model folder (`<folder>/config.pbtxt`, `<folder>/<n>/...`) as
    /// a version of `model`: every object first, each with its SHA-256 for the server
    /// to check, then the manifest, which makes the version visible at once.
    pub async fn upload(
        &self,
        folder: &Path,
        model: &str,
        options: &UploadOptions,
        progress: &(dyn Fn(UploadEvent<'_>) + Sync),
    ) -> Result<UploadReport, Error> {
        if model.is_empty() || model.contains('/') || model.starts_with('.') {
            return Err(Error::InvalidArgument(format!(
                "{model:?} is not a model name"
            )));
        }
        if options.part_size < 5 << 20 {
            return Err(Error::InvalidArgument(
                "parts must be at least 5 MiB (S3's minimum)".to_string(),
            ));
        }
        let local = LocalModel::read(folder, options.local_version)?;
        let bucket_exists = self.bucket_exists().await?;
        let existing = if bucket_exists {
            self.versions(model).await?
        } else {
            Vec::new()
        };
        let (version, resumed) = choose_version(model, &existing, options.version)?;
        let version_key = |relative: &str| self.model_key(model, &format!("{version}/{relative}"));
        let files: Vec<PlannedFile> = local
            .files
            .iter()
            .map(|(relative, path, size, sha256)| PlannedFile {
                local: path.clone(),
                key: version_key(relative),
                size: *size,
                sha256: sha256.clone(),
            })
            .collect();
        let config = local.config.map(|(path, size, sha256)| PlannedFile {
            local: path,
            key: self.model_key(model, "config.pbtxt"),
            size,
            sha256,
        });
        let mut report = UploadReport {
            model: model.to_string(),
            version,
            resumed,
            bucket_created: false,
            config,
            files,
            manifest_key: version_key(MANIFEST_FILE),
            n_uploaded: 0,
            n_skipped: 0,
            bytes_uploaded: 0,
            dry_run: options.dry_run,
        };
        if options.dry_run {
            return Ok(report);
        }
        if !bucket_exists {
            report.bucket_created = self.ensure_bucket().await?;
        }
        let planned: Vec<PlannedFile> = report
            .config
            .iter()
            .chain(report.files.iter())
            .cloned()
            .collect();
        for file in &planned {
            if self.already_there(file).await? {
                report.n_skipped += 1;
                progress(UploadEvent::Skipped { key: &file.key });
                continue;
            }
            self.put_file(file, options).await?;
            report.n_uploaded += 1;
            report.bytes_uploaded += file.size;
            progress(UploadEvent::Uploaded {
                key: &file.key,
                bytes: file.size,
            });
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            model: model.to_string(),
            version,
            created_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs()),
            files: local
                .files
                .iter()
                .map(|(relative, _, size, sha256)| ManifestFile {
                    path: relative.clone(),
                    size: *size,
                    sha256: sha256.clone(),
                })
                .collect(),
        };
        let manifest_bytes = manifest.to_json();
        self.put_bytes(&report.manifest_key, manifest_bytes.clone())
            .await?;
        report.n_uploaded += 1;
        report.bytes_uploaded += manifest_bytes.len() as u64;
        progress(UploadEvent::Uploaded {
            key: &report.manifest_key,
            bytes: manifest_bytes.len() as u64,
        });
        Ok(report)
    }

    /// Whether the object exists with this size and SHA-256 (from its metadata).
    async fn already_there(&self, file: &PlannedFile) -> Result<bool, Error> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&file.key)
            .send()
            .await
        {
            Ok(head) => Ok(head.content_length() == Some(file.size as i64)
                && head
                    .metadata()
                    .and_then(|metadata| metadata.get(SHA256_METADATA))
                    .is_some_and(|sha256| *sha256 == file.sha256)),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|service| service.is_not_found()) =>
            {
                Ok(false)
            }
            Err(error) => Err(self.request("head", &file.key).error(error)),
        }
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), Error> {
        let sha256 = sha2_digest(&bytes);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(sha256))
            .metadata(SHA256_METADATA, hex::encode(sha256))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|error| self.request("put", key).error(error))?;
        Ok(())
    }

    async fn put_file(&self, file: &PlannedFile, options: &UploadOptions) -> Result<(), Error> {
        // Whole files in memory: model files are at most a few hundred MB, and
        // reading parts from one buffer keeps the checksum of what is sent exact.
        let bytes = tokio::fs::read(&file.local)
            .await
            .map_err(|source| Error::Io {
                path: file.local.clone(),
                source,
            })?;
        if crate::manifest::sha256_hex(&bytes) != file.sha256 {
            return Err(Error::ModelFolder {
                path: file.local.clone(),
                reason: "the file changed while it was being uploaded".to_string(),
            });
        }
        if (bytes.len() as u64) < options.multipart_threshold {
            return self.put_bytes(&file.key, bytes).await;
        }
        self.put_multipart(file, &bytes, options.part_size as usize)
            .await
    }

    async fn put_multipart(
        &self,
        file: &PlannedFile,
        bytes: &[u8],
        part_size: usize,
    ) -> Result<(), Error> {
        let key = file.key.as_str();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .metadata(SHA256_METADATA, &file.sha256)
            .send()
            .await
            .map_err(|error| self.request("create multipart upload", key).error(error))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = self.put_parts(key, &upload_id, bytes, part_size).await;
        if result.is_err() {
            // Best effort: a part left behind only costs space until the bucket's
            // lifecycle (or a re-run) cleans it.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn put_parts(
        &self,
        key: &str,
        upload_id: &str,
        bytes: &[u8],
        part_size: usize,
    ) -> Result<(), Error> {
        let mut parts = Vec::new();
        for (part_idx, chunk) in bytes.chunks(part_size.max(1)).enumerate() {
            let part_number = part_idx as i32 + 1;
            let checksum = base64::engine::general_purpose::STANDARD.encode(sha2_digest(chunk));
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(part_number)
                .checksum_sha256(&checksum)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .map_err(|error| self.request("upload part", key).error(error))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(part_number)
                    .set_e_tag(uploaded.e_tag().map(str::to_string))
                    .checksum_sha256(checksum)
                    .build(),
            );
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|error| self.request("complete multipart upload", key).error(error))?;
        Ok(())
    }

    /// Deletes a version: the manifest first, so readers stop trusting it at once,
    /// then its other objects. Returns the number of objects deleted.
    pub async fn delete_version(&self, model: &str, version: u64) -> Result<usize, Error> {
        let version_prefix = self.model_key(model, &format!("{version}/"));
        let mut keys: Vec<String> = self
            .list_objects(&version_prefix)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        if keys.is_empty() {
            return Err(Error::NoVersion {
                model: model.to_string(),
                version,
            });
        }
        keys.sort_by_key(|key| !key.ends_with(&format!("/{MANIFEST_FILE}")));
        for key in &keys {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|error| self.request("delete", key).error(error))?;
        }
        Ok(keys.len())
    }
}

/// Picks the version to write: the one asked for (refused if complete), else the
/// highest when an interrupted upload left it without a manifest, else the next.
fn choose_version(
    model: &str,
    existing: &[VersionInfo],
    asked: Option<u64>,
) -> Result<(u64, bool), Error> {
    if let Some(version) = asked {
        if version == 0 {
            return Err(Error::InvalidArgument(
                "versions start at 1 (Triton ignores version 0)".to_string(),
            ));
        }
        return match existing.iter().find(|info| info.version == version) {
            Some(info) if info.manifest.is_some() => Err(Error::VersionExists {
                model: model.to_string(),
                version,
            }),
            Some(_) => Ok((version, true)),
            None => Ok((version, false)),
        };
    }
    Ok(match existing.iter().max_by_key(|info| info.version) {
        Some(info) if info.manifest.is_none() => (info.version, true),
        Some(info) => (info.version + 1, false),
        None => (1, false),
    })
}

/// A local model folder: its `config.pbtxt` and one version's files.
struct LocalModel {
    /// `(path, size, sha256)`.
    config: Option<(PathBuf, u64, String)>,
    /// `(relative path, path, size, sha256)`, sorted by relative path.
    files: Vec<(String, PathBuf, u64, String)>,
}

impl LocalModel {
    fn read(folder: &Path, local_version: Option<u64>) -> Result<LocalModel, Error> {
        let folder_error = |reason: String| Error::ModelFolder {
            path: folder.to_path_buf(),
            reason,
        };
        let entries = std::fs::read_dir(folder).map_err(|source| Error::Io {
            path: folder.to_path_buf(),
            source,
        })?;
        let mut versions = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if let Some(version) = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.parse::<u64>().ok())
                && path.is_dir()
            {
                versions.push(version);
            }
        }
        let version = match local_version {
            Some(version) if versions.contains(&version) => version,
            Some(version) => {
                return Err(folder_error(format!("has no version folder {version}/")));
            }
            None => versions.into_iter().max().ok_or_else(|| {
                folder_error(
                    "has no numbered version folder (a model folder is config.pbtxt plus 1/model.onnx)"
                        .to_string(),
                )
            })?,
        };
        let version_folder = folder.join(version.to_string());
        let mut relatives = Vec::new();
        collect_files(&version_folder, "", &mut relatives)?;
        relatives.retain(|relative| relative != MANIFEST_FILE);
        relatives.sort();
        if relatives.is_empty() {
            return Err(folder_error(format!("version folder {version}/ is empty")));
        }
        let mut files = Vec::with_capacity(relatives.len());
        for relative in relatives {
            let path = version_folder.join(&relative);
            let (sha256, size) = sha256_file(&path)?;
            files.push((relative, path, size, sha256));
        }
        let config_path = folder.join("config.pbtxt");
        let config = if config_path.is_file() {
            let (sha256, size) = sha256_file(&config_path)?;
            Some((config_path, size, sha256))
        } else {
            None
        };
        Ok(LocalModel { config, files })
    }
}

/// Every file under `folder`, as `/`-separated paths relative to it; hidden files
/// (editor and OS droppings) are left out.
fn collect_files(folder: &Path, relative: &str, files: &mut Vec<String>) -> Result<(), Error> {
    let entries = std::fs::read_dir(folder).map_err(|source| Error::Io {
        path: folder.to_path_buf(),
        source,
    })?;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        let child_relative = if relative.is_empty() {
            name.clone()
        } else {
            format!("{relative}/{name}")
        };
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, &child_relative, files)?;
        } else if path.is_file() {
            files.push(child_relative);
        }
    }
    Ok(())
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Writes to `<name>.partial` and renames, so a crash never leaves a file that looks
/// complete.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let mut partial = path.as_os_str().to_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, bytes).map_err(io_error(&partial))?;
    std::fs::rename(&partial, path).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: u64, complete: bool) -> VersionInfo {
        VersionInfo {
            version,
            manifest: complete.then(|| Manifest {
                format: MANIFEST_FORMAT,
                model: "m".into(),
                version,
                created_unix_s: 0,
                files: Vec::new(),
            }),
            n_objects: 1,
            bytes: 1,
        }
    }

    fn check(existing: &[VersionInfo], asked: Option<u64>, expected: Result<(u64, bool), &str>) {
        let got = choose_version("m", existing, asked).map_err(|error| error.to_string());
        match (&got, &expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected),
            (Err(got), Err(fragment)) => assert!(got.contains(fragment), "{got}"),
            _ => panic!("{existing:?} {asked:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn versions_are_next_resumed_or_asked_for() {
        check(&[], None, Ok((1, false)));
        check(&[info(1, true), info(2, true)], None, Ok((3, false)));
        check(&[info(1, true), info(2, false)], None, Ok((2, true)));
        check(&[info(1, true)], Some(7), Ok((7, false)));
        check(&[info(1, true), info(7, false)], Some(7), Ok((7, true)));
        check(&[info(1, true)], Some(1), Err("already exists"));
        check(&[], Some(0), Err("start at 1"));
    }

    #[test]
    fn a_local_model_is_its_config_and_highest_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("m");
        for (relative, text) in [
            ("config.pbtxt", "name: \"m\""),
            ("1/model.onnx", "old"),
            ("2/model.onnx", "new"),
            ("2/extra/labels.txt", "car"),
            ("2/.DS_Store", "junk"),
        ] {
            let path = model.join(relative);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        let local = LocalModel::read(&model, None).expect("reads");
        let relatives: Vec<&str> = local.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(relatives, ["extra/labels.txt", "model.onnx"]);
        assert_eq!(local.files[1].3, crate::manifest::sha256_hex(b"new"));
        assert!(local.config.is_some());
        let first = LocalModel::read(&model, Some(1)).expect("reads");
        assert_eq!(first.files[0].3, crate::manifest::sha256_hex(b"old"));
        assert!(LocalModel::read(&model, Some(3)).is_err());
        assert!(LocalModel::read(&model.join("1"), None).is_err());
    }
}
