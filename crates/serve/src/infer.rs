//! The [`Infer`] handle: the models being served, and every operation on them that the
//! protocols expose, in protocol-free types.
//!
//! Each loaded version owns a [`Batcher`] and its instances. Versions are swapped by
//! replacing the `Arc` in the table: a request holds the `Arc` it started with, so
//! loading a new version or unloading an old one never drops a request in flight;
//! the old version's threads end when its last request finishes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use crate::backend::cuda_host::CudaHostMemory;
use crate::backend::onnx::{OnnxBackend, Threads};
use crate::backend::{Backend, BackendError, HostPinning, Signature, TensorSignature};
use crate::batcher::{BatchError, Batcher, BatcherConfig, Instances, SplitInstance};
use crate::error::{ApiError, Error};
use crate::metrics::ModelStats;
use crate::model_config::{Device, ModelConfig, TensorConfig};
use crate::repository::{FetchedModel, Repository};
use crate::tensor::{DataType, Tensor};

/// Triton's `--model-control-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlMode {
    /// Load every model at start; the repository API cannot change them.
    None,
    /// Load every model at start and follow the repository as it changes.
    Poll,
    /// Load only what `--load-model` or the repository API asks for.
    Explicit,
}

/// How models are loaded and run.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    pub control_mode: ControlMode,
    pub threads: Threads,
    /// Requests waiting or running per model version before new ones are refused
    /// (a model's `default_queue_policy { max_queue_size }` overrides it).
    pub max_queue_size: usize,
    /// Input bytes waiting or running per model version before new requests are refused.
    pub max_queue_bytes: usize,
    /// Every instance on this CUDA device, whatever the models' `instance_group` kinds.
    pub gpu: Option<i32>,
    /// Host bytes that may be page-locked for CUDA instances (0: none).
    pub pinned_memory_bytes: usize,
}

/// A model version that answers requests.
pub struct LoadedVersion {
    pub name: String,
    pub version: i64,
    pub config: ModelConfig,
    pub stats: Arc<ModelStats>,
    /// Bytes of the model file (ModelMesh asks for a size).
    pub size_bytes: u64,
    batcher: Batcher,
}

/// A request in internal terms: validated here, whichever protocol it came from.
#[derive(Clone, Debug)]
pub struct InferRequest {
    pub model: String,
    pub version: Option<String>,
    pub inputs: Vec<Tensor>,
    /// `None`: every output.
    pub outputs: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
pub struct InferResponse {
    pub model: String,
    pub version: String,
    pub outputs: Vec<Tensor>,
}

/// A row of the repository index.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub state: String,
    pub reason: String,
}

/// Statistics of one version, for the statistics extension.
pub struct VersionStats {
    pub name: String,
    pub version: i64,
    pub stats: Arc<ModelStats>,
}

#[derive(Default)]
struct ModelEntry {
    versions: BTreeMap<i64, Arc<LoadedVersion>>,
    config_text: String,
    /// Why the model is not ready (empty when it is).
    reason: String,
    /// `Some(path)` for ModelMesh models, loaded from a path instead of the repository.
    path: Option<PathBuf>,
}

/// The shared handle: cheap to clone, one per server.
#[derive(Clone)]
pub struct Infer {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<cardet_onnx::Runtime>,
    repository: Option<Repository>,
    options: ModelOptions,
    models: RwLock<HashMap<String, ModelEntry>>,
    /// Loads run one at a time, so two polls never load the same version twice.
    loading: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    /// The CUDA runtime's host-memory pinning, loaded with the first CUDA instance.
    host_memory: OnceLock<Option<Arc<CudaHostMemory>>>,
}

impl Infer {
    pub fn new(
        runtime: Arc<cardet_onnx::Runtime>,
        repository: Option<Repository>,
        options: ModelOptions,
    ) -> Infer {
        Infer {
            inner: Arc::new(Inner {
                runtime,
                repository,
                options,
                models: RwLock::new(HashMap::new()),
                loading: tokio::sync::Mutex::new(()),
                ready: AtomicBool::new(false),
                host_memory: OnceLock::new(),
            }),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// Pinning for CUDA instances' merged batches, shared by all of them (one budget).
    /// Called once a CUDA session exists, so the CUDA runtime is already loaded.
    fn host_memory(&self) -> Option<Arc<dyn HostPinning>> {
        let budget = self.inner.options.pinned_memory_bytes;
        if budget == 0 {
            return None;
        }
        let memory = self.inner.host_memory.get_or_init(|| {
            CudaHostMemory::load(budget)
                .inspect_err(|reason| {
                    tracing::warn!(
                        %reason,
                        "no pinned memory for CUDA instances: batches are uploaded from pageable memory"
                    );
                })
                .ok()
                .map(Arc::new)
        });
        memory.clone().map(|memory| memory as Arc<dyn HostPinning>)
    }

    pub fn repository(&self) -> Option<&Repository> {
        self.inner.repository.as_ref()
    }

    fn read_models(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, ModelEntry>> {
        match self.inner.models.read() {
            Ok(models) => models,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn write_models(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, ModelEntry>> {
        match self.inner.models.write() {
            Ok(models) => models,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The version a request names, or the latest loaded one.
    pub fn model(&self, name: &str, version: Option<&str>) -> Result<Arc<LoadedVersion>, ApiError> {
        let models = self.read_models();
        let entry = models
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("unknown model '{name}'")))?;
        let version = version.filter(|v| !v.is_empty());
        let found = match version {
            None => entry.versions.values().next_back(),
            Some(text) => {
                let number = text.parse::<i64>().map_err(|_| {
                    ApiError::not_found(format!("model '{name}' has no version '{text}'"))
                })?;
                entry.versions.get(&number)
            }
        };
        found.cloned().ok_or_else(|| match version {
            Some(text) => {
                ApiError::not_found(format!("model '{name}' has no version '{text}' ready"))
            }
            None => ApiError::unavailable(format!(
                "model '{name}' is not ready{}",
                if entry.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", entry.reason)
                }
            )),
        })
    }

    /// Ready versions of a model, ascending.
    pub fn versions(&self, name: &str) -> Vec<i64> {
        self.read_models()
            .get(name)
            .map(|entry| entry.versions.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Validates a request, queues it and waits for its outputs.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, ApiError> {
        let started = Instant::now();
        let model = self.model(&request.model, request.version.as_deref())?;
        let result = self.infer_on(&model, request).await;
        match &result {
            Ok(_) => model.stats.success.add(started.elapsed()),
            Err(_) => model.stats.failure.add(started.elapsed()),
        }
        result
    }

    async fn infer_on(
        &self,
        model: &LoadedVersion,
        request: InferRequest,
    ) -> Result<InferResponse, ApiError> {
        let (inputs, rows) = validate_inputs(&model.config, &model.name, request.inputs)?;
        if let Some(wanted) = &request.outputs {
            for output in wanted {
                if !model.config.outputs.iter().any(|o| &o.name == output) {
                    return Err(ApiError::validation(format!(
                        "unknown output '{output}' for model '{}'; it has {}",
                        model.name,
                        names(&model.config.outputs)
                    )));
                }
            }
        }
        let executed = model
            .batcher
            .append(inputs, rows)
            .await
            .map_err(|error| match error {
                BatchError::QueueFull(_) | BatchError::QueueBytesFull { .. } => {
                    ApiError::unavailable(format!(
                        "model '{}' version {} is overloaded: {error}; retry later",
                        model.name, model.version
                    ))
                }
                BatchError::TooLarge { .. } => {
                    ApiError::validation(format!("model '{}': {error}", model.name))
                }
                BatchError::Closed => {
                    ApiError::unavailable(format!("model '{}' was unloaded; retry", model.name))
                }
                // The inputs passed validation, so a refusal is about their values or
                // dynamic dimensions: the request, not the server, is at fault.
                BatchError::Backend(BackendError::Input(message)) => ApiError::validation(message),
                BatchError::Backend(other) => ApiError::backend(other.to_string()),
            })?;
        let outputs = match &request.outputs {
            None => executed.outputs,
            Some(wanted) => wanted
                .iter()
                .filter_map(|name| executed.outputs.iter().find(|t| &t.name == name).cloned())
                .collect(),
        };
        Ok(InferResponse {
            model: model.name.clone(),
            version: model.version.to_string(),
            outputs,
        })
    }

    /// Every model of the repository and every loaded one, with its state.
    pub async fn index(&self, ready_only: bool) -> Result<Vec<IndexEntry>, ApiError> {
        let mut names: Vec<String> = match &self.inner.repository {
            Some(repository) => repository.models().await.map_err(ApiError::from)?,
            None => Vec::new(),
        };
        {
            let models = self.read_models();
            names.extend(models.keys().cloned());
        }
        names.sort();
        names.dedup();
        let models = self.read_models();
        let mut index = Vec::new();
        for name in names {
            match models.get(&name) {
                Some(entry) if !entry.versions.is_empty() => {
                    for version in entry.versions.keys() {
                        index.push(IndexEntry {
                            name: name.clone(),
                            version: version.to_string(),
                            state: "READY".into(),
                            reason: String::new(),
                        });
                    }
                }
                Some(entry) if !ready_only => index.push(IndexEntry {
                    name,
                    version: String::new(),
                    state: "UNAVAILABLE".into(),
                    reason: entry.reason.clone(),
                }),
                None if !ready_only => index.push(IndexEntry {
                    name,
                    version: String::new(),
                    state: "UNAVAILABLE".into(),
                    reason: "unloaded".into(),
                }),
                _ => {}
            }
        }
        Ok(index)
    }

    /// The repository extension's load: only in explicit mode, as in Triton.
    pub async fn repository_load(&self, name: &str) -> Result<(), ApiError> {
        self.check_explicit()?;
        self.load(name).await
    }

    /// The repository extension's unload: only in explicit mode, as in Triton.
    pub fn repository_unload(&self, name: &str) -> Result<(), ApiError> {
        self.check_explicit()?;
        self.unload(name)
    }

    fn check_explicit(&self) -> Result<(), ApiError> {
        match self.inner.options.control_mode {
            ControlMode::Explicit => Ok(()),
            mode => Err(ApiError::validation(format!(
                "explicit model load / unload is not allowed with --model-control-mode={}",
                if mode == ControlMode::Poll {
                    "poll"
                } else {
                    "none"
                }
            ))),
        }
    }

    /// Follows the repository: loads new models and versions, retires removed ones.
    pub async fn poll(&self) {
        let Some(repository) = &self.inner.repository else {
            return;
        };
        let names = match repository.models().await {
            Ok(names) => names,
            Err(error) => {
                tracing::warn!(%error, "polling the model repository");
                return;
            }
        };
        for name in &names {
            if let Err(error) = self.load(name).await {
                tracing::debug!(model = %name, %error, "poll");
            }
        }
        for loaded in self.model_names() {
            if !names.contains(&loaded) && !self.loaded_from_path(&loaded) {
                let _ = self.unload(&loaded);
            }
        }
    }

    /// Loads (or reloads) a model from the repository: new versions are swapped in,
    /// versions the policy no longer selects are retired.
    pub async fn load(&self, name: &str) -> Result<(), ApiError> {
        let repository = self
            .inner
            .repository
            .as_ref()
            .ok_or_else(|| ApiError::validation("this server has no model repository"))?;
        let _loading = self.inner.loading.lock().await;
        let fetched = match repository.fetch(name).await {
            Ok(fetched) => fetched,
            Err(error) => {
                let not_there = matches!(&error, Error::Model { .. });
                self.record_failure(name, &error.to_string());
                return Err(if not_there {
                    ApiError::not_found(error.to_string())
                } else {
                    ApiError::from(error)
                });
            }
        };
        self.apply(fetched, None).await
    }

    /// Loads a model from a local path under a given id (ModelMesh): the path is a
    /// model folder in the repository layout, a folder holding `model.onnx`, or an
    /// `.onnx` file.
    pub async fn load_path(&self, id: &str, path: &Path) -> Result<u64, ApiError> {
        let _loading = self.inner.loading.lock().await;
        let fetched = fetch_path(id, path).map_err(ApiError::from)?;
        self.apply(fetched, Some(path.to_path_buf())).await?;
        let model = self.model(id, None)?;
        Ok(model.size_bytes)
    }

    /// Stops serving a model; requests in flight finish.
    pub fn unload(&self, name: &str) -> Result<(), ApiError> {
        let removed = self.write_models().remove(name);
        match removed {
            Some(_) => {
                tracing::info!(model = name, "unloaded");
                Ok(())
            }
            None => Err(ApiError::not_found(format!("unknown model '{name}'"))),
        }
    }

    /// Unloads every model. Returns their instance threads, which end once the requests
    /// still queued are answered and the last handle on each model is dropped.
    pub fn unload_all(&self) -> Vec<std::thread::JoinHandle<()>> {
        let models: Vec<ModelEntry> = self
            .write_models()
            .drain()
            .map(|(_, entry)| entry)
            .collect();
        models
            .iter()
            .flat_map(|entry| entry.versions.values())
            .flat_map(|version| version.batcher.take_instances())
            .collect()
    }

    /// Names of every loaded (or failed) model.
    pub fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read_models().keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether a model was loaded from a path (ModelMesh) rather than the repository.
    pub fn loaded_from_path(&self, name: &str) -> bool {
        self.read_models()
            .get(name)
            .is_some_and(|entry| entry.path.is_some())
    }

    /// Statistics of the matching versions (every version of every model by default).
    pub fn statistics(
        &self,
        name: Option<&str>,
        version: Option<&str>,
    ) -> Result<Vec<VersionStats>, ApiError> {
        let name = name.filter(|n| !n.is_empty());
        if let Some(name) = name {
            // Resolves the name and version, or answers 404.
            self.model(name, version)?;
        }
        let models = self.read_models();
        let mut rows = Vec::new();
        let mut names: Vec<&String> = models.keys().collect();
        names.sort();
        for model in names {
            if name.is_some_and(|n| n != model) {
                continue;
            }
            for (number, loaded) in &models[model].versions {
                if version
                    .filter(|v| !v.is_empty())
                    .is_some_and(|v| v != number.to_string())
                {
                    continue;
                }
                rows.push(VersionStats {
                    name: model.clone(),
                    version: *number,
                    stats: loaded.stats.clone(),
                });
            }
        }
        Ok(rows)
    }

    fn record_failure(&self, name: &str, reason: &str) {
        tracing::warn!(model = name, reason, "model not loaded");
        let mut models = self.write_models();
        let entry = models.entry(name.to_string()).or_default();
        entry.reason = reason.to_string();
    }

    /// Brings a model's loaded versions in line with what was fetched.
    async fn apply(&self, fetched: FetchedModel, path: Option<PathBuf>) -> Result<(), ApiError> {
        let name = fetched.name.clone();
        let wanted = fetched.config.version_policy.select(&fetched.versions);
        if wanted.is_empty() {
            let reason = format!(
                "no complete version under {} (versions present: {:?})",
                fetched.folder.display(),
                fetched.versions
            );
            self.record_failure(&name, &reason);
            return Err(ApiError::validation(format!("model '{name}': {reason}")));
        }
        let (config_changed, current): (bool, Vec<i64>) = {
            let models = self.read_models();
            match models.get(&name) {
                Some(entry) => (
                    entry.config_text != fetched.config_text || entry.path != path,
                    entry.versions.keys().copied().collect(),
                ),
                None => (true, Vec::new()),
            }
        };
        let mut loaded = Vec::new();
        for &version in &wanted {
            if !config_changed && current.contains(&version) {
                continue;
            }
            match self.load_version(&fetched, version).await {
                Ok(version) => loaded.push(version),
                Err(error) => {
                    let reason = error.to_string();
                    self.record_failure(&name, &reason);
                    return Err(ApiError::from(error));
                }
            }
        }
        let mut models = self.write_models();
        let entry = models.entry(name.clone()).or_default();
        if config_changed {
            entry.versions.clear();
        }
        for version in loaded {
            tracing::info!(model = %name, version = version.version, "version ready");
            entry.versions.insert(version.version, Arc::new(version));
        }
        entry.versions.retain(|version, _| wanted.contains(version));
        entry.config_text = fetched.config_text;
        entry.reason.clear();
        entry.path = path;
        Ok(())
    }

    async fn load_version(
        &self,
        fetched: &FetchedModel,
        version: i64,
    ) -> Result<LoadedVersion, Error> {
        let model_error = |message: String| Error::Model {
            model: fetched.name.clone(),
            message,
        };
        let file = fetched
            .folder
            .join(version.to_string())
            .join(&fetched.config.default_model_filename);
        let size_bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let mut placed = fetched.config.clone();
        if let Some(gpu) = self.inner.options.gpu {
            placed.place_on_gpu(gpu);
        }
        let devices = placed.instance_devices();
        let on_gpu = devices
            .iter()
            .any(|device| matches!(device, Device::Cuda(_)));
        let conv_algo_search = placed.conv_algo_search;
        let runtime = self.inner.runtime.clone();
        let threads = self.inner.options.threads;
        let split = split_threads(&placed, &devices, threads);
        let pinning = if on_gpu { self.host_memory() } else { None };
        let load_file = file.clone();
        // Building sessions is CPU work of seconds: keep it off the async workers.
        let loader = format!("ort-{}-{version}", fetched.name);
        let (signature, instances) = on_named_thread(loader, move || {
            let boxed = |backend: OnnxBackend| -> Box<dyn Backend> {
                Box::new(backend.with_host_pinning(pinning.clone()))
            };
            if let Some((whole, half)) = split {
                let (whole, [first, second]) =
                    OnnxBackend::load_split(&runtime, &load_file, whole, half)?;
                let signature = whole.signature();
                let instance = SplitInstance {
                    whole: boxed(whole),
                    halves: [boxed(first), boxed(second)],
                };
                return Ok((Some(signature), Instances::Split(instance)));
            }
            let backends = devices
                .into_iter()
                .map(|device| {
                    OnnxBackend::load(&runtime, &load_file, threads, device, conv_algo_search)
                })
                .collect::<Result<Vec<_>, String>>()?;
            let signature = backends.first().map(OnnxBackend::signature);
            Ok((
                signature,
                Instances::Separate(backends.into_iter().map(boxed).collect()),
            ))
        })
        .await
        .map_err(model_error)?
        .map_err(model_error)?;
        let signature = signature.ok_or_else(|| model_error("no instance".into()))?;
        let config = complete_config(&placed, &signature)
            .map_err(|message| model_error(format!("version {version}: {message}")))?;
        let stats = Arc::new(ModelStats::default());
        let batcher_config = BatcherConfig {
            max_batch_size: config.max_batch_size as usize,
            max_queue_delay: config
                .dynamic_batching
                .as_ref()
                .map(|batching| batching.max_queue_delay),
            queue_capacity: config
                .dynamic_batching
                .as_ref()
                .and_then(|batching| batching.max_queue_size)
                .unwrap_or(self.inner.options.max_queue_size),
            queue_bytes: self.inner.options.max_queue_bytes,
            batched_model: config.max_batch_size > 0,
            pad: config.effective_pad_batch(),
        };
        let batcher = Batcher::start(
            &format!("{}-{version}", fetched.name),
            instances,
            batcher_config,
            stats.clone(),
        );
        Ok(LoadedVersion {
            name: fetched.name.clone(),
            version,
            config,
            stats,
            size_bytes,
            batcher,
        })
    }
}

/// Runs `work` on a new thread named `name` and waits for it without blocking the
/// async side.
///
/// ONNX Runtime creates a session's intra-op threads while the session is built, and
/// on Linux a thread takes the name of the thread that creates it: built on a
/// `spawn_blocking` thread, they showed in `top -H` and `perf` as `tokio-rt-worker`,
/// as if the async side were running the inference. Built here, they carry the
/// model's name (at most 15 bytes of it, the kernel's limit).
async fn on_named_thread<T: Send + 'static>(
    name: String,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(crate::batcher::thread_name(name.clone()))
        .spawn(move || {
            let _ = sender.send(work());
        })
        .map_err(|error| format!("starting thread {name}: {error}"))?;
    receiver
        .await
        .map_err(|_| format!("thread {name} stopped without finishing (a panic)"))
}

/// The threads of the whole session and of each half when a version runs as a
/// [`SplitInstance`]: one CPU instance with two or more intra-op threads, unless its
/// config turns `cardet_split_when_busy` off. 0 threads counts as the physical cores
/// this process may use (ONNX Runtime's own default, capped by the cgroup's quota;
/// [`crate::cores::physical_cores`]) for all three sessions, so that the halves
/// together never have more threads than the whole.
fn split_threads(
    config: &ModelConfig,
    devices: &[Device],
    threads: Threads,
) -> Option<(Threads, Threads)> {
    if devices != [Device::Cpu] || !config.split_when_busy {
        return None;
    }
    let whole = match threads.intra_op {
        0 => crate::cores::physical_cores(),
        configured => configured,
    };
    let with = |intra_op| Threads {
        intra_op,
        inter_op: threads.inter_op,
    };
    (whole >= 2).then_some((with(whole), with(whole / 2)))
}

/// A ModelMesh path as a fetched model named `id`.
fn fetch_path(id: &str, path: &Path) -> Result<FetchedModel, Error> {
    let model_error = |message: String| Error::Model {
        model: id.to_string(),
        message,
    };
    if path.is_file() {
        // A bare `.onnx` file: serve it as version 1 from a folder of links.
        let folder =
            std::env::temp_dir().join(format!("cardet-serve-mm-{}-{id}", std::process::id()));
        let version = folder.join("1");
        std::fs::create_dir_all(&version).map_err(|source| Error::Io {
            path: version.clone(),
            source,
        })?;
        let link = version.join("model.onnx");
        let _ = std::fs::remove_file(&link);
        std::fs::copy(path, &link).map_err(|source| Error::Io {
            path: link.clone(),
            source,
        })?;
        return crate::repository::fetch_local(&folder, id, false);
    }
    if path.join("config.pbtxt").is_file() || has_version_folder(path) {
        let mut fetched = crate::repository::fetch_local(path, id, false)?;
        fetched.config.name = id.to_string();
        return Ok(fetched);
    }
    // A folder with one model folder inside (the puller's layout for Triton models).
    let mut inner = std::fs::read_dir(path)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.is_dir());
    if let (Some(only), None) = (inner.next(), inner.next()) {
        let mut fetched = crate::repository::fetch_local(&only, id, false)?;
        fetched.config.name = id.to_string();
        return Ok(fetched);
    }
    if path.join("model.onnx").is_file() {
        return fetch_path(id, &path.join("model.onnx"));
    }
    Err(model_error(format!(
        "{}: no config.pbtxt, version folder or model.onnx",
        path.display()
    )))
}

fn has_version_folder(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|entry| {
            entry.path().is_dir()
                && entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<i64>().is_ok())
        })
    })
}

/// Checks the configuration against the model's own signature, filling in inputs and
/// outputs the configuration leaves out (as Triton's auto-complete does).
pub fn complete_config(config: &ModelConfig, signature: &Signature) -> Result<ModelConfig, String> {
    let mut config = config.clone();
    let batched = config.max_batch_size > 0;
    let from_signature = |tensor: &TensorSignature| -> Result<TensorConfig, String> {
        let datatype = tensor
            .datatype
            .ok_or_else(|| format!("{}: element type not supported", tensor.name))?;
        let dims = if batched {
            tensor.shape.get(1..).unwrap_or_default().to_vec()
        } else {
            tensor.shape.clone()
        };
        Ok(TensorConfig {
            name: tensor.name.clone(),
            datatype,
            dims,
        })
    };
    for (configured, declared, what) in [
        (&mut config.inputs, &signature.inputs, "input"),
        (&mut config.outputs, &signature.outputs, "output"),
    ] {
        if configured.is_empty() {
            *configured = declared
                .iter()
                .map(from_signature)
                .collect::<Result<_, _>>()?;
            continue;
        }
        for tensor in configured.iter() {
            let Some(model_tensor) = declared.iter().find(|t| t.name == tensor.name) else {
                return Err(format!(
                    "config {what} '{}' is not in the model, which has {:?}",
                    tensor.name,
                    declared.iter().map(|t| &t.name).collect::<Vec<_>>()
                ));
            };
            if model_tensor.datatype != Some(tensor.datatype) {
                return Err(format!(
                    "{what} '{}': config says {}, the model {:?}",
                    tensor.name,
                    tensor.datatype.config_name(),
                    model_tensor.datatype.map(DataType::config_name)
                ));
            }
            let model_dims: &[i64] = if batched {
                if model_tensor
                    .shape
                    .first()
                    .is_some_and(|&d| d != -1 && d < config.max_batch_size as i64)
                {
                    return Err(format!(
                        "{what} '{}': the model's batch dimension is {} but max_batch_size is {}; export it with a dynamic batch or lower max_batch_size",
                        tensor.name, model_tensor.shape[0], config.max_batch_size
                    ));
                }
                model_tensor.shape.get(1..).unwrap_or_default()
            } else {
                &model_tensor.shape
            };
            let fits = model_dims.len() == tensor.dims.len()
                && model_dims
                    .iter()
                    .zip(&tensor.dims)
                    .all(|(&m, &c)| m == -1 || c == -1 || m == c);
            if !fits {
                return Err(format!(
                    "{what} '{}': config dims {:?} do not match the model's shape {:?}{}",
                    tensor.name,
                    tensor.dims,
                    model_tensor.shape,
                    if batched {
                        " (after the batch dimension)"
                    } else {
                        ""
                    }
                ));
            }
        }
        if what == "input" {
            for declared in declared {
                if !configured.iter().any(|t| t.name == declared.name) {
                    return Err(format!(
                        "the model's input '{}' is missing from the config",
                        declared.name
                    ));
                }
            }
        }
    }
    // Fill fixed dimensions the configuration leaves variable from the model.
    Ok(config)
}

fn names(tensors: &[TensorConfig]) -> String {
    tensors
        .iter()
        .map(|t| format!("'{}'", t.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks each input against the configuration and returns them in the model's order
/// with the request's batch size (1 for models without a batch dimension).
pub fn validate_inputs(
    config: &ModelConfig,
    model: &str,
    mut inputs: Vec<Tensor>,
) -> Result<(Vec<Tensor>, usize), ApiError> {
    for input in &inputs {
        if !config.inputs.iter().any(|c| c.name == input.name) {
            return Err(ApiError::validation(format!(
                "unknown input '{}' for model '{model}'; it expects {}",
                input.name,
                names(&config.inputs)
            )));
        }
        if inputs
            .iter()
            .filter(|other| other.name == input.name)
            .count()
            > 1
        {
            return Err(ApiError::validation(format!(
                "input '{}' is given more than once",
                input.name
            )));
        }
    }
    let mut ordered = Vec::with_capacity(config.inputs.len());
    let mut rows = None;
    for expected in &config.inputs {
        let position = inputs
            .iter()
            .position(|input| input.name == expected.name)
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "missing input '{}' for model '{model}'",
                    expected.name
                ))
            })?;
        let input = inputs.swap_remove(position);
        if input.datatype != expected.datatype {
            return Err(ApiError::validation(format!(
                "input '{}': datatype {} but the model expects {}",
                input.name,
                input.datatype.name(),
                expected.datatype.name()
            )));
        }
        let dims: &[i64] = if config.max_batch_size > 0 {
            let Some(&batch) = input.shape.first() else {
                return Err(ApiError::validation(format!(
                    "input '{}': shape [] has no batch dimension (expected [-1, {}])",
                    input.name,
                    join(&expected.dims)
                )));
            };
            if batch < 1 || batch > i64::from(config.max_batch_size) {
                return Err(ApiError::validation(format!(
                    "input '{}': batch size {batch} is not in 1..={} (max_batch_size)",
                    input.name, config.max_batch_size
                )));
            }
            if rows.is_some_and(|rows| rows != batch) {
                return Err(ApiError::validation(format!(
                    "input '{}': batch size {batch} differs from the other inputs'",
                    input.name
                )));
            }
            rows = Some(batch);
            &input.shape[1..]
        } else {
            &input.shape
        };
        let fits = dims.len() == expected.dims.len()
            && dims
                .iter()
                .zip(&expected.dims)
                .all(|(&given, &wanted)| given >= 0 && (wanted == -1 || given == wanted));
        if !fits {
            let expected_shape = if config.max_batch_size > 0 {
                format!("[-1, {}]", join(&expected.dims))
            } else {
                format!("[{}]", join(&expected.dims))
            };
            return Err(ApiError::validation(format!(
                "input '{}': shape [{}] does not match the model's {expected_shape}",
                input.name,
                join(&input.shape)
            )));
        }
        let element_size = input.datatype.size().ok_or_else(|| {
            ApiError::validation(format!(
                "input '{}': datatype {} is not supported",
                input.name,
                input.datatype.name()
            ))
        })?;
        let expected_bytes = Tensor::element_count(&input.shape)
            .and_then(|count| count.checked_mul(element_size))
            .ok_or_else(|| {
                ApiError::validation(format!("input '{}': shape too large", input.name))
            })?;
        if input.data.len() != expected_bytes {
            return Err(ApiError::validation(format!(
                "input '{}': shape [{}] needs {} bytes of {} data, got {}",
                input.name,
                join(&input.shape),
                expected_bytes,
                input.datatype.name(),
                input.data.len()
            )));
        }
        ordered.push(input);
    }
    Ok((ordered, rows.map_or(1, |rows| rows as usize)))
}

fn join(dims: &[i64]) -> String {
    dims.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_a_thread_of_the_given_name_even_with_a_nul_byte_in_it() {
        let name = || std::thread::current().name().map(str::to_string);
        assert_eq!(
            on_named_thread("ort-m-1".into(), name).await,
            Ok(Some("ort-m-1".into()))
        );
        assert_eq!(
            on_named_thread("ort-m\0x-1".into(), name).await,
            Ok(Some("ort-m?x-1".into()))
        );
        let failed = on_named_thread("ort-m-2".into(), || panic!("loading failed")).await;
        assert!(failed.is_err_and(|error| error.contains("ort-m-2")));
    }

    #[test]
    fn one_cpu_instance_of_two_or_more_threads_splits_into_halves_that_add_up_to_it() {
        let threads = |intra_op| Threads {
            intra_op,
            inter_op: 1,
        };
        let cpu = ModelConfig::empty("m");
        assert_eq!(
            split_threads(&cpu, &[Device::Cpu], threads(4)),
            Some((threads(4), threads(2)))
        );
        assert_eq!(
            split_threads(&cpu, &[Device::Cpu], threads(3)),
            Some((threads(3), threads(1)))
        );
        assert_eq!(split_threads(&cpu, &[Device::Cpu], threads(1)), None);
        let cores = crate::cores::physical_cores();
        let default = split_threads(&cpu, &[Device::Cpu], threads(0));
        match default {
            Some((whole, half)) => {
                assert_eq!(whole, threads(cores), "0 counts as the cores");
                assert!(2 * half.intra_op <= whole.intra_op);
            }
            None => assert_eq!(cores, 1),
        }
        assert_eq!(
            split_threads(&cpu, &[Device::Cpu, Device::Cpu], threads(2)),
            None,
            "two instances are not split"
        );
        assert_eq!(split_threads(&cpu, &[Device::Cuda(0)], threads(2)), None);
        let mut unsplit = cpu.clone();
        unsplit.split_when_busy = false;
        assert_eq!(split_threads(&unsplit, &[Device::Cpu], threads(2)), None);
    }

    fn config() -> ModelConfig {
        ModelConfig::from_text(
            "max_batch_size: 4 input [{ name: \"images\" data_type: TYPE_FP32 dims: [3, -1] }] output [{ name: \"y\" data_type: TYPE_FP32 dims: [-1] }]",
            "m",
        )
        .expect("config")
    }

    fn check(inputs: Vec<Tensor>, expected: Result<usize, &str>) {
        match (validate_inputs(&config(), "m", inputs), expected) {
            (Ok((_, rows)), Ok(expected)) => assert_eq!(rows, expected),
            (Err(error), Err(expected)) => {
                assert_eq!(error.kind, crate::error::ErrorKind::Validation);
                assert!(
                    error.message.contains(expected),
                    "{:?} lacks {expected:?}",
                    error.message
                );
            }
            (actual, expected) => panic!("{actual:?} but expected {expected:?}"),
        }
    }

    fn images(shape: Vec<i64>, n_values: usize) -> Tensor {
        Tensor::from_f32("images", shape, &vec![0.5; n_values])
    }

    #[test]
    fn valid_inputs_pass_with_their_batch_size() {
        check(vec![images(vec![2, 3, 5], 30)], Ok(2));
        check(vec![images(vec![1, 3, 1], 3)], Ok(1));
    }

    #[test]
    fn invalid_inputs_name_the_field() {
        check(
            vec![Tensor::from_f32("image", vec![1, 3, 1], &[0.0; 3])],
            Err("unknown input 'image' for model 'm'; it expects 'images'"),
        );
        check(vec![], Err("missing input 'images'"));
        check(
            vec![images(vec![1, 3, 1], 3), images(vec![1, 3, 1], 3)],
            Err("more than once"),
        );
        check(
            vec![images(vec![1, 4, 1], 4)],
            Err("shape [1, 4, 1] does not match the model's [-1, 3, -1]"),
        );
        check(vec![images(vec![3, 1], 3)], Err("does not match"));
        check(
            vec![images(vec![5, 3, 1], 15)],
            Err("batch size 5 is not in 1..=4"),
        );
        check(vec![images(vec![0, 3, 1], 0)], Err("batch size 0"));
        check(
            vec![images(vec![1, 3, 2], 5)],
            Err("needs 24 bytes of FP32 data, got 20"),
        );
        check(vec![images(vec![1, 3, -2], 0)], Err("does not match"));
        let mut wrong_type = images(vec![1, 3, 1], 3);
        wrong_type.datatype = DataType::Int32;
        check(
            vec![wrong_type],
            Err("datatype INT32 but the model expects FP32"),
        );
    }

    #[test]
    fn configs_are_checked_against_the_model_signature() {
        let signature = |first: i64| Signature {
            inputs: vec![TensorSignature {
                name: "images".into(),
                datatype: Some(DataType::Fp32),
                shape: vec![first, 3, -1],
            }],
            outputs: vec![TensorSignature {
                name: "y".into(),
                datatype: Some(DataType::Fp32),
                shape: vec![first, 7],
            }],
        };
        assert!(complete_config(&config(), &signature(-1)).is_ok());
        let error = complete_config(&config(), &signature(1)).expect_err("fixed batch of 1");
        assert!(error.contains("batch dimension is 1"), "{error}");
        let mut renamed = signature(-1);
        renamed.inputs[0].name = "x".into();
        let error = complete_config(&config(), &renamed).expect_err("renamed");
        assert!(error.contains("'images' is not in the model"), "{error}");
        let auto = complete_config(
            &ModelConfig {
                max_batch_size: 2,
                ..ModelConfig::empty("m")
            },
            &signature(-1),
        )
        .expect("auto-complete");
        assert_eq!(auto.inputs[0].dims, vec![3, -1]);
        assert_eq!(auto.outputs[0].dims, vec![7]);
    }
}
