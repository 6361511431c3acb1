use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use reqwest::blocking::{Body, Client, RequestBuilder, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::types::{
    FileInfo, Metric, ModelVersion, Param, Run, RunInfo, RunStatus, Tag, check_metric_key,
    check_param, check_tag, limits, sanitize_key,
};
use crate::wire;

/// Where MLflow is and how to log in, with MLflow's own variable names.
#[derive(Clone)]
pub struct TrackingConfig {
    /// `http://` or `https://` base of the tracking server (a path prefix is kept).
    pub tracking_uri: String,
    pub auth: Auth,
    /// Limit for one JSON request; artifact transfers have none, only the connect timeout.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

/// How requests authenticate, as MLflow's Python client does it: basic auth when
/// both a username and a password are set, else a bearer token when one is set.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
}

impl std::fmt::Debug for Auth {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Auth::Bearer { .. } => f.write_str("Bearer(***)"),
        }
    }
}

impl std::fmt::Debug for TrackingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackingConfig")
            .field("tracking_uri", &self.tracking_uri)
            .field("auth", &self.auth)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// The stack's MLflow, used when `MLFLOW_TRACKING_URI` is not set.
pub const DEFAULT_TRACKING_URI: &str = "http://127.0.0.1:5000";

impl TrackingConfig {
    /// A server without authentication.
    pub fn new(tracking_uri: impl Into<String>) -> TrackingConfig {
        TrackingConfig {
            tracking_uri: tracking_uri.into(),
            auth: Auth::None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// `MLFLOW_TRACKING_URI` (else [`DEFAULT_TRACKING_URI`]) with the credentials of
    /// `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` or `MLFLOW_TRACKING_TOKEN`.
    pub fn from_env() -> TrackingConfig {
        let uri = env_var("MLFLOW_TRACKING_URI").unwrap_or_else(|| DEFAULT_TRACKING_URI.into());
        TrackingConfig::new(uri).with_auth_from_env()
    }

    /// Takes the credentials from MLflow's variables, keeping the URI.
    pub fn with_auth_from_env(mut self) -> TrackingConfig {
        self.auth = match (
            env_var("MLFLOW_TRACKING_USERNAME"),
            env_var("MLFLOW_TRACKING_PASSWORD"),
            env_var("MLFLOW_TRACKING_TOKEN"),
        ) {
            (Some(username), Some(password), _) => Auth::Basic { username, password },
            (_, _, Some(token)) => Auth::Bearer { token },
            _ => Auth::None,
        };
        self
    }
}

fn env_var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|value| !value.is_empty())
}

/// A blocking client for MLflow's REST API 2.0, its artifact proxy and model registry.
///
/// Every method is one or a few HTTP requests; nothing is cached or retried here
/// (the [`crate::RunLogger`] does the retrying).
#[derive(Clone, Debug)]
pub struct MlflowClient {
    http: Client,
    base: Url,
    config: TrackingConfig,
}

/// What [`MlflowClient::upload_artifacts`] sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadReport {
    pub files: u64,
    pub bytes: u64,
}

/// Which way a metric improves, for [`MlflowClient::promote_if_better`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricGoal {
    Maximize,
    Minimize,
}

/// What [`MlflowClient::promote_if_better`] decided, and on which numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Promotion {
    pub candidate_version: String,
    pub candidate_value: f64,
    /// The version that held the alias before, with its run's metric (None when its run lacks it).
    pub previous_champion: Option<(String, Option<f64>)>,
    /// True when the alias now points at the candidate.
    pub promoted: bool,
}

impl MlflowClient {
    pub fn new(config: &TrackingConfig) -> Result<MlflowClient, Error> {
        let bad = |reason: &str| Error::BadTrackingUri {
            uri: config.tracking_uri.clone(),
            reason: reason.to_string(),
        };
        let base = Url::parse(&config.tracking_uri).map_err(|err| bad(&err.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad(
                "only http:// and https:// servers are supported (a local ./mlruns store is not)",
            ));
        }
        if base.cannot_be_a_base() {
            return Err(bad("it cannot be a base URL"));
        }
        let http = Client::builder()
            .connect_timeout(config.connect_timeout)
            // Artifact uploads of checkpoints take as long as they take; JSON calls
            // set their own limit per request.
            .timeout(None::<Duration>)
            .build()
            .map_err(|err| bad(&err.to_string()))?;
        Ok(MlflowClient {
            http,
            base,
            config: config.clone(),
        })
    }

    pub fn from_env() -> Result<MlflowClient, Error> {
        MlflowClient::new(&TrackingConfig::from_env())
    }

    pub fn tracking_uri(&self) -> &str {
        &self.config.tracking_uri
    }

    // ---- experiments and runs ----

    /// The id of the experiment called `name`, created when missing (and restored when deleted).
    pub fn get_or_create_experiment(&self, name: &str) -> Result<String, Error> {
        match self.get_json::<wire::GetExperimentResponse>(
            "experiments/get-by-name",
            &[("experiment_name", name)],
        ) {
            Ok(found) => {
                if found.experiment.lifecycle_stage == "deleted" {
                    let id = found.experiment.experiment_id;
                    self.post_json::<serde_json::Value>(
                        "experiments/restore",
                        &serde_json::json!({ "experiment_id": id }),
                    )?;
                    return Ok(id);
                }
                Ok(found.experiment.experiment_id)
            }
            Err(err) if err.error_code() == Some("RESOURCE_DOES_NOT_EXIST") => {
                match self.post_json::<wire::CreateExperimentResponse>(
                    "experiments/create",
                    &serde_json::json!({ "name": name }),
                ) {
                    Ok(created) => Ok(created.experiment_id),
                    // Another process created it between our two calls.
                    Err(err) if err.error_code() == Some("RESOURCE_ALREADY_EXISTS") => self
                        .get_json::<wire::GetExperimentResponse>(
                            "experiments/get-by-name",
                            &[("experiment_name", name)],
                        )
                        .map(|found| found.experiment.experiment_id),
                    Err(err) => Err(err),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Creates a run; `start_time_ms` is kept as given, so a run created late by
    /// a sync still shows when training really started.
    pub fn create_run(
        &self,
        experiment_id: &str,
        run_name: Option<&str>,
        start_time_ms: i64,
        tags: &[Tag],
    ) -> Result<RunInfo, Error> {
        for tag in tags {
            check_tag(tag)?;
        }
        let request = wire::CreateRunRequest {
            experiment_id,
            run_name,
            start_time: start_time_ms,
            tags: tags.iter().map(|t| key_value(&t.key, &t.value)).collect(),
        };
        let created: wire::RunResponse = self.post_json("runs/create", &request)?;
        Ok(created.run.info.into())
    }

    pub fn get_run(&self, run_id: &str) -> Result<Run, Error> {
        let found: wire::RunResponse = self.get_json("runs/get", &[("run_id", run_id)])?;
        Ok(found.run.into())
    }

    /// Runs of an experiment whose tag `key` equals `value` (MLflow's filter syntax, quoted for any key).
    pub fn search_runs_by_tag(
        &self,
        experiment_id: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<Run>, Error> {
        let filter = format!(
            "tags.`{}` = '{}'",
            key.replace('`', ""),
            value.replace('\'', "\\'")
        );
        let found: wire::SearchRunsResponse = self.post_json(
            "runs/search",
            &serde_json::json!({
                "experiment_ids": [experiment_id],
                "filter": filter,
                "max_results": 10,
            }),
        )?;
        Ok(found.runs.into_iter().map(Run::from).collect())
    }

    /// Logs metrics, params and tags in as few `log-batch` calls as MLflow's
    /// limits allow (1000 metrics, 100 params, 100 tags, 1000 entries, 1 MB each).
    ///
    /// Keys are sent as given: [`sanitize_key`] them first where they come from
    /// outside. Values over MLflow's limits are refused before anything is sent.
    pub fn log_batch(
        &self,
        run_id: &str,
        metrics: &[Metric],
        params: &[Param],
        tags: &[Tag],
    ) -> Result<(), Error> {
        for param in params {
            check_param(param)?;
        }
        for tag in tags {
            check_tag(tag)?;
        }
        for metric in metrics {
            check_metric_key(&metric.key)?;
        }
        let (mut metrics, mut params, mut tags) = (metrics, params, tags);
        while !(metrics.is_empty() && params.is_empty() && tags.is_empty()) {
            let mut budget = BatchBudget::default();
            let n_params = budget.take(params, limits::PARAMS_PER_BATCH, |p| {
                p.key.len() + p.value.len()
            });
            let n_tags = budget.take(tags, limits::TAGS_PER_BATCH, |t| {
                t.key.len() + t.value.len()
            });
            let n_metrics = budget.take(metrics, limits::METRICS_PER_BATCH, |m| m.key.len());
            let request = wire::LogBatchRequest {
                run_id,
                metrics: metrics[..n_metrics].iter().map(Into::into).collect(),
                params: (params[..n_params].iter())
                    .map(|p| key_value(&p.key, &p.value))
                    .collect(),
                tags: (tags[..n_tags].iter())
                    .map(|t| key_value(&t.key, &t.value))
                    .collect(),
            };
            self.post_json::<serde_json::Value>("runs/log-batch", &request)?;
            metrics = &metrics[n_metrics..];
            params = &params[n_params..];
            tags = &tags[n_tags..];
        }
        Ok(())
    }

    /// Every logged point of one metric, in the server's order.
    pub fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>, Error> {
        let mut points = Vec::new();
        let mut page_token = String::new();
        loop {
            let mut query = vec![
                ("run_id", run_id),
                ("metric_key", key),
                ("max_results", "25000"),
            ];
            if !page_token.is_empty() {
                query.push(("page_token", &page_token));
            }
            let page: wire::MetricHistoryResponse = self.get_json("metrics/get-history", &query)?;
            points.extend(page.metrics.into_iter().map(Metric::from));
            match page.next_page_token.filter(|token| !token.is_empty()) {
                Some(token) => page_token = token,
                None => return Ok(points),
            }
        }
    }

    /// Sets a run's status; `end_time_ms` is usually given for FINISHED, FAILED and KILLED.
    pub fn update_run(
        &self,
        run_id: &str,
        status: RunStatus,
        end_time_ms: Option<i64>,
    ) -> Result<(), Error> {
        let request = wire::UpdateRunRequest {
            run_id,
            status: status.as_wire(),
            end_time: end_time_ms,
        };
        self.post_json::<serde_json::Value>("runs/update", &request)
            .map(drop)
    }

    // ---- artifacts, through the proxy ----

    /// Uploads a file to `<artifact_dir>/<file name>`, or a folder's contents
    /// (recursively) under `<artifact_dir>`, as MLflow's `log_artifact` and
    /// `log_artifacts` do. Files stream from disk; nothing is held in memory.
    pub fn upload_artifacts(
        &self,
        run: &RunInfo,
        local_path: &Path,
        artifact_dir: Option<&str>,
    ) -> Result<UploadReport, Error> {
        let root = proxied_artifact_root(run)?;
        let metadata = std::fs::metadata(local_path).map_err(Error::io(local_path))?;
        let mut report = UploadReport::default();
        let dir_segments = split_artifact_path(artifact_dir.unwrap_or(""));
        if metadata.is_dir() {
            let mut files = Vec::new();
            collect_files(local_path, &mut files)?;
            files.sort();
            for file in files {
                let relative = file.strip_prefix(local_path).unwrap_or(&file);
                let mut segments = dir_segments.clone();
                segments.extend(
                    relative
                        .iter()
                        .map(|part| part.to_string_lossy().into_owned()),
                );
                report.bytes += self.put_artifact_file(&root, &segments, &file)?;
                report.files += 1;
            }
        } else {
            let file_name = local_path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .ok_or_else(|| Error::Io {
                    path: local_path.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
                })?;
            let mut segments = dir_segments;
            segments.push(file_name);
            report.bytes += self.put_artifact_file(&root, &segments, local_path)?;
            report.files += 1;
        }
        Ok(report)
    }

    /// The entries directly under `path` (the run's artifact root when None).
    pub fn list_artifacts(&self, run_id: &str, path: Option<&str>) -> Result<Vec<FileInfo>, Error> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let mut query = vec![("run_id", run_id)];
            if let Some(path) = path {
                query.push(("path", path));
            }
            if !page_token.is_empty() {
                query.push(("page_token", &page_token));
            }
            let page: wire::ListArtifactsResponse = self.get_json("artifacts/list", &query)?;
            entries.extend(page.files.into_iter().map(FileInfo::from));
            match page.next_page_token.filter(|token| !token.is_empty()) {
                Some(token) => page_token = token,
                None => return Ok(entries),
            }
        }
    }

    /// Downloads a file or a folder of the run's artifacts to `dest_dir/<artifact_path>`
    /// and returns that local path. Files are written to a `.part` file, then renamed.
    pub fn download_artifacts(
        &self,
        run: &RunInfo,
        artifact_path: &str,
        dest_dir: &Path,
    ) -> Result<PathBuf, Error> {
        let root = proxied_artifact_root(run)?;
        let segments = split_artifact_path(artifact_path);
        // Paths come back from the server's listing: none may climb out of dest_dir.
        if segments.iter().any(|segment| segment == "..") {
            return Err(Error::BadResponse {
                endpoint: "GET artifacts/list".into(),
                reason: format!("artifact path {artifact_path:?} leaves the download folder"),
            });
        }
        let local = segments
            .iter()
            .fold(dest_dir.to_path_buf(), |p, s| p.join(s));
        let children = self.list_artifacts(&run.run_id, Some(&segments.join("/")))?;
        // A file's listing is empty; a folder lists its entries (an empty folder
        // has no trace in the store at all).
        if children.is_empty() {
            self.get_artifact_file(&root, &segments, &local)?;
            return Ok(local);
        }
        std::fs::create_dir_all(&local).map_err(Error::io(&local))?;
        for child in children {
            self.download_artifacts(run, &child.path, dest_dir)?;
        }
        Ok(local)
    }

    fn put_artifact_file(
        &self,
        root: &[String],
        segments: &[String],
        local: &Path,
    ) -> Result<u64, Error> {
        let file = File::open(local).map_err(Error::io(local))?;
        let len = file.metadata().map_err(Error::io(local))?.len();
        let url = self.artifact_url(root, segments);
        let label = format!("PUT mlflow-artifacts/{}", segments.join("/"));
        let request = self.http.put(url).body(Body::sized(file, len));
        self.send(&label, request)?;
        Ok(len)
    }

    fn get_artifact_file(
        &self,
        root: &[String],
        segments: &[String],
        local: &Path,
    ) -> Result<(), Error> {
        let url = self.artifact_url(root, segments);
        let label = format!("GET mlflow-artifacts/{}", segments.join("/"));
        let mut response = self.send(&label, self.http.get(url))?;
        if let Some(parent) = local.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
        }
        let partial = local.with_extension(match local.extension() {
            Some(ext) => format!("{}.part", ext.to_string_lossy()),
            None => "part".to_string(),
        });
        let mut out = File::create(&partial).map_err(Error::io(&partial))?;
        response
            .copy_to(&mut out)
            .map_err(|source| Error::Unreachable {
                uri: self.config.tracking_uri.clone(),
                endpoint: label.clone(),
                source,
            })?;
        out.sync_all().map_err(Error::io(&partial))?;
        std::fs::rename(&partial, local).map_err(Error::io(local))
    }

    fn artifact_url(&self, root: &[String], segments: &[String]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["api", "2.0", "mlflow-artifacts", "artifacts"])
                .extend(root)
                .extend(segments);
        }
        url
    }

    // ---- model registry ----

    /// Creates the registered model unless it exists.
    pub fn ensure_registered_model(&self, name: &str) -> Result<(), Error> {
        match self.post_json::<serde_json::Value>(
            "registered-models/create",
            &serde_json::json!({ "name": name }),
        ) {
            Ok(_) => Ok(()),
            Err(err) if err.error_code() == Some("RESOURCE_ALREADY_EXISTS") => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Registers `<run's artifact_uri>/<artifact_path>` as a new version of `model_name`.
    pub fn create_model_version(
        &self,
        model_name: &str,
        run: &RunInfo,
        artifact_path: &str,
    ) -> Result<ModelVersion, Error> {
        let source = format!(
            "{}/{}",
            run.artifact_uri.trim_end_matches('/'),
            artifact_path.trim_matches('/')
        );
        let created: wire::ModelVersionResponse = self.post_json(
            "model-versions/create",
            &serde_json::json!({ "name": model_name, "source": source, "run_id": run.run_id }),
        )?;
        Ok(created.model_version.into())
    }

    pub fn get_model_version(
        &self,
        model_name: &str,
        version: &str,
    ) -> Result<ModelVersion, Error> {
        let found: wire::ModelVersionResponse = self.get_json(
            "model-versions/get",
            &[("name", model_name), ("version", version)],
        )?;
        Ok(found.model_version.into())
    }

    /// Points `alias` (e.g. `champion`) at `version`, moving it from any other version.
    pub fn set_alias(&self, model_name: &str, alias: &str, version: &str) -> Result<(), Error> {
        self.post_json::<serde_json::Value>(
            "registered-models/alias",
            &serde_json::json!({ "name": model_name, "alias": alias, "version": version }),
        )
        .map(drop)
    }

    /// The version `alias` points at, None when the alias is not set.
    ///
    /// Read from the registered model's alias list: MLflow 3.17.2 answers a
    /// missing alias on `registered-models/alias` with `INVALID_PARAMETER_VALUE`,
    /// the same code as a malformed request, so that endpoint cannot tell "unset" apart.
    pub fn get_alias(&self, model_name: &str, alias: &str) -> Result<Option<ModelVersion>, Error> {
        let model: wire::RegisteredModelResponse =
            self.get_json("registered-models/get", &[("name", model_name)])?;
        match model
            .registered_model
            .aliases
            .into_iter()
            .find(|a| a.alias == alias)
        {
            Some(found) => self.get_model_version(model_name, &found.version).map(Some),
            None => Ok(None),
        }
    }

    /// Moves `alias` to `candidate_version` only if its run's `metric` beats the
    /// current holder's run metric (strictly; a tie keeps the champion).
    ///
    /// The metric name is [`sanitize_key`]-ed the way the logger stored it, so
    /// `metrics/mAP50-95(B)` finds `metrics/mAP50-95B`. The alias also moves when
    /// nobody holds it or when the holder's run never logged the metric.
    pub fn promote_if_better(
        &self,
        model_name: &str,
        alias: &str,
        candidate_version: &str,
        metric: &str,
        goal: MetricGoal,
    ) -> Result<Promotion, Error> {
        let metric = sanitize_key(metric);
        let candidate = self.get_model_version(model_name, candidate_version)?;
        let candidate_value = self
            .get_run(&candidate.run_id)?
            .metric(&metric)
            .ok_or_else(|| Error::MissingMetric {
                run_id: candidate.run_id.clone(),
                metric: metric.to_string(),
            })?;
        let previous = self.get_alias(model_name, alias)?;
        let previous_champion = match &previous {
            Some(champion) => {
                let value = self.get_run(&champion.run_id)?.metric(&metric);
                Some((champion.version.clone(), value))
            }
            None => None,
        };
        let better = match &previous_champion {
            Some((version, _)) if version == candidate_version => false,
            Some((_, Some(champion_value))) => match goal {
                MetricGoal::Maximize => candidate_value > *champion_value,
                MetricGoal::Minimize => candidate_value < *champion_value,
            },
            // No champion, or one whose run never logged the metric: nothing to beat.
            Some((_, None)) | None => !candidate_value.is_nan(),
        };
        if better {
            self.set_alias(model_name, alias, candidate_version)?;
        }
        Ok(Promotion {
            candidate_version: candidate_version.to_string(),
            candidate_value,
            previous_champion,
            promoted: better,
        })
    }

    // ---- plumbing ----

    fn api_url(&self, endpoint: &str) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["api", "2.0", "mlflow"])
                .extend(endpoint.split('/'));
        }
        url
    }

    fn get_json<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        query: &[(&str, &str)],
    ) -> Result<T, Error> {
        let request = self
            .http
            .get(self.api_url(endpoint))
            .query(query)
            .timeout(self.config.request_timeout);
        let label = format!("GET {endpoint}");
        read_json(&label, self.send(&label, request)?)
    }

    fn post_json<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: &impl Serialize,
    ) -> Result<T, Error> {
        let request = self
            .http
            .post(self.api_url(endpoint))
            .json(body)
            .timeout(self.config.request_timeout);
        let label = format!("POST {endpoint}");
        read_json(&label, self.send(&label, request)?)
    }

    /// Authenticates, sends, and turns a non-2xx answer into [`Error::Api`] or [`Error::Http`].
    fn send(&self, label: &str, request: RequestBuilder) -> Result<Response, Error> {
        let request = match &self.config.auth {
            Auth::None => request,
            Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
            Auth::Bearer { token } => request.bearer_auth(token),
        };
        let response = request.send().map_err(|source| Error::Unreachable {
            uri: self.config.tracking_uri.clone(),
            endpoint: label.to_string(),
            source,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().unwrap_or_default();
        Err(match serde_json::from_str::<wire::ErrorBody>(&body) {
            Ok(error) => Error::Api {
                endpoint: label.to_string(),
                status: status.as_u16(),
                error_code: error.error_code,
                message: error.message,
            },
            Err(_) => Error::Http {
                endpoint: label.to_string(),
                status: status.as_u16(),
                body: body.chars().take(300).collect(),
            },
        })
    }
}

fn read_json<T: DeserializeOwned>(label: &str, response: Response) -> Result<T, Error> {
    let bytes = response.bytes().map_err(|err| Error::BadResponse {
        endpoint: label.to_string(),
        reason: err.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|err| Error::BadResponse {
        endpoint: label.to_string(),
        reason: err.to_string(),
    })
}

fn key_value<'a>(key: &'a str, value: &'a str) -> wire::KeyValueJson<'a> {
    wire::KeyValueJson {
        key: key.into(),
        value: value.into(),
    }
}

/// Counts what fits into one `log-batch` request.
#[derive(Default)]
struct BatchBudget {
    entities: usize,
    bytes: usize,
}

impl BatchBudget {
    /// How many leading items fit within `per_kind` and the shared entity and byte limits.
    fn take<T>(&mut self, items: &[T], per_kind: usize, size: impl Fn(&T) -> usize) -> usize {
        let mut taken = 0;
        for item in items.iter().take(per_kind) {
            // Keys, values and about 64 bytes of JSON framing per entry.
            let item_bytes = size(item) + 64;
            let fits_bytes = self.bytes + item_bytes <= limits::BATCH_REQUEST_BYTES;
            // One entry always goes, even a huge one, so a batch never stalls.
            if self.entities >= limits::ENTITIES_PER_BATCH || (!fits_bytes && self.entities > 0) {
                break;
            }
            self.entities += 1;
            self.bytes += item_bytes;
            taken += 1;
        }
        taken
    }
}

/// The proxy path of a run's artifact root: `mlflow-artifacts:/1/<run>/artifacts`
/// (or `mlflow-artifacts://host:port/1/<run>/artifacts`) gives `["1", <run>, "artifacts"]`.
fn proxied_artifact_root(run: &RunInfo) -> Result<Vec<String>, Error> {
    let not_proxied = || Error::ArtifactsNotProxied {
        run_id: run.run_id.clone(),
        artifact_uri: run.artifact_uri.clone(),
    };
    let rest = run
        .artifact_uri
        .strip_prefix("mlflow-artifacts:")
        .ok_or_else(not_proxied)?;
    let path = match rest.strip_prefix("//") {
        Some(with_authority) => with_authority
            .split_once('/')
            .map(|(_, path)| path)
            .unwrap_or(""),
        None => rest,
    };
    Ok(split_artifact_path(path))
}

fn split_artifact_path(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .map(str::to_string)
        .collect()
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), Error> {
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(Error::io(&path))?;
        if file_type.is_dir() {
            collect_files(&path, files)?;
        } else if file_type.is_file() || path.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with_artifacts_at(uri: &str) -> RunInfo {
        RunInfo {
            run_id: "r1".into(),
            experiment_id: "1".into(),
            run_name: String::new(),
            status: RunStatus::Running,
            start_time_ms: None,
            end_time_ms: None,
            artifact_uri: uri.into(),
        }
    }

    #[test]
    fn artifact_root_of_proxied_and_other_stores() {
        let check = |uri: &str, expected: Option<&[&str]>| {
            let got = proxied_artifact_root(&run_with_artifacts_at(uri)).ok();
            let expected = expected.map(|e| e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, expected, "{uri}");
        };
        check(
            "mlflow-artifacts:/1/r1/artifacts",
            Some(&["1", "r1", "artifacts"]),
        );
        check(
            "mlflow-artifacts://mlflow.example:5000/7/r1/artifacts",
            Some(&["7", "r1", "artifacts"]),
        );
        check("s3://bucket/1/r1/artifacts", None);
        check("file:///tmp/mlruns/1/r1/artifacts", None);
    }

    #[test]
    fn batches_respect_every_log_batch_limit() {
        let check =
            |n_params: usize, n_tags: usize, n_metrics: usize, expected: (usize, usize, usize)| {
                let params = vec![0u8; n_params];
                let tags = vec![0u8; n_tags];
                let metrics = vec![0u8; n_metrics];
                let mut budget = BatchBudget::default();
                let got = (
                    budget.take(&params, limits::PARAMS_PER_BATCH, |_| 10),
                    budget.take(&tags, limits::TAGS_PER_BATCH, |_| 10),
                    budget.take(&metrics, limits::METRICS_PER_BATCH, |_| 10),
                );
                assert_eq!(got, expected);
            };
        check(250, 0, 0, (100, 0, 0));
        check(0, 0, 2500, (0, 0, 1000));
        check(100, 100, 2500, (100, 100, 800));
        check(3, 4, 5, (3, 4, 5));
    }

    #[test]
    fn byte_limit_splits_long_params_and_tags() {
        // 100 params of 6000 characters fit in 1 MB; 100 tags of 8000 more do not.
        let params = vec![6000usize; 100];
        let tags = vec![8000usize; 100];
        let mut budget = BatchBudget::default();
        let n_params = budget.take(&params, limits::PARAMS_PER_BATCH, |len| *len);
        let n_tags = budget.take(&tags, limits::TAGS_PER_BATCH, |len| *len);
        assert_eq!((n_params, n_tags), (100, 36));
        assert!(budget.bytes <= limits::BATCH_REQUEST_BYTES);
    }

    #[test]
    fn api_paths_keep_a_base_path_and_encode_segments() {
        let client = MlflowClient::new(&TrackingConfig::new("https://example.invalid/mlflow/"))
            .expect("valid uri");
        assert_eq!(
            client.api_url("runs/log-batch").as_str(),
            "https://example.invalid/mlflow/api/2.0/mlflow/runs/log-batch"
        );
        let root = vec!["1".to_string(), "r1".to_string(), "artifacts".to_string()];
        assert_eq!(
            client
                .artifact_url(&root, &["dir x".to_string(), "a#b.txt".to_string()])
                .as_str(),
            "https://example.invalid/mlflow/api/2.0/mlflow-artifacts/artifacts/1/r1/artifacts/dir%20x/a%23b.txt"
        );
    }

    #[test]
    fn non_http_tracking_uri_is_refused() {
        let err = MlflowClient::new(&TrackingConfig::new("file:///tmp/mlruns"))
            .expect_err("file store is not a server");
        assert!(err.to_string().contains("file:///tmp/mlruns"), "{err}");
    }
}
