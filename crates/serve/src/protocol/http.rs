//! The REST edge (axum): KServe v2 routes plus Triton's config, statistics and
//! repository extensions, over one [`Infer`] handle.
//!
//! Bodies are read up to a configured limit by hand (not axum's extractor), so a
//! body over it is a 400 with `{"error": ...}` like every other bad request. JSON is
//! accepted with or without a Content-Type, as tritonclient sends none.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use crate::error::{ApiError, ErrorKind};
use crate::infer::{Infer, InferRequest, LoadedVersion, VersionStats};
use crate::metrics::Duration64;
use crate::model_config::InstanceKind;
use crate::protocol::compression::{self, Coding};
use crate::protocol::types::{encode_infer_response, parse_infer_request};
use crate::shared_memory::SharedMemory;

/// Above this, JSON is parsed and written on a blocking thread, not an async worker.
const BLOCKING_THRESHOLD: usize = 1 << 20;

#[derive(Clone)]
struct AppState {
    infer: Infer,
    max_body_bytes: usize,
    shared_memory: Arc<SharedMemory>,
}

impl From<&ErrorKind> for StatusCode {
    fn from(kind: &ErrorKind) -> StatusCode {
        match kind {
            ErrorKind::Validation => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Backend => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from(&self.kind);
        (status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

/// The KServe v2 REST router.
pub fn router(infer: Infer, max_body_bytes: usize, shared_memory: Arc<SharedMemory>) -> Router {
    let state = AppState {
        infer,
        max_body_bytes,
        shared_memory,
    };
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(version_metadata),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(version_ready),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(version_config),
        )
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(version_stats),
        )
        .route("/v2/models/{model}/infer", post(model_infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(version_infer),
        )
        .route("/v2/systemsharedmemory/status", get(shared_memory_status))
        .route(
            "/v2/systemsharedmemory/region/{name}/status",
            get(region_status),
        )
        .route(
            "/v2/systemsharedmemory/region/{name}/register",
            post(region_register),
        )
        .route(
            "/v2/systemsharedmemory/unregister",
            post(shared_memory_unregister),
        )
        .route(
            "/v2/systemsharedmemory/region/{name}/unregister",
            post(region_unregister),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::new(state))
}

/// Prometheus text on its own port.
pub fn metrics_router(infer: Infer) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let infer = infer.clone();
            async move {
                let rows: Vec<(String, i64, Arc<crate::metrics::ModelStats>)> = infer
                    .statistics(None, None)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|row| (row.name, row.version, row.stats))
                    .collect();
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::metrics::render(&rows),
                )
            }
        }),
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn server_metadata(State(state): State<Arc<AppState>>) -> axum::Json<Value> {
    axum::Json(json!({
        "name": "cardet-serve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": state.shared_memory.extensions(),
    }))
}

async fn shared_memory_status(
    State(state): State<Arc<AppState>>,
) -> Result<axum::Json<Value>, ApiError> {
    regions_json(&state, None)
}

async fn region_status(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    regions_json(&state, Some(&name))
}

fn regions_json(state: &AppState, name: Option<&str>) -> Result<axum::Json<Value>, ApiError> {
    let regions = state.shared_memory.status(name)?;
    Ok(axum::Json(Value::Array(
        regions
            .into_iter()
            .map(|region| {
                json!({
                    "name": region.name,
                    "key": region.key,
                    "offset": region.offset,
                    "byte_size": region.byte_size,
                })
            })
            .collect(),
    )))
}

async fn region_register(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let body = read_body(&headers, body, 1 << 20, None).await?;
    let request: Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::validation(format!("malformed request JSON: {error}")))?;
    let key = request
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::validation("register: 'key' (a string) is required"))?;
    let number = |field: &str, default: Option<u64>| {
        match request.get(field) {
            None => default,
            Some(value) => value.as_u64(),
        }
        .ok_or_else(|| {
            ApiError::validation(format!(
                "register: '{field}' must be a non-negative integer"
            ))
        })
    };
    let offset = number("offset", Some(0))?;
    let byte_size = number("byte_size", None)?;
    state
        .shared_memory
        .register(&name, key, offset, byte_size)?;
    Ok(StatusCode::OK)
}

async fn shared_memory_unregister(
    State(state): State<Arc<AppState>>,
) -> Result<StatusCode, ApiError> {
    state.shared_memory.unregister(None)?;
    Ok(StatusCode::OK)
}

async fn region_unregister(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.shared_memory.unregister(Some(&name))?;
    Ok(StatusCode::OK)
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(state): State<Arc<AppState>>) -> StatusCode {
    if state.infer.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn metadata(infer: &Infer, model: &LoadedVersion) -> Value {
    let tensors = |list: &[crate::model_config::TensorConfig]| -> Vec<Value> {
        list.iter()
            .map(|t| {
                let mut shape = t.dims.clone();
                if model.config.max_batch_size > 0 {
                    shape.insert(0, -1);
                }
                json!({ "name": t.name, "datatype": t.datatype.name(), "shape": shape })
            })
            .collect()
    };
    let versions: Vec<String> = infer
        .versions(&model.name)
        .iter()
        .map(i64::to_string)
        .collect();
    json!({
        "name": model.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": tensors(&model.config.inputs),
        "outputs": tensors(&model.config.outputs),
    })
}

async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let loaded = state.infer.model(&model, None)?;
    Ok(axum::Json(metadata(&state.infer, &loaded)))
}

async fn version_metadata(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let loaded = state.infer.model(&model, Some(&version))?;
    Ok(axum::Json(metadata(&state.infer, &loaded)))
}

async fn model_ready(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Response {
    readiness(&state.infer, &model, None)
}

async fn version_ready(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    readiness(&state.infer, &model, Some(&version))
}

fn readiness(infer: &Infer, model: &str, version: Option<&str>) -> Response {
    match infer.model(model, version) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(error) if error.kind == ErrorKind::NotFound => error.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// The model configuration as JSON, with Triton's field names.
pub fn config_json(model: &LoadedVersion) -> Value {
    let config = &model.config;
    let tensors = |list: &[crate::model_config::TensorConfig], input: bool| -> Vec<Value> {
        list.iter()
            .map(|t| {
                let mut value = json!({
                    "name": t.name,
                    "data_type": t.datatype.config_name(),
                    "dims": t.dims,
                });
                if input {
                    value["format"] = json!("FORMAT_NONE");
                }
                value
            })
            .collect()
    };
    let policy = match &config.version_policy {
        crate::model_config::VersionPolicy::Latest(n) => json!({ "latest": { "num_versions": n } }),
        crate::model_config::VersionPolicy::All => json!({ "all": {} }),
        crate::model_config::VersionPolicy::Specific(versions) => {
            json!({ "specific": { "versions": versions } })
        }
    };
    let mut value = json!({
        "name": model.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": policy,
        "max_batch_size": config.max_batch_size,
        "input": tensors(&config.inputs, true),
        "output": tensors(&config.outputs, false),
        "instance_group": config.instance_groups.iter().map(|group| json!({
            "name": model.name,
            "kind": match group.kind {
                InstanceKind::Cpu => "KIND_CPU",
                InstanceKind::Gpu => "KIND_GPU",
            },
            "count": group.count,
            "gpus": group.gpus,
        })).collect::<Vec<_>>(),
        "default_model_filename": config.default_model_filename,
    });
    if let Some(batching) = &config.dynamic_batching {
        value["dynamic_batching"] = json!({
            "preferred_batch_size": batching.preferred_batch_sizes,
            "max_queue_delay_microseconds": batching.max_queue_delay.as_micros() as u64,
        });
    }
    value
}

async fn model_config(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let loaded = state.infer.model(&model, None)?;
    Ok(axum::Json(config_json(&loaded)))
}

async fn version_config(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let loaded = state.infer.model(&model, Some(&version))?;
    Ok(axum::Json(config_json(&loaded)))
}

fn stats_json(rows: Vec<VersionStats>) -> Value {
    let duration = |d: &Duration64| {
        let (count, ns) = d.get();
        json!({ "count": count, "ns": ns })
    };
    let models: Vec<Value> = rows
        .iter()
        .map(|row| {
            let s = &row.stats;
            let batches: Vec<Value> = s
                .batch_rows()
                .into_iter()
                .map(|(size, count, ns)| {
                    json!({
                        "batch_size": size,
                        "compute_infer": { "count": count, "ns": ns },
                    })
                })
                .collect();
            json!({
                "name": row.name,
                "version": row.version.to_string(),
                "last_inference": s.last_inference_ms.load(std::sync::atomic::Ordering::Relaxed),
                "inference_count": s.inference_count.load(std::sync::atomic::Ordering::Relaxed),
                "execution_count": s.execution_count.load(std::sync::atomic::Ordering::Relaxed),
                "inference_stats": {
                    "success": duration(&s.success),
                    "fail": duration(&s.failure),
                    "queue": duration(&s.queue),
                    "compute_input": duration(&s.compute_input),
                    "compute_infer": duration(&s.compute_infer),
                    "compute_output": duration(&s.compute_output),
                },
                "batch_stats": batches,
            })
        })
        .collect();
    json!({ "model_stats": models })
}

async fn all_stats(State(state): State<Arc<AppState>>) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(stats_json(state.infer.statistics(None, None)?)))
}

async fn model_stats(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(stats_json(
        state.infer.statistics(Some(&model), None)?,
    )))
}

async fn version_stats(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(stats_json(
        state.infer.statistics(Some(&model), Some(&version))?,
    )))
}

async fn model_infer(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    infer(state, model, None, headers, body).await
}

async fn version_infer(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    infer(state, model, Some(version), headers, body).await
}

/// Binary tensor data starts on this boundary in the buffer [`read_body`] fills, so
/// the backend can hand it to ONNX Runtime as a view instead of copying it.
const BINARY_ALIGNMENT: usize = 8;

/// An empty buffer for a body of about `capacity` bytes, and the padding it
/// starts with: with binary tensor data (`json_length` is the JSON header's
/// length) the bytes after the header land aligned for any element type.
fn aligned_buffer(capacity: usize, json_length: Option<usize>) -> (Vec<u8>, usize) {
    let mut buffer: Vec<u8> = Vec::with_capacity(capacity + BINARY_ALIGNMENT);
    // The allocator's alignment (16 bytes for glibc) is kept when the buffer grows,
    // so padding chosen now stays right if the capacity was missing or short.
    let padding = json_length.map_or(0, |json| {
        (BINARY_ALIGNMENT - (buffer.as_ptr() as usize + json) % BINARY_ALIGNMENT) % BINARY_ALIGNMENT
    });
    buffer.resize(padding, 0);
    (buffer, padding)
}

/// Runs CPU-heavy work (big JSON, compression) on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::backend(error.to_string()))?
}

/// Reads the body into one buffer, refusing bodies over `limit` bytes.
///
/// With binary tensor data (`json_length` is the JSON header's length) the buffer
/// starts with padding so that the bytes after the header are aligned for any
/// element type; the padding is sliced off the returned [`Bytes`]. The body's chunks
/// are copied once, straight into that buffer, sized from `Content-Length`.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    json_length: Option<usize>,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::validation(format!(
            "request body over the {limit}-byte limit (raise it with --http-max-body-bytes)"
        ))
    };
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if content_length.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let (mut buffer, padding) = aligned_buffer(content_length.unwrap_or(0), json_length);
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk
            .map_err(|error| ApiError::validation(format!("reading the request body: {error}")))?;
        if buffer.len() - padding + chunk.len() > limit {
            return Err(too_large());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffer).slice(padding..))
}

async fn infer(
    state: Arc<AppState>,
    model: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let header_length = headers
        .get("inference-header-content-length")
        .map(|v| v.to_str().unwrap_or("not text").to_string());
    let binary_header_length = header_length
        .as_deref()
        .and_then(|l| l.trim().parse::<usize>().ok());
    let body = match Coding::of_request(&headers)? {
        Coding::Identity => {
            read_body(&headers, body, state.max_body_bytes, binary_header_length).await?
        }
        coding => {
            let compressed = read_body(&headers, body, state.max_body_bytes, None).await?;
            let limit = state.max_body_bytes;
            blocking(move || {
                let (buffer, padding) =
                    aligned_buffer(compressed.len().saturating_mul(2), binary_header_length);
                let decoded = compression::decode(coding, &compressed, buffer, limit)?;
                Ok(Bytes::from(decoded).slice(padding..))
            })
            .await?
        }
    };
    let json_bytes = binary_header_length.unwrap_or(body.len());
    let mut parsed = if json_bytes > BLOCKING_THRESHOLD {
        blocking(move || parse_infer_request(body, header_length.as_deref())).await?
    } else {
        parse_infer_request(body, header_length.as_deref())?
    };
    for (index, reference) in &parsed.shared_memory_inputs {
        if let Some(input) = parsed.inputs.get_mut(*index) {
            input.data = state.shared_memory.read(reference)?;
        }
    }
    let request = InferRequest {
        model,
        version,
        inputs: parsed.inputs.clone(),
        outputs: parsed.outputs.clone(),
    };
    let response = state.infer.infer(request).await?;
    for output in &response.outputs {
        if let Some(reference) = parsed.shared_memory_output(&output.name) {
            state.shared_memory.write(reference, &output.data)?;
        }
    }
    let json_heavy = response
        .outputs
        .iter()
        .filter(|o| !parsed.binary(&o.name) && parsed.shared_memory_output(&o.name).is_none())
        .map(|o| o.data.len())
        .sum::<usize>()
        > BLOCKING_THRESHOLD;
    let encoded = if json_heavy {
        blocking(move || Ok(encode_infer_response(&response, &parsed))).await?
    } else {
        encode_infer_response(&response, &parsed)
    };
    let header_length = encoded.header_length;
    let coding = Coding::for_answer(&headers);
    let parts = match coding {
        Coding::Identity => encoded.parts,
        coding => vec![
            blocking(move || {
                compression::encode(coding, &encoded.parts).map_err(|error| {
                    ApiError::backend(format!("{} of the answer: {error}", coding.name()))
                })
            })
            .await?,
        ],
    };
    let mut answer = Response::new(Body::new(PartsBody::new(parts)));
    if coding != Coding::Identity {
        answer.headers_mut().insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(coding.name()),
        );
    }
    match header_length {
        Some(length) => {
            answer.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            answer
                .headers_mut()
                .insert("inference-header-content-length", HeaderValue::from(length));
        }
        None => {
            answer.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(answer)
}

/// A body sent as the buffers it already is, with its exact length announced (so
/// the answer carries `Content-Length`, not chunked encoding). hyper takes each
/// frame as it is, so an output goes from ONNX Runtime's buffer to the socket
/// without first being gathered into one body (a 2.7 MB copy for YOLOv8n).
struct PartsBody {
    parts: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl PartsBody {
    fn new(parts: Vec<Bytes>) -> PartsBody {
        let remaining = parts.iter().map(|part| part.len() as u64).sum();
        PartsBody {
            parts: parts.into_iter().filter(|part| !part.is_empty()).collect(),
            remaining,
        }
    }
}

impl http_body::Body for PartsBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let part = self.parts.pop_front();
        if let Some(part) = &part {
            self.remaining -= part.len() as u64;
        }
        std::task::Poll::Ready(part.map(|part| Ok(http_body::Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

async fn repository_index(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<Value>, ApiError> {
    let body = read_body(&headers, body, 1 << 20, None).await?;
    let ready_only = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        let request: Value = serde_json::from_slice(&body)
            .map_err(|error| ApiError::validation(format!("malformed request JSON: {error}")))?;
        request
            .get("ready")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let index = state.infer.index(ready_only).await?;
    Ok(axum::Json(Value::Array(
        index
            .into_iter()
            .map(|entry| {
                let mut value = json!({ "name": entry.name, "state": entry.state });
                if !entry.version.is_empty() {
                    value["version"] = json!(entry.version);
                }
                if !entry.reason.is_empty() {
                    value["reason"] = json!(entry.reason);
                }
                value
            })
            .collect(),
    )))
}

/// Load and unload bodies are optional JSON objects; parameters are not supported.
async fn check_control_body(headers: &HeaderMap, body: Body) -> Result<(), ApiError> {
    let body = read_body(headers, body, 1 << 20, None).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let request: Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::validation(format!("malformed request JSON: {error}")))?;
    if let Some(parameters) = request.get("parameters").and_then(Value::as_object)
        && let Some(name) = parameters
            .keys()
            .find(|k| k.as_str() == "config" || k.starts_with("file:"))
    {
        return Err(ApiError::validation(format!(
            "load parameter '{name}' is not supported by serve"
        )));
    }
    Ok(())
}

async fn repository_load(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    check_control_body(&headers, body).await?;
    state.infer.repository_load(&model).await?;
    Ok(StatusCode::OK)
}

async fn repository_unload(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    check_control_body(&headers, body).await?;
    state.infer.repository_unload(&model)?;
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[test]
    fn a_parts_body_announces_its_length_and_yields_its_parts_in_order() {
        let parts = vec![
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::new(),
            Bytes::from(vec![7u8; 1000]),
        ];
        let mut body = std::pin::pin!(PartsBody::new(parts));
        assert_eq!(body.size_hint().exact(), Some(1007));
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let mut received = Vec::new();
        while let std::task::Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut context) {
            let data = frame.expect("infallible").into_data().expect("data frame");
            assert!(!data.is_empty(), "empty parts are not sent as frames");
            received.extend_from_slice(&data);
        }
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert_eq!(&received[..7], b"{\"a\":1}");
        assert_eq!(received.len(), 1007);
    }
}
