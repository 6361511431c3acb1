//! The REST wire: KServe v2 JSON bodies and Triton's binary tensor data extension.
//!
//! [`parse_infer_request`] turns a request body (JSON, or a JSON header followed by
//! binary tensor data when `Inference-Header-Content-Length` is given) into internal
//! [`Tensor`]s, and [`encode_infer_response`] does the reverse. Both are pure
//! functions over bytes, so the fuzz targets drive them directly. Every error is a
//! [`ErrorKind::Validation`](crate::error::ErrorKind) naming the field.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::infer::InferResponse;
use crate::shared_memory::RegionRef;
use crate::tensor::{DataType, Tensor};

#[derive(Debug, Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutputJson>>,
}

#[derive(Debug, Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// A REST inference request in internal terms, plus how to answer it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// `None`: every output.
    pub outputs: Option<Vec<String>>,
    /// Whether each named output goes back as binary data.
    pub binary_outputs: Vec<(String, bool)>,
    /// For outputs not named in `binary_outputs`.
    pub binary_default: bool,
    /// Inputs (by index in `inputs`, their data left empty) to read from a
    /// registered shared-memory region.
    pub shared_memory_inputs: Vec<(usize, RegionRef)>,
    /// Outputs to write into a registered shared-memory region instead of the body.
    pub shared_memory_outputs: Vec<(String, RegionRef)>,
}

impl ParsedRequest {
    /// Where the named output goes when it goes to shared memory.
    pub fn shared_memory_output(&self, output: &str) -> Option<&RegionRef> {
        self.shared_memory_outputs
            .iter()
            .find(|(name, _)| name == output)
            .map(|(_, reference)| reference)
    }

    pub fn binary(&self, output: &str) -> bool {
        self.binary_outputs
            .iter()
            .find(|(name, _)| name == output)
            .map_or(self.binary_default, |(_, binary)| *binary)
    }
}

/// Parses a request body; `header_length` is the `Inference-Header-Content-Length` value.
pub fn parse_infer_request(
    body: Bytes,
    header_length: Option<&str>,
) -> Result<ParsedRequest, ApiError> {
    let (json, mut binary) = match header_length {
        None => (body, Bytes::new()),
        Some(text) => {
            let length: usize = text.trim().parse().map_err(|_| {
                ApiError::validation(format!(
                    "Inference-Header-Content-Length '{text}' is not a byte count"
                ))
            })?;
            if length > body.len() {
                return Err(ApiError::validation(format!(
                    "Inference-Header-Content-Length {length} is past the end of the {}-byte body",
                    body.len()
                )));
            }
            let binary = body.slice(length..);
            (body.slice(..length), binary)
        }
    };
    let request: RequestJson = serde_json::from_slice(&json)
        .map_err(|error| ApiError::validation(format!("malformed request JSON: {error}")))?;
    let binary_default = match request
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_output"))
    {
        None => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => {
            return Err(ApiError::validation(
                "parameter 'binary_data_output' must be a boolean",
            ));
        }
    };
    let mut inputs = Vec::with_capacity(request.inputs.len());
    let mut shared_memory_inputs = Vec::new();
    for input in request.inputs {
        let datatype = DataType::from_name(&input.datatype).ok_or_else(|| {
            ApiError::validation(format!(
                "input '{}': unknown datatype '{}'",
                input.name, input.datatype
            ))
        })?;
        let element_size = datatype.size().ok_or_else(|| {
            ApiError::validation(format!(
                "input '{}': datatype {} is not supported by serve",
                input.name, input.datatype
            ))
        })?;
        let count = Tensor::element_count(&input.shape).ok_or_else(|| {
            ApiError::validation(format!(
                "input '{}': shape {:?} has a negative or too large dimension",
                input.name, input.shape
            ))
        })?;
        let binary_size = match input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
        {
            None => None,
            Some(value) => Some(
                value
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        ApiError::validation(format!(
                            "input '{}': binary_data_size must be a non-negative integer",
                            input.name
                        ))
                    })?,
            ),
        };
        let region = region_ref(
            &format!("input '{}'", input.name),
            input.parameters.as_ref(),
        )?;
        if let Some(region) = region {
            if binary_size.is_some() || input.data.is_some() {
                return Err(ApiError::validation(format!(
                    "input '{}': shared-memory parameters with 'data' or binary_data_size",
                    input.name
                )));
            }
            let tensor = region_input(input.name, datatype, input.shape, &region)?;
            shared_memory_inputs.push((inputs.len(), region));
            inputs.push(tensor);
            continue;
        }
        let data = match (binary_size, input.data) {
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(format!(
                    "input '{}': both 'data' and binary_data_size are given",
                    input.name
                )));
            }
            (None, None) => {
                return Err(ApiError::validation(format!(
                    "input '{}': no 'data' and no binary_data_size",
                    input.name
                )));
            }
            (Some(size), None) => {
                if size > binary.len() {
                    return Err(ApiError::validation(format!(
                        "input '{}': binary_data_size {size} but only {} bytes of binary data remain (truncated body?)",
                        input.name,
                        binary.len()
                    )));
                }
                let expected = count.checked_mul(element_size);
                if expected != Some(size) {
                    return Err(ApiError::validation(format!(
                        "input '{}': binary_data_size {size} does not match shape {:?} of {} ({} bytes)",
                        input.name,
                        input.shape,
                        datatype.name(),
                        expected.map_or("too many".to_string(), |n| n.to_string())
                    )));
                }
                binary.split_to(size)
            }
            (None, Some(data)) => json_to_bytes(&input.name, datatype, &data, count)?,
        };
        inputs.push(Tensor {
            name: input.name,
            datatype,
            shape: input.shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(ApiError::validation(format!(
            "{} bytes of binary data after the last input",
            binary.len()
        )));
    }
    let mut binary_outputs = Vec::new();
    let mut shared_memory_outputs = Vec::new();
    let outputs = match request.outputs {
        None => None,
        Some(requested) => {
            let mut names = Vec::with_capacity(requested.len());
            for output in requested {
                if let Some(parameters) = &output.parameters {
                    if parameters.contains_key("classification") {
                        return Err(ApiError::validation(format!(
                            "output '{}': the classification extension is not supported",
                            output.name
                        )));
                    }
                    if let Some(region) =
                        region_ref(&format!("output '{}'", output.name), Some(parameters))?
                    {
                        shared_memory_outputs.push((output.name.clone(), region));
                    }
                    match parameters.get("binary_data") {
                        None => {}
                        Some(Value::Bool(flag)) => {
                            binary_outputs.push((output.name.clone(), *flag))
                        }
                        Some(_) => {
                            return Err(ApiError::validation(format!(
                                "output '{}': binary_data must be a boolean",
                                output.name
                            )));
                        }
                    }
                }
                names.push(output.name);
            }
            Some(names)
        }
    };
    Ok(ParsedRequest {
        id: request.id,
        inputs,
        outputs,
        binary_outputs,
        binary_default,
        shared_memory_inputs,
        shared_memory_outputs,
    })
}

/// An input whose bytes are in `region`, checked against its shape; its data is
/// left empty until the region is read.
pub(crate) fn region_input(
    name: String,
    datatype: DataType,
    shape: Vec<i64>,
    region: &RegionRef,
) -> Result<Tensor, ApiError> {
    let expected = Tensor::element_count(&shape)
        .zip(datatype.size())
        .and_then(|(count, size)| count.checked_mul(size));
    if expected.and_then(|n| u64::try_from(n).ok()) != Some(region.byte_size) {
        return Err(ApiError::validation(format!(
            "input '{name}': shared_memory_byte_size {} does not match shape {shape:?} of {} ({} bytes)",
            region.byte_size,
            datatype.name(),
            expected.map_or("too many".to_string(), |n| n.to_string())
        )));
    }
    Ok(Tensor {
        name,
        datatype,
        shape,
        data: Bytes::new(),
    })
}

/// The `shared_memory_*` parameters of an input or requested output, if any: the
/// region and byte size together (the offset defaults to 0), as Triton requires.
pub(crate) fn region_ref(
    what: &str,
    parameters: Option<&Map<String, Value>>,
) -> Result<Option<RegionRef>, ApiError> {
    let Some(parameters) = parameters else {
        return Ok(None);
    };
    let region = parameters.get("shared_memory_region");
    let byte_size = parameters.get("shared_memory_byte_size");
    let offset = parameters.get("shared_memory_offset");
    let number = |value: Option<&Value>, field: &str| -> Result<u64, ApiError> {
        match value {
            None => Ok(0),
            Some(value) => value.as_u64().ok_or_else(|| {
                ApiError::validation(format!("{what}: {field} must be a non-negative integer"))
            }),
        }
    };
    match (region, byte_size) {
        (None, None) if offset.is_none() => Ok(None),
        (Some(region), Some(_)) => {
            let region = region.as_str().ok_or_else(|| {
                ApiError::validation(format!("{what}: shared_memory_region must be a string"))
            })?;
            Ok(Some(RegionRef {
                region: region.to_string(),
                offset: number(offset, "shared_memory_offset")?,
                byte_size: number(byte_size, "shared_memory_byte_size")?,
            }))
        }
        _ => Err(ApiError::validation(format!(
            "{what}: shared_memory_region and shared_memory_byte_size go together"
        ))),
    }
}

/// Flattens JSON `data` (nested or flat) into little-endian bytes, checking each element.
fn json_to_bytes(
    name: &str,
    datatype: DataType,
    data: &Value,
    count: usize,
) -> Result<Bytes, ApiError> {
    let element_size = datatype.size().unwrap_or(1);
    // Never reserve from the claimed shape alone: a tiny body may claim a huge shape.
    let mut bytes = Vec::with_capacity(count.min(1 << 20).saturating_mul(element_size));
    let mut n_elements = 0usize;
    // Depth-first over nested arrays, preserving row-major order.
    let mut pending: Vec<std::slice::Iter<'_, Value>> = Vec::new();
    let mut push = |value: &Value, bytes: &mut Vec<u8>| -> Result<(), ApiError> {
        n_elements += 1;
        if n_elements > count {
            return Err(ApiError::validation(format!(
                "input '{name}': more data elements than the shape's {count}"
            )));
        }
        encode_element(name, datatype, value, n_elements - 1, bytes)
    };
    if let Value::Array(items) = data {
        pending.push(items.iter());
    } else {
        push(data, &mut bytes)?;
    }
    while let Some(iter) = pending.last_mut() {
        match iter.next() {
            None => {
                pending.pop();
            }
            Some(Value::Array(items)) => {
                if pending.len() > 64 {
                    return Err(ApiError::validation(format!(
                        "input '{name}': data nested too deeply"
                    )));
                }
                pending.push(items.iter());
            }
            Some(value) => push(value, &mut bytes)?,
        }
    }
    if n_elements != count {
        return Err(ApiError::validation(format!(
            "input '{name}': shape needs {count} elements, data has {n_elements}"
        )));
    }
    Ok(Bytes::from(bytes))
}

fn encode_element(
    name: &str,
    datatype: DataType,
    value: &Value,
    index: usize,
    bytes: &mut Vec<u8>,
) -> Result<(), ApiError> {
    let wrong = || {
        ApiError::validation(format!(
            "input '{name}': data element {index} ({value}) is not a {} value",
            datatype.name()
        ))
    };
    macro_rules! integer {
        ($ty:ty) => {{
            let number = value
                .as_i64()
                .and_then(|n| <$ty>::try_from(n).ok())
                .or_else(|| value.as_u64().and_then(|n| <$ty>::try_from(n).ok()))
                .ok_or_else(wrong)?;
            bytes.extend_from_slice(&number.to_le_bytes());
        }};
    }
    match datatype {
        DataType::Fp32 => {
            let number = value.as_f64().ok_or_else(wrong)?;
            bytes.extend_from_slice(&(number as f32).to_le_bytes());
        }
        DataType::Fp64 => {
            let number = value.as_f64().ok_or_else(wrong)?;
            bytes.extend_from_slice(&number.to_le_bytes());
        }
        DataType::Int8 => integer!(i8),
        DataType::Int16 => integer!(i16),
        DataType::Int32 => integer!(i32),
        DataType::Int64 => integer!(i64),
        DataType::Uint8 => integer!(u8),
        DataType::Uint16 => integer!(u16),
        DataType::Uint32 => integer!(u32),
        DataType::Uint64 => integer!(u64),
        DataType::Bool => {
            let flag = value.as_bool().ok_or_else(wrong)?;
            bytes.push(u8::from(flag));
        }
        DataType::Fp16 | DataType::Bytes => return Err(wrong()),
    }
    Ok(())
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputJson<'a>>,
}

#[derive(Serialize)]
struct OutputJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<OutputParameters<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutputParameters<'a> {
    Binary {
        binary_data_size: usize,
    },
    /// The output was written into the client's region, not the body.
    SharedMemory {
        shared_memory_region: &'a str,
        shared_memory_offset: u64,
        shared_memory_byte_size: u64,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonData {
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Signed(Vec<i64>),
    Unsigned(Vec<u64>),
    Bool(Vec<bool>),
}

/// An encoded response body: the JSON header, then each binary output as the very
/// buffer the backend wrote it to (shared, not copied: YOLOv8n's output is 2.7 MB,
/// and the socket write reads it from there).
#[derive(Debug)]
pub struct EncodedResponse {
    /// The JSON header first, then the binary outputs in order.
    pub parts: Vec<Bytes>,
    /// The JSON header's length when binary data follows it.
    pub header_length: Option<usize>,
}

#[cfg(test)]
impl EncodedResponse {
    /// The body as one contiguous buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts.concat()
    }
}

/// Encodes a response as JSON, binary outputs after the header where asked for.
pub fn encode_infer_response(response: &InferResponse, request: &ParsedRequest) -> EncodedResponse {
    let mut binary_parts: Vec<Bytes> = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .map(|output| {
            if let Some(region) = request.shared_memory_output(&output.name) {
                return OutputJson {
                    name: &output.name,
                    datatype: output.datatype.name(),
                    shape: &output.shape,
                    parameters: Some(OutputParameters::SharedMemory {
                        shared_memory_region: &region.region,
                        shared_memory_offset: region.offset,
                        shared_memory_byte_size: output.data.len() as u64,
                    }),
                    data: None,
                };
            }
            let binary = request.binary(&output.name);
            if binary {
                binary_parts.push(output.data.clone());
            }
            OutputJson {
                name: &output.name,
                datatype: output.datatype.name(),
                shape: &output.shape,
                parameters: binary.then(|| OutputParameters::Binary {
                    binary_data_size: output.data.len(),
                }),
                data: (!binary).then(|| json_data(output)),
            }
        })
        .collect();
    let json = ResponseJson {
        model_name: &response.model,
        model_version: &response.version,
        id: request.id.as_deref(),
        outputs,
    };
    let header = Bytes::from(serde_json::to_vec(&json).unwrap_or_else(|_| b"{}".to_vec()));
    let header_length = (!binary_parts.is_empty()).then_some(header.len());
    let mut parts = Vec::with_capacity(1 + binary_parts.len());
    parts.push(header);
    parts.extend(binary_parts);
    EncodedResponse {
        parts,
        header_length,
    }
}

fn json_data(tensor: &Tensor) -> JsonData {
    macro_rules! decode {
        ($ty:ty, $size:literal) => {
            tensor.data.chunks_exact($size).map(|chunk| {
                let mut raw = [0u8; $size];
                raw.copy_from_slice(chunk);
                <$ty>::from_le_bytes(raw)
            })
        };
    }
    match tensor.datatype {
        DataType::Fp32 => JsonData::Fp32(decode!(f32, 4).collect()),
        DataType::Fp64 => JsonData::Fp64(decode!(f64, 8).collect()),
        DataType::Int8 => JsonData::Signed(decode!(i8, 1).map(i64::from).collect()),
        DataType::Int16 => JsonData::Signed(decode!(i16, 2).map(i64::from).collect()),
        DataType::Int32 => JsonData::Signed(decode!(i32, 4).map(i64::from).collect()),
        DataType::Int64 => JsonData::Signed(decode!(i64, 8).collect()),
        DataType::Uint8 => JsonData::Unsigned(decode!(u8, 1).map(u64::from).collect()),
        DataType::Uint16 => JsonData::Unsigned(decode!(u16, 2).map(u64::from).collect()),
        DataType::Uint32 => JsonData::Unsigned(decode!(u32, 4).map(u64::from).collect()),
        DataType::Uint64 => JsonData::Unsigned(decode!(u64, 8).collect()),
        DataType::Bool => JsonData::Bool(tensor.data.iter().map(|&b| b != 0).collect()),
        DataType::Fp16 | DataType::Bytes => JsonData::Unsigned(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &[u8], header_length: Option<&str>, expected: Result<Vec<Tensor>, &str>) {
        let parsed = parse_infer_request(Bytes::copy_from_slice(body), header_length);
        match (parsed, expected) {
            (Ok(parsed), Ok(expected)) => assert_eq!(parsed.inputs, expected),
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

    fn x(shape: Vec<i64>, values: &[f32]) -> Tensor {
        Tensor::from_f32("x", shape, values)
    }

    #[test]
    fn json_data_is_flat_or_nested() {
        let flat =
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4.5]}]}"#;
        check(flat, None, Ok(vec![x(vec![2, 2], &[1.0, 2.0, 3.0, 4.5])]));
        let nested = br#"{"id":"7","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}]}"#;
        check(nested, None, Ok(vec![x(vec![2, 2], &[1.0, 2.0, 3.0, 4.5])]));
        let ints = br#"{"inputs":[{"name":"i","shape":[3],"datatype":"INT64","data":[1,-2,3]}]}"#;
        let parsed = parse_infer_request(Bytes::from_static(ints), None).expect("parses");
        assert_eq!(parsed.inputs[0].data.len(), 24);
    }

    #[test]
    fn binary_data_follows_the_json_header() {
        let header = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2.0f32).to_le_bytes());
        let length = header.len().to_string();
        check(&body, Some(&length), Ok(vec![x(vec![1, 2], &[1.5, -2.0])]));
        let parsed = parse_infer_request(Bytes::from(body.clone()), Some(&length)).expect("parses");
        assert!(parsed.binary("y") && !parsed.binary("z"));
        check(
            &body[..body.len() - 1],
            Some(&length),
            Err("binary_data_size 8 but only 7 bytes of binary data remain (truncated body?)"),
        );
        let mut longer = body.clone();
        longer.push(0);
        check(
            &longer,
            Some(&length),
            Err("1 bytes of binary data after the last input"),
        );
        check(&body, Some("99999"), Err("past the end"));
        check(&body, Some("ten"), Err("'ten' is not a byte count"));
    }

    #[test]
    fn bad_json_names_the_field() {
        check(b"{", None, Err("malformed request JSON"));
        check(
            b"{\"inputs\":[{\"name\":\"x\"}]}",
            None,
            Err("missing field `shape`"),
        );
        check(
            br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]}"#,
            None,
            Err("input 'x': shape needs 2 elements, data has 1"),
        );
        check(
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]}"#,
            None,
            Err("more data elements than the shape's 1"),
        );
        check(
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#,
            None,
            Err("data element 0 (\"a\") is not a FP32 value"),
        );
        check(
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]}"#,
            None,
            Err("is not a INT8 value"),
        );
        check(
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#,
            None,
            Err("unknown datatype 'FLOAT'"),
        );
        check(
            br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
            None,
            Err("negative"),
        );
        check(
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
            None,
            Err("no 'data'"),
        );
        check(br#"{"inputs":[{"name":"x","shape":[4000000000,4000000000,4000000000],"datatype":"FP32","data":[1]}]}"#, None, Err("too large"));
        check(br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#, Some("0"), Err("malformed"));
    }

    #[test]
    fn responses_put_binary_outputs_after_the_header() {
        let response = InferResponse {
            model: "m".into(),
            version: "1".into(),
            outputs: vec![
                x(vec![1, 2], &[1.0, 2.0]),
                Tensor::from_f32("z", vec![1], &[3.0]),
            ],
        };
        let request = ParsedRequest {
            id: Some("a".into()),
            inputs: Vec::new(),
            outputs: None,
            binary_outputs: vec![("x".into(), true)],
            binary_default: false,
            shared_memory_inputs: Vec::new(),
            shared_memory_outputs: Vec::new(),
        };
        let encoded = encode_infer_response(&response, &request);
        assert_eq!(
            encoded.parts.len(),
            2,
            "the header, then the one binary output"
        );
        let header_length = encoded.header_length.expect("binary");
        let body = encoded.to_vec();
        let json: Value = serde_json::from_slice(&body[..header_length]).expect("json");
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([3.0]));
        assert_eq!(json["id"], "a");
        assert_eq!(&body[header_length..], &response.outputs[0].data[..]);
    }

    #[test]
    fn shared_memory_parameters_name_a_region_instead_of_data() {
        let body = br#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"shared_memory_region":"in","shared_memory_byte_size":8,"shared_memory_offset":16}}],"outputs":[{"name":"y","parameters":{"shared_memory_region":"out","shared_memory_byte_size":4}}]}"#;
        let parsed = parse_infer_request(Bytes::from_static(body), None).expect("parses");
        let region = |name: &str, offset, byte_size| RegionRef {
            region: name.to_string(),
            offset,
            byte_size,
        };
        assert_eq!(parsed.shared_memory_inputs, vec![(0, region("in", 16, 8))]);
        assert!(parsed.inputs[0].data.is_empty());
        assert_eq!(parsed.shared_memory_output("y"), Some(&region("out", 0, 4)));
        let response = InferResponse {
            model: "m".into(),
            version: "1".into(),
            outputs: vec![Tensor::from_f32("y", vec![1], &[3.0])],
        };
        let encoded = encode_infer_response(&response, &parsed);
        assert_eq!(encoded.header_length, None, "no binary data follows");
        let body = encoded.to_vec();
        let json: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            json["outputs"][0]["parameters"]["shared_memory_region"],
            "out"
        );
        assert_eq!(
            json["outputs"][0]["parameters"]["shared_memory_byte_size"],
            4
        );
        assert!(json["outputs"][0].get("data").is_none());
        for (body, fragment) in [
            (&br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"shared_memory_region":"in"}}]}"#[..], "go together"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.0],"parameters":{"shared_memory_region":"in","shared_memory_byte_size":4}}]}"#, "with 'data'"),
            (br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"shared_memory_region":"in","shared_memory_byte_size":4}}]}"#, "does not match shape"),
            (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"shared_memory_region":7,"shared_memory_byte_size":4}}]}"#, "must be a string"),
        ] {
            let message = parse_infer_request(Bytes::copy_from_slice(body), None)
                .expect_err(fragment)
                .message;
            assert!(message.contains(fragment), "{message}");
        }
    }
}
