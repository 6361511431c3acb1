//! The gRPC edge (tonic): the KServe v2 `GRPCInferenceService` with Triton's
//! extensions, over the same [`Infer`] handle as REST.
//!
//! Inputs come as `raw_input_contents` (one per input, in order), as typed
//! `contents`, or in a registered system shared-memory region; outputs go back raw,
//! as Triton does, or into a region. `ModelStreamInfer` answers each request of the
//! stream in order, errors as `error_message` in the stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio_stream::Stream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::error::{ApiError, ErrorKind};
use crate::infer::{Infer, InferRequest, InferResponse};
use crate::metrics::Duration64;
use crate::model_config::InstanceKind;
use crate::protocol::types::{region_input, region_ref};
use crate::shared_memory::{RegionRef, SharedMemory};
use crate::tensor::{DataType, Tensor};

/// Generated protobuf types and services.
pub mod pb {
    pub mod inference {
        tonic::include_proto!("inference");
    }
    pub mod mmesh {
        tonic::include_proto!("mmesh");
    }
}

use pb::inference as v2;
use pb::inference::grpc_inference_service_server::GrpcInferenceService;

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        match error.kind {
            ErrorKind::Validation => Status::invalid_argument(error.message),
            ErrorKind::NotFound => Status::not_found(error.message),
            ErrorKind::Overloaded => Status::resource_exhausted(error.message),
            ErrorKind::Unavailable => Status::unavailable(error.message),
            ErrorKind::Backend => Status::internal(error.message),
        }
    }
}

/// The `GRPCInferenceService` implementation.
#[derive(Clone)]
pub struct GrpcService {
    infer: Infer,
    shared_memory: Arc<SharedMemory>,
}

impl GrpcService {
    pub fn new(infer: Infer, shared_memory: Arc<SharedMemory>) -> GrpcService {
        GrpcService {
            infer,
            shared_memory,
        }
    }

    /// The tonic service, with message limits raised to `max_message_bytes` both ways
    /// (a compressed request's limit counts its decoded size). Requests compressed
    /// with gzip or deflate (tritonclient's `compression_algorithm`) are accepted;
    /// answers go uncompressed, as Triton sends them by default, since gRPC clients
    /// announce every coding they can read whether or not they asked for one.
    pub fn server(
        self,
        max_message_bytes: usize,
    ) -> pb::inference::grpc_inference_service_server::GrpcInferenceServiceServer<GrpcService> {
        pb::inference::grpc_inference_service_server::GrpcInferenceServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Deflate)
    }
}

/// A `ModelInferRequest` in internal terms, and the tensors that travel through
/// shared memory instead.
#[derive(Debug)]
pub struct WireRequest {
    pub request: InferRequest,
    /// Inputs (by index, their data left empty) to read from a region.
    pub shared_memory_inputs: Vec<(usize, RegionRef)>,
    /// Outputs to write into a region instead of `raw_output_contents`.
    pub shared_memory_outputs: Vec<(String, RegionRef)>,
}

impl WireRequest {
    /// The request with its shared-memory inputs read (as views of the regions).
    fn resolve(mut self, shared_memory: &SharedMemory) -> Result<WireRequest, ApiError> {
        for (index, reference) in &self.shared_memory_inputs {
            if let Some(input) = self.request.inputs.get_mut(*index) {
                input.data = shared_memory.read(reference)?;
            }
        }
        Ok(self)
    }
}

/// The `shared_memory_*` parameters of a tensor, as REST's parser reads them.
fn wire_region_ref(
    what: &str,
    parameters: &HashMap<String, v2::InferParameter>,
) -> Result<Option<RegionRef>, ApiError> {
    use v2::infer_parameter::ParameterChoice;
    let json: serde_json::Map<String, serde_json::Value> = parameters
        .iter()
        .filter(|(name, _)| name.starts_with("shared_memory_"))
        .filter_map(|(name, parameter)| {
            let value = match parameter.parameter_choice.as_ref()? {
                ParameterChoice::BoolParam(flag) => serde_json::Value::from(*flag),
                ParameterChoice::Int64Param(number) => serde_json::Value::from(*number),
                ParameterChoice::Uint64Param(number) => serde_json::Value::from(*number),
                ParameterChoice::DoubleParam(number) => serde_json::Value::from(*number),
                ParameterChoice::StringParam(text) => serde_json::Value::from(text.as_str()),
            };
            Some((name.clone(), value))
        })
        .collect();
    region_ref(what, Some(&json))
}

/// Converts a `ModelInferRequest` to internal terms.
pub fn from_wire(request: v2::ModelInferRequest) -> Result<WireRequest, ApiError> {
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(ApiError::validation(format!(
            "raw_input_contents has {} entries for {} inputs",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(request.inputs.len());
    let mut shared_memory_inputs = Vec::new();
    for (index, input) in request.inputs.into_iter().enumerate() {
        let datatype = DataType::from_name(&input.datatype).ok_or_else(|| {
            ApiError::validation(format!(
                "input '{}': unknown datatype '{}'",
                input.name, input.datatype
            ))
        })?;
        if let Some(region) =
            wire_region_ref(&format!("input '{}'", input.name), &input.parameters)?
        {
            if input.contents.is_some() || raw.get(index).is_some_and(|bytes| !bytes.is_empty()) {
                return Err(ApiError::validation(format!(
                    "input '{}': shared-memory parameters with contents",
                    input.name
                )));
            }
            inputs.push(region_input(input.name, datatype, input.shape, &region)?);
            shared_memory_inputs.push((index, region));
            continue;
        }
        let data = match (raw.get(index), input.contents) {
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(format!(
                    "input '{}': both contents and raw_input_contents are given",
                    input.name
                )));
            }
            (Some(bytes), None) => bytes.clone(),
            (None, Some(contents)) => typed_contents(&input.name, datatype, contents)?,
            (None, None) => {
                return Err(ApiError::validation(format!(
                    "input '{}': no contents and no raw_input_contents",
                    input.name
                )));
            }
        };
        inputs.push(Tensor {
            name: input.name,
            datatype,
            shape: input.shape,
            data,
        });
    }
    let mut shared_memory_outputs = Vec::new();
    for output in &request.outputs {
        if let Some(region) =
            wire_region_ref(&format!("output '{}'", output.name), &output.parameters)?
        {
            shared_memory_outputs.push((output.name.clone(), region));
        }
    }
    let outputs = (!request.outputs.is_empty())
        .then(|| request.outputs.into_iter().map(|o| o.name).collect());
    Ok(WireRequest {
        request: InferRequest {
            model: request.model_name,
            version: Some(request.model_version).filter(|v| !v.is_empty()),
            inputs,
            outputs,
        },
        shared_memory_inputs,
        shared_memory_outputs,
    })
}

fn typed_contents(
    name: &str,
    datatype: DataType,
    contents: v2::InferTensorContents,
) -> Result<Bytes, ApiError> {
    let mut bytes = Vec::new();
    let narrowing = |what: &str| {
        ApiError::validation(format!(
            "input '{name}': a {what} content value is out of range for {}",
            datatype.name()
        ))
    };
    macro_rules! narrow {
        ($values:expr, $ty:ty, $what:literal) => {
            for value in $values {
                let value = <$ty>::try_from(value).map_err(|_| narrowing($what))?;
                bytes.extend_from_slice(&value.to_le_bytes());
            }
        };
    }
    match datatype {
        DataType::Fp32 => contents
            .fp32_contents
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
        DataType::Fp64 => contents
            .fp64_contents
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
        DataType::Int8 => narrow!(contents.int_contents, i8, "int"),
        DataType::Int16 => narrow!(contents.int_contents, i16, "int"),
        DataType::Int32 => narrow!(contents.int_contents, i32, "int"),
        DataType::Int64 => narrow!(contents.int64_contents, i64, "int64"),
        DataType::Uint8 => narrow!(contents.uint_contents, u8, "uint"),
        DataType::Uint16 => narrow!(contents.uint_contents, u16, "uint"),
        DataType::Uint32 => narrow!(contents.uint_contents, u32, "uint"),
        DataType::Uint64 => narrow!(contents.uint64_contents, u64, "uint64"),
        DataType::Bool => contents
            .bool_contents
            .iter()
            .for_each(|&v| bytes.push(u8::from(v))),
        DataType::Fp16 | DataType::Bytes => {
            return Err(ApiError::validation(format!(
                "input '{name}': datatype {} is not supported by serve",
                datatype.name()
            )));
        }
    }
    Ok(Bytes::from(bytes))
}

/// Converts a response to the wire, outputs as raw contents, or, for those in
/// `in_regions` (already written there), an empty entry and the region's parameters.
pub fn to_wire(
    response: InferResponse,
    id: String,
    in_regions: &[(String, RegionRef)],
) -> v2::ModelInferResponse {
    use v2::infer_parameter::ParameterChoice;
    let mut raw = Vec::with_capacity(response.outputs.len());
    let outputs = response
        .outputs
        .into_iter()
        .map(|output| {
            let region = in_regions
                .iter()
                .find(|(name, _)| *name == output.name)
                .map(|(_, region)| region);
            let parameters = match region {
                None => HashMap::new(),
                Some(region) => {
                    let parameter = |choice| v2::InferParameter {
                        parameter_choice: Some(choice),
                    };
                    HashMap::from([
                        (
                            "shared_memory_region".to_string(),
                            parameter(ParameterChoice::StringParam(region.region.clone())),
                        ),
                        (
                            "shared_memory_offset".to_string(),
                            parameter(ParameterChoice::Int64Param(region.offset as i64)),
                        ),
                        (
                            "shared_memory_byte_size".to_string(),
                            parameter(ParameterChoice::Int64Param(output.data.len() as i64)),
                        ),
                    ])
                }
            };
            // An entry per output keeps `raw_output_contents` aligned with `outputs`.
            raw.push(if region.is_some() {
                Bytes::new()
            } else {
                output.data
            });
            v2::model_infer_response::InferOutputTensor {
                name: output.name,
                datatype: output.datatype.name().to_string(),
                shape: output.shape,
                parameters,
                contents: None,
            }
        })
        .collect();
    v2::ModelInferResponse {
        model_name: response.model,
        model_version: response.version,
        id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

/// An answer, and which of its outputs went into shared memory.
struct WireAnswer {
    response: InferResponse,
    in_regions: Vec<(String, RegionRef)>,
}

impl WireAnswer {
    fn into_wire(self, id: String) -> v2::ModelInferResponse {
        to_wire(self.response, id, &self.in_regions)
    }
}

/// Runs a wire request: shared-memory inputs read, outputs written to their regions.
async fn infer_wire(
    infer: &Infer,
    shared_memory: &SharedMemory,
    request: v2::ModelInferRequest,
) -> Result<WireAnswer, ApiError> {
    let wire = from_wire(request)?.resolve(shared_memory)?;
    let response = infer.infer(wire.request).await?;
    for output in &response.outputs {
        if let Some((_, region)) = wire
            .shared_memory_outputs
            .iter()
            .find(|(name, _)| *name == output.name)
        {
            shared_memory.write(region, &output.data)?;
        }
    }
    Ok(WireAnswer {
        response,
        in_regions: wire.shared_memory_outputs,
    })
}

fn config_to_wire(model: &crate::infer::LoadedVersion) -> v2::ModelConfig {
    use crate::model_config::VersionPolicy;
    let config = &model.config;
    let data_type = |dtype: DataType| -> i32 {
        v2::DataType::from_str_name(&dtype.config_name()).map_or(0, |t| t as i32)
    };
    let policy = match &config.version_policy {
        VersionPolicy::Latest(n) => {
            v2::model_version_policy::PolicyChoice::Latest(v2::model_version_policy::Latest {
                num_versions: *n,
            })
        }
        VersionPolicy::All => {
            v2::model_version_policy::PolicyChoice::All(v2::model_version_policy::All {})
        }
        VersionPolicy::Specific(versions) => {
            v2::model_version_policy::PolicyChoice::Specific(v2::model_version_policy::Specific {
                versions: versions.clone(),
            })
        }
    };
    v2::ModelConfig {
        name: model.name.clone(),
        platform: "onnxruntime_onnx".into(),
        backend: "onnxruntime".into(),
        runtime: String::new(),
        version_policy: Some(v2::ModelVersionPolicy {
            policy_choice: Some(policy),
        }),
        max_batch_size: i32::try_from(config.max_batch_size).unwrap_or(i32::MAX),
        input: config
            .inputs
            .iter()
            .map(|t| v2::ModelInput {
                name: t.name.clone(),
                data_type: data_type(t.datatype),
                dims: t.dims.clone(),
                ..Default::default()
            })
            .collect(),
        output: config
            .outputs
            .iter()
            .map(|t| v2::ModelOutput {
                name: t.name.clone(),
                data_type: data_type(t.datatype),
                dims: t.dims.clone(),
                ..Default::default()
            })
            .collect(),
        instance_group: config
            .instance_groups
            .iter()
            .map(|group| v2::ModelInstanceGroup {
                name: model.name.clone(),
                count: i32::try_from(group.count).unwrap_or(1),
                gpus: group.gpus.clone(),
                kind: match group.kind {
                    InstanceKind::Cpu => v2::model_instance_group::Kind::Cpu,
                    InstanceKind::Gpu => v2::model_instance_group::Kind::Gpu,
                } as i32,
            })
            .collect(),
        default_model_filename: config.default_model_filename.clone(),
        scheduling_choice: config.dynamic_batching.as_ref().map(|batching| {
            v2::model_config::SchedulingChoice::DynamicBatching(v2::ModelDynamicBatching {
                preferred_batch_size: batching
                    .preferred_batch_sizes
                    .iter()
                    .map(|&size| i32::try_from(size).unwrap_or(i32::MAX))
                    .collect(),
                max_queue_delay_microseconds: batching.max_queue_delay.as_micros() as u64,
                preserve_ordering: false,
            })
        }),
    }
}

fn duration(d: &Duration64) -> Option<v2::StatisticDuration> {
    let (count, ns) = d.get();
    Some(v2::StatisticDuration { count, ns })
}

type StreamResult =
    Pin<Box<dyn Stream<Item = Result<v2::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        _: Request<v2::ServerLiveRequest>,
    ) -> Result<Response<v2::ServerLiveResponse>, Status> {
        Ok(Response::new(v2::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<v2::ServerReadyRequest>,
    ) -> Result<Response<v2::ServerReadyResponse>, Status> {
        Ok(Response::new(v2::ServerReadyResponse {
            ready: self.infer.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<v2::ModelReadyRequest>,
    ) -> Result<Response<v2::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        // As Triton: an unknown or unloaded model is simply not ready.
        let ready = self
            .infer
            .model(&request.name, Some(&request.version))
            .is_ok();
        Ok(Response::new(v2::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<v2::ServerMetadataRequest>,
    ) -> Result<Response<v2::ServerMetadataResponse>, Status> {
        Ok(Response::new(v2::ServerMetadataResponse {
            name: "cardet-serve".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: self
                .shared_memory
                .extensions()
                .into_iter()
                .map(str::to_string)
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<v2::ModelMetadataRequest>,
    ) -> Result<Response<v2::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let model = self
            .infer
            .model(&request.name, Some(&request.version))
            .map_err(Status::from)?;
        let tensors = |list: &[crate::model_config::TensorConfig]| {
            list.iter()
                .map(|t| {
                    let mut shape = t.dims.clone();
                    if model.config.max_batch_size > 0 {
                        shape.insert(0, -1);
                    }
                    v2::model_metadata_response::TensorMetadata {
                        name: t.name.clone(),
                        datatype: t.datatype.name().into(),
                        shape,
                    }
                })
                .collect()
        };
        Ok(Response::new(v2::ModelMetadataResponse {
            name: model.name.clone(),
            versions: self
                .infer
                .versions(&model.name)
                .iter()
                .map(i64::to_string)
                .collect(),
            platform: "onnxruntime_onnx".into(),
            inputs: tensors(&model.config.inputs),
            outputs: tensors(&model.config.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<v2::ModelInferRequest>,
    ) -> Result<Response<v2::ModelInferResponse>, Status> {
        let request = request.into_inner();
        let id = request.id.clone();
        let response = infer_wire(&self.infer, &self.shared_memory, request)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(response.into_wire(id)))
    }

    type ModelStreamInferStream = StreamResult;

    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<v2::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let mut incoming = request.into_inner();
        let infer = self.infer.clone();
        let shared_memory = self.shared_memory.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let request = match incoming.message().await {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        break;
                    }
                };
                let id = request.id.clone();
                let message = match infer_wire(&infer, &shared_memory, request).await {
                    Ok(response) => v2::ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(response.into_wire(id)),
                    },
                    Err(error) => v2::ModelStreamInferResponse {
                        error_message: error.message,
                        infer_response: Some(v2::ModelInferResponse {
                            id,
                            ..Default::default()
                        }),
                    },
                };
                if sender.send(Ok(message)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn model_config(
        &self,
        request: Request<v2::ModelConfigRequest>,
    ) -> Result<Response<v2::ModelConfigResponse>, Status> {
        let request = request.into_inner();
        let model = self
            .infer
            .model(&request.name, Some(&request.version))
            .map_err(Status::from)?;
        Ok(Response::new(v2::ModelConfigResponse {
            config: Some(config_to_wire(&model)),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<v2::ModelStatisticsRequest>,
    ) -> Result<Response<v2::ModelStatisticsResponse>, Status> {
        let request = request.into_inner();
        let rows = self
            .infer
            .statistics(Some(&request.name), Some(&request.version))
            .map_err(Status::from)?;
        let model_stats = rows
            .into_iter()
            .map(|row| {
                let s = &row.stats;
                v2::ModelStatistics {
                    name: row.name,
                    version: row.version.to_string(),
                    last_inference: s
                        .last_inference_ms
                        .load(std::sync::atomic::Ordering::Relaxed),
                    inference_count: s.inference_count.load(std::sync::atomic::Ordering::Relaxed),
                    execution_count: s.execution_count.load(std::sync::atomic::Ordering::Relaxed),
                    inference_stats: Some(v2::InferStatistics {
                        success: duration(&s.success),
                        fail: duration(&s.failure),
                        queue: duration(&s.queue),
                        compute_input: duration(&s.compute_input),
                        compute_infer: duration(&s.compute_infer),
                        compute_output: duration(&s.compute_output),
                        cache_hit: None,
                        cache_miss: None,
                    }),
                    batch_stats: s
                        .batch_rows()
                        .into_iter()
                        .map(|(batch_size, count, ns)| v2::InferBatchStatistics {
                            batch_size,
                            compute_input: None,
                            compute_infer: Some(v2::StatisticDuration { count, ns }),
                            compute_output: None,
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(v2::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        request: Request<v2::RepositoryIndexRequest>,
    ) -> Result<Response<v2::RepositoryIndexResponse>, Status> {
        let index = self
            .infer
            .index(request.into_inner().ready)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(v2::RepositoryIndexResponse {
            models: index
                .into_iter()
                .map(|entry| v2::repository_index_response::ModelIndex {
                    name: entry.name,
                    version: entry.version,
                    state: entry.state,
                    reason: entry.reason,
                })
                .collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        request: Request<v2::RepositoryModelLoadRequest>,
    ) -> Result<Response<v2::RepositoryModelLoadResponse>, Status> {
        let request = request.into_inner();
        if let Some(name) = request
            .parameters
            .keys()
            .find(|k| k.as_str() == "config" || k.starts_with("file:"))
        {
            return Err(Status::invalid_argument(format!(
                "load parameter '{name}' is not supported by serve"
            )));
        }
        self.infer
            .repository_load(&request.model_name)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(v2::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<v2::RepositoryModelUnloadRequest>,
    ) -> Result<Response<v2::RepositoryModelUnloadResponse>, Status> {
        self.infer
            .repository_unload(&request.into_inner().model_name)
            .map_err(Status::from)?;
        Ok(Response::new(v2::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<v2::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<v2::SystemSharedMemoryStatusResponse>, Status> {
        let name = request.into_inner().name;
        let regions = self
            .shared_memory
            .status(Some(name.as_str()).filter(|name| !name.is_empty()))
            .map_err(Status::from)?;
        Ok(Response::new(v2::SystemSharedMemoryStatusResponse {
            regions: regions
                .into_iter()
                .map(|region| {
                    (
                        region.name.clone(),
                        v2::system_shared_memory_status_response::RegionStatus {
                            name: region.name,
                            key: region.key,
                            offset: region.offset,
                            byte_size: region.byte_size,
                        },
                    )
                })
                .collect(),
        }))
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<v2::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<v2::SystemSharedMemoryRegisterResponse>, Status> {
        let request = request.into_inner();
        self.shared_memory
            .register(
                &request.name,
                &request.key,
                request.offset,
                request.byte_size,
            )
            .map_err(Status::from)?;
        Ok(Response::new(v2::SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<v2::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<v2::SystemSharedMemoryUnregisterResponse>, Status> {
        let name = request.into_inner().name;
        self.shared_memory
            .unregister(Some(name.as_str()).filter(|name| !name.is_empty()))
            .map_err(Status::from)?;
        Ok(Response::new(v2::SystemSharedMemoryUnregisterResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(request: v2::ModelInferRequest, expected: Result<Vec<Tensor>, &str>) {
        match (from_wire(request), expected) {
            (Ok(actual), Ok(expected)) => assert_eq!(actual.request.inputs, expected),
            (Err(error), Err(expected)) => {
                assert_eq!(error.kind, ErrorKind::Validation);
                assert!(
                    error.message.contains(expected),
                    "{:?} lacks {expected:?}",
                    error.message
                );
            }
            (actual, expected) => panic!("{actual:?} but expected {expected:?}"),
        }
    }

    fn input(
        datatype: &str,
        contents: Option<v2::InferTensorContents>,
    ) -> v2::model_infer_request::InferInputTensor {
        v2::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape: vec![2],
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn raw_and_typed_contents_become_the_same_tensor() {
        let expected = Tensor::from_f32("x", vec![2], &[1.0, -2.5]);
        check(
            v2::ModelInferRequest {
                inputs: vec![input("FP32", None)],
                raw_input_contents: vec![expected.data.clone()],
                ..Default::default()
            },
            Ok(vec![expected.clone()]),
        );
        check(
            v2::ModelInferRequest {
                inputs: vec![input(
                    "FP32",
                    Some(v2::InferTensorContents {
                        fp32_contents: vec![1.0, -2.5],
                        ..Default::default()
                    }),
                )],
                ..Default::default()
            },
            Ok(vec![expected]),
        );
    }

    #[test]
    fn contradictory_contents_are_refused() {
        check(
            v2::ModelInferRequest {
                inputs: vec![input("FP32", None), input("FP32", None)],
                raw_input_contents: vec![Bytes::new()],
                ..Default::default()
            },
            Err("raw_input_contents has 1 entries for 2 inputs"),
        );
        check(
            v2::ModelInferRequest {
                inputs: vec![input("FP32", None)],
                ..Default::default()
            },
            Err("no contents and no raw_input_contents"),
        );
        check(
            v2::ModelInferRequest {
                inputs: vec![input("REAL", None)],
                ..Default::default()
            },
            Err("unknown datatype 'REAL'"),
        );
        check(
            v2::ModelInferRequest {
                inputs: vec![input(
                    "INT8",
                    Some(v2::InferTensorContents {
                        int_contents: vec![1, 1000],
                        ..Default::default()
                    }),
                )],
                ..Default::default()
            },
            Err("out of range for INT8"),
        );
    }

    #[test]
    fn shared_memory_parameters_name_a_region_instead_of_contents() {
        use v2::infer_parameter::ParameterChoice;
        let parameter = |choice| v2::InferParameter {
            parameter_choice: Some(choice),
        };
        let mut tensor = input("FP32", None);
        tensor.parameters = HashMap::from([
            (
                "shared_memory_region".to_string(),
                parameter(ParameterChoice::StringParam("in".into())),
            ),
            (
                "shared_memory_byte_size".to_string(),
                parameter(ParameterChoice::Int64Param(8)),
            ),
        ]);
        let request = v2::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![tensor.clone()],
            ..Default::default()
        };
        let wire = from_wire(request.clone()).expect("parses");
        assert_eq!(
            wire.shared_memory_inputs,
            vec![(
                0,
                RegionRef {
                    region: "in".into(),
                    offset: 0,
                    byte_size: 8
                }
            )]
        );
        assert!(wire.request.inputs[0].data.is_empty());
        tensor.parameters.insert(
            "shared_memory_byte_size".to_string(),
            parameter(ParameterChoice::Int64Param(4)),
        );
        let error = from_wire(v2::ModelInferRequest {
            inputs: vec![tensor],
            ..request
        })
        .expect_err("4 bytes for 2 FP32 values");
        assert!(
            error.message.contains("does not match shape"),
            "{}",
            error.message
        );
    }
}
