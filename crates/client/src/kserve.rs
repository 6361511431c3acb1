//! The KServe v2 (Open Inference Protocol) client: HTTP/REST with Triton's binary
//! tensor extension or plain JSON, and gRPC. Only this module knows the wire.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::Error;

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

/// An FP32 tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorF32 {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

/// A connection to one server, cheap to clone (connections are pooled).
#[derive(Clone, Debug)]
pub struct KserveClient {
    url: String,
    protocol: Protocol,
    transport: Transport,
}

#[derive(Clone, Debug)]
enum Transport {
    Http(reqwest::Client),
    Grpc(pb::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>),
}

/// The largest gRPC message either way: a batch of 8 images at 640 is 39 MB.
const MAX_GRPC_MESSAGE_BYTES: usize = 512 << 20;

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
                    .connect_timeout(Duration::from_secs(5));
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

    /// Runs one FP32 input through the model and returns the named FP32 output.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        input: &TensorF32,
        output_name: &str,
    ) -> Result<TensorF32, Error> {
        let expected: i64 = input.shape.iter().product();
        if expected != input.data.len() as i64 {
            return Err(Error::InvalidArgument(format!(
                "input {} has shape {:?} but {} values",
                input.name,
                input.shape,
                input.data.len()
            )));
        }
        match (&self.transport, self.protocol) {
            (Transport::Http(http), Protocol::HttpJson) => {
                self.infer_http_json(http, model, version, input, output_name)
                    .await
            }
            (Transport::Http(http), _) => {
                self.infer_http_binary(http, model, version, input, output_name)
                    .await
            }
            (Transport::Grpc(grpc), _) => {
                self.infer_grpc(grpc, model, version, input, output_name)
                    .await
            }
        }
    }

    async fn infer_http_binary(
        &self,
        http: &reqwest::Client,
        model: &str,
        version: Option<&str>,
        input: &TensorF32,
        output_name: &str,
    ) -> Result<TensorF32, Error> {
        let header = json!({
            "inputs": [{
                "name": input.name, "shape": input.shape, "datatype": "FP32",
                "parameters": { "binary_data_size": input.data.len() * 4 },
            }],
            "outputs": [{ "name": output_name, "parameters": { "binary_data": true } }],
        })
        .to_string();
        let mut body = Vec::with_capacity(header.len() + input.data.len() * 4);
        body.extend_from_slice(header.as_bytes());
        append_le_f32(&mut body, &input.data);
        let response = http
            .post(format!(
                "{}{}/infer",
                self.url,
                Self::model_path(model, version)
            ))
            .header("Inference-Header-Content-Length", header.len())
            .header("Content-Type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|error| self.send_error(error))?;
        self.read_http_answer(response, model, output_name).await
    }

    async fn infer_http_json(
        &self,
        http: &reqwest::Client,
        model: &str,
        version: Option<&str>,
        input: &TensorF32,
        output_name: &str,
    ) -> Result<TensorF32, Error> {
        let body = json!({
            "inputs": [{
                "name": input.name, "shape": input.shape, "datatype": "FP32",
                "data": input.data,
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
        self.read_http_answer(response, model, output_name).await
    }

    /// Reads an infer answer: a JSON header, and binary outputs after it when the
    /// server says so in `Inference-Header-Content-Length`.
    async fn read_http_answer(
        &self,
        response: reqwest::Response,
        model: &str,
        output_name: &str,
    ) -> Result<TensorF32, Error> {
        let status = response.status();
        let header_length = response
            .headers()
            .get("Inference-Header-Content-Length")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok());
        let body = response
            .bytes()
            .await
            .map_err(|error| self.send_error(error))?;
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
        let (header, mut binary) = body.split_at(header_length);
        let answer: InferAnswer = serde_json::from_slice(header)
            .map_err(|error| protocol_error(format!("infer answer: {error}")))?;
        for output in answer.outputs {
            let binary_size = output
                .parameters
                .as_ref()
                .and_then(|parameters| parameters.get("binary_data_size"))
                .and_then(Value::as_u64)
                .map(|size| size as usize);
            let data = match (binary_size, output.data) {
                (Some(size), _) => {
                    if size > binary.len() {
                        return Err(protocol_error(format!(
                            "output {} claims {size} binary bytes, {} left",
                            output.name,
                            binary.len()
                        )));
                    }
                    let (bytes, rest) = binary.split_at(size);
                    binary = rest;
                    if output.name != output_name {
                        continue;
                    }
                    if output.datatype != "FP32" {
                        return Err(protocol_error(format!(
                            "output {} is {}, not FP32",
                            output.name, output.datatype
                        )));
                    }
                    le_bytes_to_f32(bytes)
                }
                (None, Some(data)) if output.name == output_name => data,
                (None, _) => continue,
            };
            let expected: i64 = output.shape.iter().product();
            if expected != data.len() as i64 {
                return Err(protocol_error(format!(
                    "output {} has shape {:?} but {} values",
                    output.name,
                    output.shape,
                    data.len()
                )));
            }
            return Ok(TensorF32 {
                name: output.name,
                shape: output.shape,
                data,
            });
        }
        Err(protocol_error(format!("no output {output_name}")))
    }

    async fn infer_grpc(
        &self,
        grpc: &pb::grpc_inference_service_client::GrpcInferenceServiceClient<
            tonic::transport::Channel,
        >,
        model: &str,
        version: Option<&str>,
        input: &TensorF32,
        output_name: &str,
    ) -> Result<TensorF32, Error> {
        let mut raw = Vec::with_capacity(input.data.len() * 4);
        append_le_f32(&mut raw, &input.data);
        let request = pb::ModelInferRequest {
            model_name: model.to_string(),
            model_version: version.unwrap_or_default().to_string(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: input.name.clone(),
                datatype: "FP32".to_string(),
                shape: input.shape.clone(),
                ..Default::default()
            }],
            outputs: vec![pb::model_infer_request::InferRequestedOutputTensor {
                name: output_name.to_string(),
                ..Default::default()
            }],
            raw_input_contents: vec![raw.into()],
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
        let data = if answer.raw_output_contents.is_empty() {
            output
                .contents
                .as_ref()
                .map(|contents| contents.fp32_contents.clone())
                .unwrap_or_default()
        } else {
            let bytes = answer
                .raw_output_contents
                .get(position)
                .ok_or_else(|| protocol_error(format!("no raw contents for {output_name}")))?;
            le_bytes_to_f32(bytes)
        };
        let expected: i64 = output.shape.iter().product();
        if expected != data.len() as i64 {
            return Err(protocol_error(format!(
                "output {} has shape {:?} but {} values",
                output.name,
                output.shape,
                data.len()
            )));
        }
        Ok(TensorF32 {
            name: output.name.clone(),
            shape: output.shape.clone(),
            data,
        })
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

/// Appends `values` as little-endian bytes (the v2 binary tensor layout): on a
/// little-endian machine one copy of the floats' own bytes, with no zero fill first
/// (the fill and then the overwrite were a memset and a copy of 4.9 MB per image).
fn append_le_f32(bytes: &mut Vec<u8>, values: &[f32]) {
    #[cfg(target_endian = "little")]
    bytes.extend_from_slice(bytemuck::cast_slice(values));
    #[cfg(not(target_endian = "little"))]
    for value in values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_appended_as_little_endian_bytes() {
        let mut bytes = b"{}".to_vec();
        append_le_f32(&mut bytes, &[1.0, -2.5, f32::MIN_POSITIVE]);
        let mut expected = b"{}".to_vec();
        for value in [1.0_f32, -2.5, f32::MIN_POSITIVE] {
            expected.extend_from_slice(&value.to_le_bytes());
        }
        assert_eq!(bytes, expected);
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
