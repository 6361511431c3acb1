//! The model repository in Triton's layout, from a local folder or S3.
//!
//! ```text
//! <repository>/<model>/config.pbtxt
//! <repository>/<model>/<version>/model.onnx
//! ```
//! [`Repository::fetch`] reads one model: its configuration, and the versions that are
//! complete, as a local folder the backend loads from. An S3 repository
//! (`s3://bucket/prefix`, endpoint and keys from the AWS variables) is mirrored into a
//! local cache, version by version. A version in S3 counts only once its manifest
//! ([`VERSION_MANIFEST`]) is there, because the uploader writes it last: a version
//! being uploaded is never loaded half-written. Its files are fetched through
//! [`cardet_model_store::ModelStore::download_version`], which checks each one's size
//! and SHA-256 against the manifest, so a corrupted object is refused, not served.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::model_config::ModelConfig;

/// The file an uploader writes last into `<model>/<version>/`; S3 versions without it
/// are still being written and are skipped.
pub const VERSION_MANIFEST: &str = cardet_model_store::MANIFEST_FILE;

/// Where models come from.
#[derive(Clone, Debug)]
pub enum Repository {
    Local(PathBuf),
    S3(S3Repository),
}

#[derive(Clone, Debug)]
pub struct S3Repository {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Empty, or ending in `/`.
    prefix: String,
    cache: PathBuf,
    /// The same bucket and prefix, for verified version downloads.
    store: cardet_model_store::ModelStore,
}

/// One model as read from the repository: ready to load from `folder`.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchedModel {
    pub name: String,
    pub folder: PathBuf,
    pub config: ModelConfig,
    /// The text of `config.pbtxt` (empty without one), to notice changes.
    pub config_text: String,
    /// Complete versions, ascending, before the version policy is applied.
    pub versions: Vec<i64>,
}

impl Repository {
    /// A local folder, or `s3://bucket/prefix` (cached under `cache`).
    pub async fn open(location: &str, cache: &Path) -> Result<Repository, Error> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::RepositoryUri(location.to_string()));
            }
            let mut prefix = prefix.trim_matches('/').to_string();
            if !prefix.is_empty() {
                prefix.push('/');
            }
            let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            let s3_config = aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(true)
                .build();
            let client = aws_sdk_s3::Client::from_conf(s3_config);
            let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "AWS S3".into());
            Ok(Repository::S3(S3Repository {
                store: cardet_model_store::ModelStore::new(
                    client.clone(),
                    bucket,
                    &prefix,
                    &endpoint,
                ),
                client,
                bucket: bucket.to_string(),
                prefix,
                cache: cache.to_path_buf(),
            }))
        } else {
            let path = PathBuf::from(location);
            if !path.is_dir() {
                return Err(Error::RepositoryUri(location.to_string()));
            }
            Ok(Repository::Local(path))
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Repository::Local(path) => path.display().to_string(),
            Repository::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
        }
    }

    /// The model names: every sub-folder.
    pub async fn models(&self) -> Result<Vec<String>, Error> {
        match self {
            Repository::Local(root) => {
                let mut names = Vec::new();
                for entry in read_dir(root)? {
                    if entry.is_dir()
                        && let Some(name) = entry.file_name().and_then(|n| n.to_str())
                        && !name.starts_with('.')
                    {
                        names.push(name.to_string());
                    }
                }
                names.sort();
                Ok(names)
            }
            Repository::S3(s3) => {
                let mut names = s3.list_folders(&s3.prefix).await?;
                names.sort();
                Ok(names)
            }
        }
    }

    /// Reads a model's configuration and complete versions; S3 versions the policy
    /// selects are downloaded into the cache.
    pub async fn fetch(&self, name: &str) -> Result<FetchedModel, Error> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(Error::Model {
                model: name.to_string(),
                message: "not a model name".into(),
            });
        }
        match self {
            Repository::Local(root) => fetch_local(&root.join(name), name, false),
            Repository::S3(s3) => s3.fetch(name).await,
        }
    }
}

/// Reads a model folder; `manifests_required` skips versions without [`VERSION_MANIFEST`].
pub fn fetch_local(
    folder: &Path,
    name: &str,
    manifests_required: bool,
) -> Result<FetchedModel, Error> {
    if !folder.is_dir() {
        return Err(Error::Model {
            model: name.to_string(),
            message: format!("no folder {}", folder.display()),
        });
    }
    let config_path = folder.join("config.pbtxt");
    let (config, config_text) = if config_path.exists() {
        let text = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
            path: config_path.clone(),
            source,
        })?;
        let config = ModelConfig::from_text(&text, name).map_err(|source| Error::Config {
            path: config_path.clone(),
            source,
        })?;
        (config, text)
    } else {
        (ModelConfig::empty(name), String::new())
    };
    let mut versions = Vec::new();
    for entry in read_dir(folder)? {
        let Some(version) = entry
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        let complete = entry.join(&config.default_model_filename).is_file()
            && (!manifests_required || entry.join(VERSION_MANIFEST).is_file());
        if version > 0 && complete {
            versions.push(version);
        }
    }
    versions.sort_unstable();
    Ok(FetchedModel {
        name: name.to_string(),
        folder: folder.to_path_buf(),
        config,
        config_text,
        versions,
    })
}

fn read_dir(folder: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = std::fs::read_dir(folder).map_err(|source| Error::Io {
        path: folder.to_path_buf(),
        source,
    })?;
    Ok(entries.filter_map(Result::ok).map(|e| e.path()).collect())
}

impl S3Repository {
    fn error(&self, key: &str, error: impl std::fmt::Display) -> Error {
        Error::S3 {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            message: error.to_string(),
        }
    }

    /// Immediate "sub-folders" under a prefix.
    async fn list_folders(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let mut names = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| self.error(prefix, aws_sdk_s3::error::DisplayErrorContext(e)))?;
            for common in page.common_prefixes() {
                if let Some(name) = common
                    .prefix()
                    .and_then(|p| p.strip_prefix(prefix))
                    .map(|p| p.trim_end_matches('/'))
                    .filter(|p| !p.is_empty())
                {
                    names.push(name.to_string());
                }
            }
        }
        Ok(names)
    }

    async fn fetch(&self, name: &str) -> Result<FetchedModel, Error> {
        let model_prefix = format!("{}{name}/", self.prefix);
        let objects = self
            .store
            .list_objects(&model_prefix)
            .await
            .map_err(|error| self.error(&model_prefix, error))?;
        if objects.is_empty() {
            return Err(Error::Model {
                model: name.to_string(),
                message: format!("nothing under s3://{}/{model_prefix}", self.bucket),
            });
        }
        let folder = self.cache.join(name);
        std::fs::create_dir_all(&folder).map_err(|source| Error::Io {
            path: folder.clone(),
            source,
        })?;
        let config_key = format!("{model_prefix}config.pbtxt");
        let config_path = folder.join("config.pbtxt");
        let has_config = objects.iter().any(|(key, _)| *key == config_key)
            && self
                .store
                .download_config(name, &config_path)
                .await
                .map_err(|error| self.error(&config_key, error))?;
        if !has_config && config_path.exists() {
            let _ = std::fs::remove_file(&config_path);
        }
        // The versions whose manifest is there; read the config to apply the policy.
        let complete: Vec<i64> = objects
            .iter()
            .filter_map(|(key, _)| {
                let rest = key.strip_prefix(&model_prefix)?;
                let (version, file) = rest.split_once('/')?;
                (file == VERSION_MANIFEST)
                    .then(|| version.parse::<i64>().ok())
                    .flatten()
            })
            .collect();
        let local = fetch_local(&folder, name, false)?;
        let wanted = local.config.version_policy.select(&complete);
        for version in &wanted {
            let version_folder = folder.join(version.to_string());
            if version_folder.join(VERSION_MANIFEST).is_file() {
                continue;
            }
            let Ok(store_version) = u64::try_from(*version) else {
                continue;
            };
            // Only the files the manifest lists, each checked against it; the manifest
            // is written into the cache last, so a cached version with one is whole.
            self.store
                .download_version(name, store_version, &version_folder)
                .await
                .map_err(|error| self.error(&format!("{model_prefix}{version}/"), error))?;
        }
        let mut fetched = fetch_local(&folder, name, true)?;
        fetched
            .versions
            .retain(|version| complete.contains(version));
        Ok(fetched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(layout: &[&str], expected_versions: &[i64]) {
        let dir = tempfile::tempdir().expect("tempdir");
        for file in layout {
            let path = dir.path().join("m").join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, b"x").expect("write");
        }
        let fetched = fetch_local(&dir.path().join("m"), "m", false).expect("fetch");
        assert_eq!(fetched.versions, expected_versions, "{layout:?}");
    }

    #[test]
    fn versions_are_numeric_folders_holding_the_model_file() {
        check(
            &[
                "1/model.onnx",
                "3/model.onnx",
                "2/other.txt",
                "x/model.onnx",
            ],
            &[1, 3],
        );
        check(&["10/model.onnx", "9/model.onnx"], &[9, 10]);
        check(&["0/model.onnx", "-1/model.onnx"], &[]);
    }

    #[tokio::test]
    async fn repositories_open_folders_and_refuse_other_things() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repository = Repository::open(&dir.path().display().to_string(), dir.path())
            .await
            .expect("opens");
        assert!(repository.models().await.expect("models").is_empty());
        assert!(matches!(
            Repository::open("/nonexistent/repo", dir.path()).await,
            Err(Error::RepositoryUri(_))
        ));
        assert!(matches!(
            Repository::open("s3:///prefix", dir.path()).await,
            Err(Error::RepositoryUri(_))
        ));
        assert!(repository.fetch("../etc").await.is_err());
    }
}
