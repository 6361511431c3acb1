//! Fetching a model folder from MLflow before an upload: a registered model by
//! alias or version, or a run's artifacts, through the tracking server's REST API
//! (`/api/2.0/mlflow/...`) and its artifact proxy (`/api/2.0/mlflow-artifacts/...`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::Error;
use crate::store::write_atomically;

/// What `--from-mlflow` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MlflowModelUri {
    /// `models:/NAME@ALIAS`
    Alias { name: String, alias: String },
    /// `models:/NAME/VERSION`
    Version { name: String, version: String },
    /// `runs:/RUN_ID/PATH`, or a bare run id (its whole artifact folder).
    Run { run_id: String, path: String },
}

impl MlflowModelUri {
    pub fn parse(text: &str) -> Result<MlflowModelUri, Error> {
        let invalid = || {
            Error::InvalidArgument(format!(
                "{text:?} is not models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a run id"
            ))
        };
        if let Some(rest) = text.strip_prefix("models:/") {
            if let Some((name, alias)) = rest.split_once('@') {
                if name.is_empty() || alias.is_empty() {
                    return Err(invalid());
                }
                return Ok(MlflowModelUri::Alias {
                    name: name.to_string(),
                    alias: alias.to_string(),
                });
            }
            let (name, version) = rest.rsplit_once('/').ok_or_else(invalid)?;
            if name.is_empty() || version.parse::<u64>().is_err() {
                return Err(invalid());
            }
            return Ok(MlflowModelUri::Version {
                name: name.to_string(),
                version: version.to_string(),
            });
        }
        if let Some(rest) = text.strip_prefix("runs:/") {
            let (run_id, path) = rest.split_once('/').unwrap_or((rest, ""));
            if run_id.is_empty() {
                return Err(invalid());
            }
            return Ok(MlflowModelUri::Run {
                run_id: run_id.to_string(),
                path: path.trim_matches('/').to_string(),
            });
        }
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Ok(MlflowModelUri::Run {
                run_id: text.to_string(),
                path: String::new(),
            });
        }
        Err(invalid())
    }

    /// The registered model's name, a sensible default model name.
    pub fn registered_name(&self) -> Option<&str> {
        match self {
            MlflowModelUri::Alias { name, .. } | MlflowModelUri::Version { name, .. } => Some(name),
            MlflowModelUri::Run { .. } => None,
        }
    }
}

/// Downloads the model folder `uri` names into `destination` and returns it. A folder
/// without numbered version sub-folders (a bare `model.onnx`, say) is laid out as
/// version 1, with `config.pbtxt` kept beside it.
pub async fn download_model(
    tracking_uri: &str,
    uri: &MlflowModelUri,
    destination: &Path,
) -> Result<PathBuf, Error> {
    let client = Mlflow {
        base: tracking_uri.trim_end_matches('/').to_string(),
        http: reqwest::Client::new(),
    };
    let artifact_path = client.artifact_path(uri).await?;
    let mut files = Vec::new();
    client
        .list_recursive(&artifact_path, "", &mut files)
        .await?;
    if files.is_empty() {
        return Err(client.error(format!("no artifacts under {artifact_path}")));
    }
    let has_versions = files.iter().any(|relative| {
        relative
            .split_once('/')
            .is_some_and(|(first, _)| first.parse::<u64>().is_ok())
    });
    for relative in &files {
        let local_relative = if has_versions || relative == "config.pbtxt" {
            relative.clone()
        } else {
            format!("1/{relative}")
        };
        let bytes = client
            .get_bytes(&format!(
                "/api/2.0/mlflow-artifacts/artifacts/{artifact_path}/{relative}"
            ))
            .await?;
        write_atomically(&destination.join(local_relative), &bytes)?;
    }
    Ok(destination.to_path_buf())
}

struct Mlflow {
    base: String,
    http: reqwest::Client,
}

impl Mlflow {
    fn error(&self, message: String) -> Error {
        Error::Mlflow {
            url: self.base.clone(),
            message,
        }
    }

    async fn get_bytes(&self, path_and_query: &str) -> Result<Vec<u8>, Error> {
        let url = format!("{}{path_and_query}", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|error| self.error(format!("GET {path_and_query}: {error}")))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.error(format!("GET {path_and_query}: {error}")))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|body| body["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(self.error(format!("GET {path_and_query}: {status}: {message}")));
        }
        Ok(bytes.to_vec())
    }

    async fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, Error> {
        let query: Vec<String> = query
            .iter()
            .map(|(key, value)| format!("{key}={}", percent_encode(value)))
            .collect();
        let bytes = self
            .get_bytes(&format!("{path}?{}", query.join("&")))
            .await?;
        serde_json::from_slice(&bytes).map_err(|error| self.error(format!("{path}: {error}")))
    }

    /// The artifact path (relative to the proxy's root) of the model folder.
    async fn artifact_path(&self, uri: &MlflowModelUri) -> Result<String, Error> {
        let source = match uri {
            MlflowModelUri::Alias { name, alias } => {
                let body = self
                    .get_json(
                        "/api/2.0/mlflow/registered-models/alias",
                        &[("name", name), ("alias", alias)],
                    )
                    .await?;
                model_version_source(&body, || format!("models:/{name}@{alias}"))
                    .map_err(|message| self.error(message))?
            }
            MlflowModelUri::Version { name, version } => {
                let body = self
                    .get_json(
                        "/api/2.0/mlflow/model-versions/get",
                        &[("name", name), ("version", version)],
                    )
                    .await?;
                model_version_source(&body, || format!("models:/{name}/{version}"))
                    .map_err(|message| self.error(message))?
            }
            MlflowModelUri::Run { run_id, path } => format!("runs:/{run_id}/{path}"),
        };
        self.resolve_source(&source).await
    }

    /// `mlflow-artifacts:` locations directly; `runs:/` through the run's artifact
    /// root; `models:/m-...` (MLflow 3 logged models) through the logged model's.
    async fn resolve_source(&self, source: &str) -> Result<String, Error> {
        if let Some(path) = strip_artifact_scheme(source) {
            return Ok(path);
        }
        if let Some(rest) = source.strip_prefix("runs:/") {
            let (run_id, path) = rest.split_once('/').unwrap_or((rest, ""));
            let body = self
                .get_json("/api/2.0/mlflow/runs/get", &[("run_id", run_id)])
                .await?;
            let root = body["run"]["info"]["artifact_uri"]
                .as_str()
                .and_then(strip_artifact_scheme)
                .ok_or_else(|| {
                    self.error(format!(
                        "run {run_id}'s artifacts are not served by the artifact proxy (mlflow-artifacts:/)"
                    ))
                })?;
            let path = path.trim_matches('/');
            return Ok(if path.is_empty() {
                root
            } else {
                format!("{root}/{path}")
            });
        }
        if let Some(model_id) = source.strip_prefix("models:/") {
            let body = self
                .get_json(&format!("/api/2.0/mlflow/logged-models/{model_id}"), &[])
                .await?;
            return body["model"]["info"]["artifact_uri"]
                .as_str()
                .and_then(strip_artifact_scheme)
                .ok_or_else(|| {
                    self.error(format!(
                        "logged model {model_id} has no proxied artifact location"
                    ))
                });
        }
        Err(self.error(format!(
            "model source {source:?} is not one this client can fetch"
        )))
    }

    /// Every file under `root/relative`, as paths relative to `root`.
    async fn list_recursive(
        &self,
        root: &str,
        relative: &str,
        files: &mut Vec<String>,
    ) -> Result<(), Error> {
        let listed = if relative.is_empty() {
            root.to_string()
        } else {
            format!("{root}/{relative}")
        };
        let body = self
            .get_json("/api/2.0/mlflow-artifacts/artifacts", &[("path", &listed)])
            .await?;
        for entry in body["files"].as_array().into_iter().flatten() {
            let Some(name) = entry["path"].as_str() else {
                continue;
            };
            // The proxy answers basenames; older servers answered full paths.
            let name = name.rsplit('/').next().unwrap_or(name);
            if !crate::manifest::is_safe_relative_path(name) {
                return Err(self.error(format!("artifact name {name:?} under {listed}")));
            }
            let child = if relative.is_empty() {
                name.to_string()
            } else {
                format!("{relative}/{name}")
            };
            if entry["is_dir"].as_bool().unwrap_or(false) {
                Box::pin(self.list_recursive(root, &child, files)).await?;
            } else {
                files.push(child);
            }
        }
        Ok(())
    }
}

fn model_version_source(body: &Value, uri: impl Fn() -> String) -> Result<String, String> {
    let version = &body["model_version"];
    if let Some(source) = version["source"].as_str().filter(|s| !s.is_empty()) {
        return Ok(source.to_string());
    }
    if let Some(run_id) = version["run_id"].as_str().filter(|s| !s.is_empty()) {
        return Ok(format!("runs:/{run_id}/"));
    }
    Err(format!("{} has neither a source nor a run id", uri()))
}

/// `mlflow-artifacts:/x/y` and `mlflow-artifacts://host:port/x/y` to `x/y`.
fn strip_artifact_scheme(location: &str) -> Option<String> {
    let rest = location.strip_prefix("mlflow-artifacts:")?;
    let path = match rest.strip_prefix("//") {
        Some(with_host) => with_host.split_once('/').map_or("", |(_, path)| path),
        None => rest,
    };
    Some(path.trim_matches('/').to_string())
}

fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<MlflowModelUri>) {
        assert_eq!(MlflowModelUri::parse(text).ok(), expected, "{text}");
    }

    #[test]
    fn model_uris_parse() {
        check(
            "models:/car@champion",
            Some(MlflowModelUri::Alias {
                name: "car".into(),
                alias: "champion".into(),
            }),
        );
        check(
            "models:/car/3",
            Some(MlflowModelUri::Version {
                name: "car".into(),
                version: "3".into(),
            }),
        );
        check(
            "runs:/abc123/model_repo/car",
            Some(MlflowModelUri::Run {
                run_id: "abc123".into(),
                path: "model_repo/car".into(),
            }),
        );
        check(
            "0123abcd",
            Some(MlflowModelUri::Run {
                run_id: "0123abcd".into(),
                path: String::new(),
            }),
        );
        check("models:/car", None);
        check("models:/@x", None);
        check("s3://bucket/x", None);
    }

    #[test]
    fn artifact_locations_lose_their_scheme_and_host() {
        assert_eq!(
            strip_artifact_scheme("mlflow-artifacts:/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(
            strip_artifact_scheme("mlflow-artifacts://127.0.0.1:5000/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(strip_artifact_scheme("s3://b/1"), None);
    }
}
