//! The KServe v2 (Open Inference Protocol) client: HTTP/REST with Triton's binary
//! tensor extension or plain JSON, and gRPC. Only this module knows the wire.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::Error;
use crate::recycle::Recycler;
use crate::shared_memory::{RegionFloats, SharedRegion};

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

/// How tensors travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// REST with Triton's binary data extension (raw little-endian bytes after a
    /// JSON header) for the input and the output.
    HttpBinary,
    /// REST with every value as a JSON number.
    HttpJson,
    /// gRPC with `raw_input_contents` / `raw_output_contents`.
    Grpc,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Protocol::HttpBinary => "http-binary",
            Protocol::HttpJson => "http-json",
            Protocol::Grpc => "grpc",
        })
    }
}

/// One tensor's description from model metadata; `-1` marks a variable axis.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// An FP32 input tensor as the wire carries it: the values' little-endian bytes,
/// shared, so a retry resends them without a copy, and whatever owns the values
/// (a recycled buffer, say) gets them back when the last request holding them ends;
/// or the name of a shared-memory region that holds them.
#[derive(Clone, Debug)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    data: InputData,
}

#[derive(Clone, Debug)]
enum InputData {
    Bytes(Bytes),
    /// The first `byte_size` bytes of a registered region.
    Region {
        region: String,
        byte_size: usize,
    },
}

impl InputTensor {
    pub fn new<V>(name: &str, shape: Vec<i64>, values: V) -> InputTensor
    where
        V: AsRef<[f32]> + AsMut<[f32]> + Send + 'static,
    {
        #[cfg(not(target_endian = "little"))]
        let values = {
            let mut values = values;
            for value in values.as_mut() {
                *value = f32::from_bits(value.to_bits().to_le());
            }
            values
        };
        InputTensor {
            name: name.to_string(),
            shape,
            data: InputData::Bytes(Bytes::from_owner(LittleEndianF32(values))),
        }
    }

    /// The first `n_values` floats of `region`, written there by the caller.
    pub fn in_region(
        name: &str,
        shape: Vec<i64>,
        region: &SharedRegion,
        n_values: usize,
    ) -> InputTensor {
        InputTensor {
            name: name.to_string(),
            shape,
            data: InputData::Region {
                region: region.name().to_string(),
                byte_size: n_values * 4,
            },
        }
    }

    pub fn n_values(&self) -> usize {
        match &self.data {
            InputData::Bytes(bytes) => bytes.len() / 4,
            InputData::Region { byte_size, .. } => byte_size / 4,
        }
    }

    /// The bytes, for the transports that send them (all but shared memory).
    fn bytes(&self) -> Result<&Bytes, Error> {
        match &self.data {
            InputData::Bytes(bytes) => Ok(bytes),
            InputData::Region { .. } => Err(shared_memory_needs_binary()),
        }
    }
}

fn shared_memory_needs_binary() -> Error {
    Error::InvalidArgument(
        "system shared memory works over REST with binary data or over gRPC, not with JSON tensors"
            .to_string(),
    )
}

/// An FP32 output tensor, row-major.
#[derive(Clone, Debug)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    values: OutputValues,
}

#[derive(Clone, Debug)]
enum OutputValues {
    Owned(Vec<f32>),
    /// Written by the server into the client's shared-memory region.
    Region(RegionFloats),
    /// The answer's own bytes, 4-byte aligned, on a little-endian machine: read in
    /// place, no copy.
    LittleEndian(Bytes),
}

impl OutputTensor {
    fn from_le_bytes(name: String, shape: Vec<i64>, bytes: Bytes) -> OutputTensor {
        let in_place =
            cfg!(target_endian = "little") && bytemuck::try_cast_slice::<u8, f32>(&bytes).is_ok();
        let values = if in_place {
            OutputValues::LittleEndian(bytes)
        } else {
            OutputValues::Owned(le_bytes_to_f32(&bytes))
        };
        OutputTensor {
            name,
            shape,
            values,
        }
    }

    pub fn values(&self) -> &[f32] {
        match &self.values {
            OutputValues::Owned(values) => values,
            OutputValues::Region(floats) => floats.as_slice(),
            // Checked to cast in `from_le_bytes`.
            OutputValues::LittleEndian(bytes) => bytemuck::cast_slice(bytes),
        }
    }
}

/// Values seen as their bytes, the owner behind a `Bytes` (on a big-endian machine
/// the values hold little-endian bit patterns already).
struct LittleEndianF32<V>(V);

impl<V: AsRef<[f32]>> AsRef<[u8]> for LittleEndianF32<V> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(self.0.as_ref())
    }
}

/// A connection to one server, cheap to clone (connections are pooled).
#[derive(Clone, Debug)]
pub struct KserveClient {
    url: String,
    protocol: Protocol,
    transport: Transport,
    /// Buffers HTTP answers are read into, kept between requests.
    answer_buffers: Arc<Recycler<f32>>,
}

/// Answer buffers kept idle: one per request in flight covers any sensible
/// `--concurrency`; beyond it, buffers are freed as they come back.
const ANSWER_BUFFERS_KEPT: usize = 16;

#[derive(Clone, Debug)]
enum Transport {
    Http(reqwest::Client),
    Grpc(pb::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>),
}

/// The largest gRPC message either way: a batch of 8 images at 640 is 39 MB.
const MAX_GRPC_MESSAGE_BYTES: usize = 512 << 20;

/// HTTP/2 windows and the largest frame this client accepts over gRPC, the same as
/// `serve` announces. With tonic's defaults (a 2 MiB stream window, 16 KiB frames)
/// YOLOv8n's 2.8 MB answer came back as 172 frames with a window update midway,
/// about 1.5 ms a request more (`serve_bench pair --batch 1 --grpc`, BENCHMARKS.md).
const GRPC_STREAM_WINDOW: u32 = 8 << 20;
const GRPC_CONNECTION_WINDOW: u32 = 16 << 20;
const GRPC_MAX_FRAME: u32 = 1 << 20;

impl KserveClient {
    /// A client for `url` (`http://host:port`; for gRPC the gRPC port). Nothing is
    /// sent yet; [`KserveClient::check_ready`] is the first request.
    pub fn new(url: &str, protocol: Protocol, timeout: Duration) -> Result<KserveClient, Error> {
        let url = if url.contains("://") {
            url.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", url.trim_end_matches('/'))
        };
        let transport = match protocol {
            Protocol::HttpBinary | Protocol::HttpJson => Transport::Http(
                reqwest::Client::builder()
                    .timeout(timeout)
                    .connect_timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|error| Error::InvalidArgument(format!("http client: {error}")))?,
            ),
            Protocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
                    .map_err(|error| Error::InvalidArgument(format!("{url}: {error}")))?
                    .timeout(timeout)
                    .connect_timeout(Duration::from_secs(5))
                    .initial_stream_window_size(GRPC_STREAM_WINDOW)
                    .initial_connection_window_size(GRPC_CONNECTION_WINDOW)
                    .max_frame_size(GRPC_MAX_FRAME);
                Transport::Grpc(
                    pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(
                        endpoint.connect_lazy(),
                    )
                    .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
                )
            }
        };
        Ok(KserveClient {
            url,
            protocol,
            transport,
            answer_buffers: Recycler::new(ANSWER_BUFFERS_KEPT),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    fn model_path(model: &str, version: Option<&str>) -> String {
        match version {
            Some(version) if !version.is_empty() => {
                format!("/v2/models/{model}/versions/{version}")
            }
            _ => format!("/v2/models/{model}"),
        }
    }

    /// Creates a shared-memory object of `byte_size` bytes, registers it with the
    /// server as region `name` (Triton's system_shared_memory extension, over REST or
    /// gRPC as the client speaks), and unlinks the object's name: the server and this
    /// process keep their mappings. Server and client must share `/dev/shm` (the
    /// same host, or the same pod).
    pub async fn create_region(&self, name: &str, byte_size: usize) -> Result<SharedRegion, Error> {
        if self.protocol == Protocol::HttpJson {
            return Err(shared_memory_needs_binary());
        }
        let key = format!("/cardet-client-{}-{name}", std::process::id());
        let region = SharedRegion::create(name, &key, byte_size)?;
        // Unlinked once registered, refused, or abandoned (a run that ends while this
        // request is out drops it here), so no object is left in `/dev/shm`.
        let _unlink = UnlinkOnDrop(&key);
        self.register_region(name, &key, byte_size).await?;
        Ok(region)
    }

    async fn register_region(&self, name: &str, key: &str, byte_size: usize) -> Result<(), Error> {
        let what = format!("registering shared-memory region {name}");
        match &self.transport {
            Transport::Http(http) => {
                let request = http
                    .post(self.region_url(name, "register"))
                    .body(json!({ "key": key, "offset": 0, "byte_size": byte_size }).to_string());
                self.send_region_request(request, &what).await?;
            }
            Transport::Grpc(grpc) => {
                grpc.clone()
                    .system_shared_memory_register(pb::SystemSharedMemoryRegisterRequest {
                        name: name.to_string(),
                        key: key.to_string(),
                        offset: 0,
                        byte_size: byte_size as u64,
                    })
                    .await
                    .map_err(|status| self.status_error(status, &what))?;
            }
        }
        Ok(())
    }

    /// Unregisters region `name` (the server unmaps it once no request uses it).
    pub async fn unregister_region(&self, name: &str) -> Result<(), Error> {
        let what = format!("unregistering shared-memory region {name}");
        match &self.transport {
            Transport::Http(http) => {
                let request = http.post(self.region_url(name, "unregister"));
                self.send_region_request(request, &what).await?;
            }
            Transport::Grpc(grpc) => {
                grpc.clone()
                    .system_shared_memory_unregister(pb::SystemSharedMemoryUnregisterRequest {
                        name: name.to_string(),
                    })
                    .await
                    .map_err(|status| self.status_error(status, &what))?;
            }
        }
        Ok(())
    }

    /// The REST route of an `action` (register, unregister) on region `name`.
    fn region_url(&self, name: &str, action: &str) -> String {
        format!("{}/v2/systemsharedmemory/region/{name}/{action}", self.url)
    }

    /// Sends a region request over REST; the server's `error` text about `what` if
    /// it fails.
    async fn send_region_request(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(), Error> {
        let response = request
            .send()
            .await
            .map_err(|error| self.send_error(error))?;
        self.succeeded(response, what).await?;
        Ok(())
    }

    /// `response` when it succeeded, else the server's `error` text about `what`.
    async fn succeeded(
        &self,
        response: reqwest::Response,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(self.http_error(status, &body, what))
    }

    /// Fails fast, with one clear error, when the server is down or the model is not
    /// ready.
    pub async fn check_ready(&self, model: &str, version: Option<&str>) -> Result<(), Error> {
        let not_ready = |message: String| Error::NotReady {
            url: self.url.clone(),
            model: model.to_string(),
            message,
        };
        match &self.transport {
            Transport::Http(http) => {
                let url = format!("{}{}/ready", self.url, Self::model_path(model, version));
                let response = http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|error| self.send_error(error))?;
                if response.status().is_success() {
                    return Ok(());
                }
                let status = response.status();
                let body = response.bytes().await.unwrap_or_default();
                let message = server_message(&body).unwrap_or_else(|| status.to_string());
                Err(not_ready(message))
            }
            Transport::Grpc(grpc) => {
                let answer = grpc
                    .clone()
                    .model_ready(pb::ModelReadyRequest {
                        name: model.to_string(),
                        version: version.unwrap_or_default().to_string(),
                    })
                    .await
                    .map_err(|status| self.status_error(status, "the readiness check"))?;
                if answer.into_inner().ready {
                    Ok(())
                } else {
                    Err(not_ready("the server says it is not ready".to_string()))
                }
            }
        }
    }

    pub async fn model_metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata, Error> {
        let what = format!("the metadata of model {model}");
        match &self.transport {
            Transport::Http(http) => {
                let url = format!("{}{}", self.url, Self::model_path(model, version));
                let response = http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|error| self.send_error(error))?;
                let status = response.status();
                let body = response
                    .bytes()
                    .await
                    .map_err(|error| self.send_error(error))?;
                if !status.is_success() {
                    return Err(self.http_error(status, &body, &what));
                }
                serde_json::from_slice(&body).map_err(|error| Error::Protocol {
                    url: url.clone(),
                    message: format!("model metadata: {error}"),
                })
            }
            Transport::Grpc(grpc) => {
                let answer = grpc
                    .clone()
                    .model_metadata(pb::ModelMetadataRequest {
                        name: model.to_string(),
                        version: version.unwrap_or_default().to_string(),
                    })
                    .await
                    .map_err(|status| self.status_error(status, &what))?
                    .into_inner();
                let tensors = |tensors: Vec<pb::model_metadata_response::TensorMetadata>| {
                    tensors
                        .into_iter()
                        .map(|tensor| TensorMetadata {
                            name: tensor.name,
                            datatype: tensor.datatype,
                            shape: tensor.shape,
                        })
                        .collect()
                };
                Ok(ModelMetadata {
                    name: answer.name,
                    versions: answer.versions,
                    platform: answer.platform,
                    inputs: tensors(answer.inputs),
                    outputs: tensors(answer.outputs),
                })
            }
        }
    }

    /// Runs one FP32 input through the model and returns the named FP32 output,
    /// written into `output_region` when one is given (REST with binary data, or gRPC).
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        input: &InputTensor,
        output_name: &str,
        output_region: Option<&SharedRegion>,
    ) -> Result<OutputTensor, Error> {
        let expected: i64 = input.shape.iter().product();
        if expected != input.n_values() as i64 {
            return Err(Error::InvalidArgument(format!(
                "input {} has shape {:?} but {} values",
                input.name,
                input.shape,
                input.n_values()
            )));
        }
        if output_region.is_some() && self.protocol == Protocol::HttpJson {
            return Err(shared_memory_needs_binary());
        }
        match (&self.transport, self.protocol) {
            (Transport::Http(http), Protocol::HttpJson) => {
                self.infer_http_json(http, model, version, input, output_name)
                    .await
            }
            (Transport::Http(http), _) => {
                self.infer_http_binary(http, model, version, input, output_name, output_region)
                    .await
            }
            (Transport::Grpc(grpc), _) => {
                self.infer_grpc(grpc, model, version, input, output_name, output_region)
                    .await
            }
        }
    }

    async fn infer_http_binary(
        &self,
        http: &reqwest::Client,
        model: &str,
        version: Option<&str>,
        input: &InputTensor,
        output_name: &str,
        output_region: Option<&SharedRegion>,
    ) -> Result<OutputTensor, Error> {
        let (input_parameters, input_bytes) = match &input.data {
            InputData::Bytes(bytes) => (json!({ "binary_data_size": bytes.len() }), bytes.clone()),
            InputData::Region { region, byte_size } => (
                json!({ "shared_memory_region": region, "shared_memory_byte_size": byte_size }),
                Bytes::new(),
            ),
        };
        let output_parameters = match output_region {
            Some(region) => json!({
                "shared_memory_region": region.name(),
                "shared_memory_byte_size": region.byte_size(),
            }),
            None => json!({ "binary_data": true }),
        };
        let header = json!({
            "inputs": [{
                "name": input.name, "shape": input.shape, "datatype": "FP32",
                "parameters": input_parameters,
            }],
            "outputs": [{ "name": output_name, "parameters": output_parameters }],
        })
        .to_string();
        let header_length = header.len();
        let response = http
            .post(format!(
                "{}{}/infer",
                self.url,
                Self::model_path(model, version)
            ))
            .header("Inference-Header-Content-Length", header_length)
            .header("Content-Type", "application/octet-stream")
            .body(reqwest::Body::wrap(Frames::new([
                Bytes::from(header),
                input_bytes,
            ])))
            .send()
            .await
            .map_err(|error| self.send_error(error))?;
        self.read_http_answer(response, model, output_name, output_region)
            .await
    }

    async fn infer_http_json(
        &self,
        http: &reqwest::Client,
        model: &str,
        version: Option<&str>,
        input: &InputTensor,
        output_name: &str,
    ) -> Result<OutputTensor, Error> {
        let body = json!({
            "inputs": [{
                "name": input.name, "shape": input.shape, "datatype": "FP32",
                "data": le_bytes_to_f32(input.bytes()?),
            }],
            "outputs": [{ "name": output_name, "parameters": { "binary_data": false } }],
        });
        let response = http
            .post(format!(
                "{}{}/infer",
                self.url,
                Self::model_path(model, version)
            ))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|error| self.send_error(error))?;
        self.read_http_answer(response, model, output_name, None)
            .await
    }

    /// Reads an infer answer: a JSON header, and binary outputs after it when the
    /// server says so in `Inference-Header-Content-Length`.
    async fn read_http_answer(
        &self,
        response: reqwest::Response,
        model: &str,
        output_name: &str,
        output_region: Option<&SharedRegion>,
    ) -> Result<OutputTensor, Error> {
        let status = response.status();
        let header_length = response
            .headers()
            .get("Inference-Header-Content-Length")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok());
        let body = self
            .read_body_aligned(response, header_length.unwrap_or(0))
            .await?;
        if !status.is_success() {
            return Err(self.http_error(status, &body, &format!("inference on model {model}")));
        }
        let protocol_error = |message: String| Error::Protocol {
            url: self.url.clone(),
            message,
        };
        let header_length = header_length.unwrap_or(body.len());
        if header_length > body.len() {
            return Err(protocol_error(format!(
                "header length {header_length} beyond the {} byte body",
                body.len()
            )));
        }
        let answer: InferAnswer = serde_json::from_slice(&body[..header_length])
            .map_err(|error| protocol_error(format!("infer answer: {error}")))?;
        let mut binary = body.slice(header_length..);
        for output in answer.outputs {
            let binary_size = output
                .parameters
                .as_ref()
                .and_then(|parameters| parameters.get("binary_data_size"))
                .and_then(Value::as_u64)
                .map(|size| size as usize);
            let in_region = output
                .parameters
                .as_ref()
                .and_then(|parameters| parameters.get("shared_memory_region"))
                .is_some();
            let tensor = match (binary_size, output.data) {
                _ if in_region => {
                    if output.name != output_name {
                        continue;
                    }
                    region_output(output.name, output.shape, output_region, protocol_error)?
                }
                (Some(size), _) => {
                    if size > binary.len() {
                        return Err(protocol_error(format!(
                            "output {} claims {size} binary bytes, {} left",
                            output.name,
                            binary.len()
                        )));
                    }
                    let bytes = binary.split_to(size);
                    if output.name != output_name {
                        continue;
                    }
                    if output.datatype != "FP32" {
                        return Err(protocol_error(format!(
                            "output {} is {}, not FP32",
                            output.name, output.datatype
                        )));
                    }
                    OutputTensor::from_le_bytes(output.name, output.shape, bytes)
                }
                (None, Some(data)) if output.name == output_name => OutputTensor {
                    name: output.name,
                    shape: output.shape,
                    values: OutputValues::Owned(data),
                },
                (None, _) => continue,
            };
            check_output_size(&tensor).map_err(protocol_error)?;
            return Ok(tensor);
        }
        Err(protocol_error(format!("no output {output_name}")))
    }

    /// The whole body, read into a recycled buffer so that its byte `aligned_at`
    /// (where the binary outputs begin) falls on a 4-byte boundary: FP32 outputs
    /// are then read in place. Collecting the body instead cost a fresh 2.7 MB
    /// allocation, a copy, and a second copy into floats per image.
    async fn read_body_aligned(
        &self,
        mut response: reqwest::Response,
        aligned_at: usize,
    ) -> Result<Bytes, Error> {
        let lead = (4 - aligned_at % 4) % 4;
        let mut buffer = self.answer_buffers.take_guarded();
        let grow_to = |buffer: &mut Vec<f32>, n_bytes: usize| {
            if buffer.len() * 4 < n_bytes {
                buffer.resize(n_bytes.div_ceil(4), 0.0);
            }
        };
        if let Some(length) = response.content_length() {
            grow_to(&mut buffer, lead + length as usize);
        }
        let mut filled = lead;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| self.send_error(error))?
        {
            grow_to(&mut buffer, filled + chunk.len());
            bytemuck::cast_slice_mut::<f32, u8>(&mut buffer)[filled..filled + chunk.len()]
                .copy_from_slice(&chunk);
            filled += chunk.len();
        }
        Ok(Bytes::from_owner(LittleEndianF32(buffer)).slice(lead..filled))
    }

    async fn infer_grpc(
        &self,
        grpc: &pb::grpc_inference_service_client::GrpcInferenceServiceClient<
            tonic::transport::Channel,
        >,
        model: &str,
        version: Option<&str>,
        input: &InputTensor,
        output_name: &str,
        output_region: Option<&SharedRegion>,
    ) -> Result<OutputTensor, Error> {
        // A tensor in a region is named by Triton's parameters, its contents left out.
        let (input_parameters, raw_input_contents) = match &input.data {
            InputData::Bytes(bytes) => (HashMap::new(), vec![bytes.clone()]),
            InputData::Region { region, byte_size } => {
                (grpc_region_parameters(region, *byte_size), Vec::new())
            }
        };
        let output_parameters = output_region
            .map(|region| grpc_region_parameters(region.name(), region.byte_size()))
            .unwrap_or_default();
        let request = pb::ModelInferRequest {
            model_name: model.to_string(),
            model_version: version.unwrap_or_default().to_string(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: input.name.clone(),
                datatype: "FP32".to_string(),
                shape: input.shape.clone(),
                parameters: input_parameters,
                ..Default::default()
            }],
            outputs: vec![pb::model_infer_request::InferRequestedOutputTensor {
                name: output_name.to_string(),
                parameters: output_parameters,
            }],
            raw_input_contents,
            ..Default::default()
        };
        let answer = grpc
            .clone()
            .model_infer(request)
            .await
            .map_err(|status| self.status_error(status, &format!("inference on model {model}")))?
            .into_inner();
        let protocol_error = |message: String| Error::Protocol {
            url: self.url.clone(),
            message,
        };
        let position = answer
            .outputs
            .iter()
            .position(|output| output.name == output_name)
            .ok_or_else(|| protocol_error(format!("no output {output_name}")))?;
        let output = &answer.outputs[position];
        if output.datatype != "FP32" {
            return Err(protocol_error(format!(
                "output {} is {}, not FP32",
                output.name, output.datatype
            )));
        }
        let tensor = if output.parameters.contains_key("shared_memory_region") {
            region_output(
                output.name.clone(),
                output.shape.clone(),
                output_region,
                protocol_error,
            )?
        } else if answer.raw_output_contents.is_empty() {
            OutputTensor {
                name: output.name.clone(),
                shape: output.shape.clone(),
                values: OutputValues::Owned(
                    output
                        .contents
                        .as_ref()
                        .map(|contents| contents.fp32_contents.clone())
                        .unwrap_or_default(),
                ),
            }
        } else {
            let bytes = answer
                .raw_output_contents
                .get(position)
                .ok_or_else(|| protocol_error(format!("no raw contents for {output_name}")))?;
            OutputTensor::from_le_bytes(output.name.clone(), output.shape.clone(), bytes.clone())
        };
        check_output_size(&tensor).map_err(protocol_error)?;
        Ok(tensor)
    }

    fn send_error(&self, error: reqwest::Error) -> Error {
        if error.is_connect() || error.is_timeout() {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            return Error::Unreachable {
                url: self.url.clone(),
                message,
            };
        }
        Error::Protocol {
            url: self.url.clone(),
            message: error.to_string(),
        }
    }

    fn http_error(&self, status: reqwest::StatusCode, body: &[u8], what: &str) -> Error {
        Error::Server {
            url: self.url.clone(),
            what: what.to_string(),
            status: status.to_string(),
            message: server_message(body)
                .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string()),
            transient: status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn status_error(&self, status: tonic::Status, what: &str) -> Error {
        use tonic::Code;
        if status.code() == Code::Unavailable && status.message().contains("transport") {
            return Error::Unreachable {
                url: self.url.clone(),
                message: status.message().to_string(),
            };
        }
        Error::Server {
            url: self.url.clone(),
            what: what.to_string(),
            status: format!("gRPC {:?}", status.code()),
            message: status.message().to_string(),
            transient: matches!(status.code(), Code::Unavailable | Code::ResourceExhausted),
        }
    }
}

/// An output the answer says is in this request's shared-memory output region (REST
/// and gRPC alike): a view of that region, shaped as the answer says.
fn region_output(
    name: String,
    shape: Vec<i64>,
    output_region: Option<&SharedRegion>,
    protocol_error: impl Fn(String) -> Error,
) -> Result<OutputTensor, Error> {
    let region = output_region.ok_or_else(|| {
        protocol_error(format!(
            "output {name} is in a shared-memory region this client did not ask for"
        ))
    })?;
    Ok(OutputTensor {
        values: OutputValues::Region(
            region
                .floats(0..shape_bytes(&shape))
                .map_err(&protocol_error)?,
        ),
        name,
        shape,
    })
}

/// The bytes of an FP32 tensor of `shape` (saturating: a shape too large for this
/// machine fails the region's bounds check).
fn shape_bytes(shape: &[i64]) -> usize {
    let n_values: i64 = shape.iter().product();
    usize::try_from(n_values)
        .unwrap_or(usize::MAX)
        .saturating_mul(4)
}

/// Triton's parameters naming a tensor's place in a system shared-memory region, as
/// gRPC carries them.
fn grpc_region_parameters(region: &str, byte_size: usize) -> HashMap<String, pb::InferParameter> {
    use pb::infer_parameter::ParameterChoice;
    let parameter = |choice| pb::InferParameter {
        parameter_choice: Some(choice),
    };
    HashMap::from([
        (
            "shared_memory_region".to_string(),
            parameter(ParameterChoice::StringParam(region.to_string())),
        ),
        (
            "shared_memory_byte_size".to_string(),
            parameter(ParameterChoice::Int64Param(byte_size as i64)),
        ),
        (
            "shared_memory_offset".to_string(),
            parameter(ParameterChoice::Int64Param(0)),
        ),
    ])
}

/// Removes a shared-memory object's name when dropped.
struct UnlinkOnDrop<'a>(&'a str);

impl Drop for UnlinkOnDrop<'_> {
    fn drop(&mut self) {
        SharedRegion::unlink(self.0);
    }
}

/// A v2 error body's `error` text.
fn server_message(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("error")?
        .as_str()
        .map(str::to_string)
}

fn le_bytes_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect()
}

#[derive(Deserialize)]
struct InferAnswer {
    outputs: Vec<OutputAnswer>,
}

#[derive(Deserialize)]
struct OutputAnswer {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    data: Option<Vec<f32>>,
}

/// An output's values against its shape.
fn check_output_size(tensor: &OutputTensor) -> Result<(), String> {
    let expected: i64 = tensor.shape.iter().product();
    let got = tensor.values().len();
    if expected == got as i64 {
        Ok(())
    } else {
        Err(format!(
            "output {} has shape {:?} but {got} values",
            tensor.name, tensor.shape
        ))
    }
}

/// A request body sent as a few frames with their total length announced, so the
/// binary request's tensor goes out from its own buffer behind the JSON header
/// instead of being copied after it (4.9 MB per 640x640 image).
struct Frames {
    pending: VecDeque<Bytes>,
    n_bytes: u64,
}

impl Frames {
    fn new(frames: impl IntoIterator<Item = Bytes>) -> Frames {
        let pending: VecDeque<Bytes> = frames.into_iter().collect();
        let n_bytes = pending.iter().map(|frame| frame.len() as u64).sum();
        Frames { pending, n_bytes }
    }
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = self.pending.pop_front();
        if let Some(frame) = &frame {
            self.n_bytes -= frame.len() as u64;
        }
        Poll::Ready(frame.map(|frame| Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.n_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le_bytes(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect()
    }

    #[test]
    fn grpc_announces_large_windows_and_frames() {
        use cardet_testkit::http2;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            http2::read_client_announcements(&mut stream).expect("the client's first frames")
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _context = runtime.enter();
        let client = KserveClient::new(
            &format!("http://{address}"),
            Protocol::Grpc,
            Duration::from_secs(10),
        )
        .expect("client");
        // The bare server hangs up once it has read the client's opening frames, so
        // the call fails; what matters is what the client announced.
        let _ = runtime.block_on(client.check_ready("model", None));
        let announced = server.join().expect("server thread");
        assert_eq!(
            announced.settings.get(&http2::SETTINGS_INITIAL_WINDOW_SIZE),
            Some(&GRPC_STREAM_WINDOW),
            "{announced:?}"
        );
        assert_eq!(
            announced.settings.get(&http2::SETTINGS_MAX_FRAME_SIZE),
            Some(&GRPC_MAX_FRAME),
            "{announced:?}"
        );
        assert_eq!(announced.connection_window, GRPC_CONNECTION_WINDOW);
        // YOLOv8n's answer at 640 (FP32, 84 x 8400) fits in a stream's window.
        assert!(GRPC_STREAM_WINDOW as usize >= 84 * 8400 * 4);
    }

    #[test]
    fn inputs_travel_as_little_endian_bytes() {
        let values = [1.0_f32, -2.5, f32::MIN_POSITIVE];
        let input = InputTensor::new("images", vec![1, 3], values.to_vec());
        assert_eq!(input.n_values(), 3);
        let bytes = input.bytes().expect("bytes");
        assert_eq!(&bytes[..], &le_bytes(&values)[..]);
        assert_eq!(le_bytes_to_f32(bytes), values);
    }

    #[test]
    fn outputs_are_read_in_place_when_aligned_and_copied_when_not() {
        let values = [0.25_f32, 7.0, -1.0, 3.5];
        // One byte of lead: the floats start unaligned at 1, aligned at 4.
        let mut unaligned = vec![0_u8];
        unaligned.extend_from_slice(&le_bytes(&values));
        // A float buffer (so 4-byte aligned) holding little-endian bit patterns.
        let stored: Vec<f32> = [0.0_f32]
            .iter()
            .chain(&values)
            .map(|value| f32::from_bits(value.to_bits().to_le()))
            .collect();
        let aligned = Bytes::from_owner(LittleEndianF32(stored));
        for (bytes, in_place) in [
            (Bytes::from(unaligned).slice(1..), false),
            (aligned.slice(4..20), cfg!(target_endian = "little")),
        ] {
            let tensor = OutputTensor::from_le_bytes("out".to_string(), vec![2, 2], bytes);
            assert_eq!(tensor.values(), values);
            assert_eq!(
                matches!(tensor.values, OutputValues::LittleEndian(_)),
                in_place
            );
            assert!(check_output_size(&tensor).is_ok());
        }
        let wrong = OutputTensor::from_le_bytes("out".to_string(), vec![3], aligned.slice(4..20));
        let message = check_output_size(&wrong).expect_err("3 values expected, 4 given");
        assert!(
            message.contains("output out has shape [3] but 4 values"),
            "{message}"
        );
    }

    #[test]
    fn a_framed_body_announces_its_length_and_yields_its_frames_in_order() {
        use http_body::Body;
        let mut body = Frames::new([Bytes::from_static(b"{}  "), Bytes::from(vec![1_u8; 8])]);
        assert_eq!(body.size_hint().exact(), Some(12));
        let waker = std::task::Waker::noop();
        let mut context = Context::from_waker(waker);
        let mut seen = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut context) {
            seen.extend_from_slice(&frame.into_data().expect("data frames only"));
            if body.is_end_stream() {
                break;
            }
        }
        assert_eq!(seen, b"{}  \x01\x01\x01\x01\x01\x01\x01\x01");
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[test]
    fn server_messages_come_from_the_error_field() {
        assert_eq!(
            server_message(br#"{"error":"unknown model 'x'"}"#).as_deref(),
            Some("unknown model 'x'")
        );
        assert_eq!(server_message(b"<html>bad gateway</html>"), None);
    }

    #[test]
    fn little_endian_bytes_become_floats() {
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(le_bytes_to_f32(&bytes), [1.5, -2.0]);
    }
}
