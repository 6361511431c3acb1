//! The ONNX Runtime backend: one `ort` session per model instance.
//!
//! `Session::run` takes `&mut self`, so each instance owns its session behind an
//! uncontended mutex and is driven by exactly one OS thread (the batcher's instance
//! worker). Tensor bytes become typed buffers here, and outputs become bytes again.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ort::session::Session;
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use crate::backend::{Backend, BackendError, Batch, Outputs, Signature, TensorSignature};
use crate::tensor::{DataType, Tensor};

/// Threads for each session: ONNX Runtime's intra- and inter-op pools (0: its default).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Threads {
    pub intra_op: usize,
    pub inter_op: usize,
}

pub struct OnnxBackend {
    session: Mutex<Session>,
}

impl OnnxBackend {
    /// Builds a session for the model file.
    pub fn load(
        runtime: &Arc<cardet_onnx::Runtime>,
        model: &Path,
        threads: Threads,
    ) -> Result<OnnxBackend, String> {
        let mut builder = Session::builder(&runtime.environment).map_err(|e| e.to_string())?;
        if threads.intra_op > 0 {
            builder = builder
                .with_intra_threads(threads.intra_op)
                .map_err(|e| e.to_string())?;
        }
        if threads.inter_op > 0 {
            builder = builder
                .with_inter_threads(threads.inter_op)
                .map_err(|e| e.to_string())?;
        }
        let session = builder
            .commit_from_file(model)
            .map_err(|e| format!("{}: {e}", model.display()))?;
        Ok(OnnxBackend {
            session: Mutex::new(session),
        })
    }

    /// The model's declared inputs and outputs.
    pub fn signature(&self) -> Signature {
        let session = match self.session.lock() {
            Ok(session) => session,
            Err(poisoned) => poisoned.into_inner(),
        };
        let describe = |name: &str, dtype: &ValueType| TensorSignature {
            name: name.to_string(),
            datatype: dtype.tensor_type().and_then(from_ort_type),
            shape: dtype
                .tensor_shape()
                .map(|shape| shape.iter().copied().collect())
                .unwrap_or_default(),
        };
        Signature {
            inputs: session
                .inputs()
                .iter()
                .map(|outlet| describe(outlet.name(), outlet.dtype()))
                .collect(),
            outputs: session
                .outputs()
                .iter()
                .map(|outlet| describe(outlet.name(), outlet.dtype()))
                .collect(),
        }
    }
}

impl Backend for OnnxBackend {
    fn infer(&self, batch: Batch) -> Result<Outputs, BackendError> {
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(batch.inputs.len());
        for tensor in batch.inputs {
            let value = to_ort_value(&tensor)?;
            values.push((tensor.name, value));
        }
        let mut session = match self.session.lock() {
            Ok(session) => session,
            Err(poisoned) => poisoned.into_inner(),
        };
        let outputs = session
            .run(values)
            .map_err(|error| BackendError::Input(error.to_string()))?;
        let mut tensors = Vec::with_capacity(outputs.len());
        for (name, value) in outputs.iter() {
            tensors.push(from_ort_value(name, &value)?);
        }
        Ok(Outputs { tensors })
    }
}

fn from_ort_type(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

macro_rules! typed {
    ($tensor:expr, $shape:expr, $ty:ty, $size:literal) => {{
        let values: Vec<$ty> = $tensor
            .data
            .chunks_exact($size)
            .map(|chunk| {
                let mut raw = [0u8; $size];
                raw.copy_from_slice(chunk);
                <$ty>::from_le_bytes(raw)
            })
            .collect();
        OrtTensor::from_array(($shape, values)).map(|tensor| tensor.into_dyn())
    }};
}

fn to_ort_value(tensor: &Tensor) -> Result<DynValue, BackendError> {
    let shape: Vec<i64> = tensor.shape.clone();
    let result = match tensor.datatype {
        DataType::Fp32 => typed!(tensor, shape, f32, 4),
        DataType::Fp64 => typed!(tensor, shape, f64, 8),
        DataType::Int8 => typed!(tensor, shape, i8, 1),
        DataType::Int16 => typed!(tensor, shape, i16, 2),
        DataType::Int32 => typed!(tensor, shape, i32, 4),
        DataType::Int64 => typed!(tensor, shape, i64, 8),
        DataType::Uint8 => typed!(tensor, shape, u8, 1),
        DataType::Uint16 => typed!(tensor, shape, u16, 2),
        DataType::Uint32 => typed!(tensor, shape, u32, 4),
        DataType::Uint64 => typed!(tensor, shape, u64, 8),
        DataType::Bool => {
            let values: Vec<bool> = tensor.data.iter().map(|&byte| byte != 0).collect();
            OrtTensor::from_array((shape, values)).map(|tensor| tensor.into_dyn())
        }
        DataType::Fp16 | DataType::Bytes => {
            return Err(BackendError::Input(format!(
                "input {}: datatype {} is not supported by serve's ONNX backend",
                tensor.name,
                tensor.datatype.name()
            )));
        }
    };
    result.map_err(|error| BackendError::Input(format!("input {}: {error}", tensor.name)))
}

macro_rules! bytes_of {
    ($value:expr, $ty:ty) => {{
        let (shape, values) = $value
            .try_extract_tensor::<$ty>()
            .map_err(|error| BackendError::Runtime(error.to_string()))?;
        let mut data = Vec::with_capacity(values.len() * std::mem::size_of::<$ty>());
        for value in values {
            data.extend_from_slice(&value.to_le_bytes());
        }
        (shape.iter().copied().collect::<Vec<i64>>(), data)
    }};
}

fn from_ort_value(name: &str, value: &ort::value::DynValueRef<'_>) -> Result<Tensor, BackendError> {
    let ty = value
        .dtype()
        .tensor_type()
        .ok_or_else(|| BackendError::Runtime(format!("output {name} is not a tensor")))?;
    let datatype = from_ort_type(ty).ok_or_else(|| {
        BackendError::Runtime(format!(
            "output {name}: element type {ty:?} is not supported"
        ))
    })?;
    let (shape, data) = match datatype {
        DataType::Fp32 => bytes_of!(value, f32),
        DataType::Fp64 => bytes_of!(value, f64),
        DataType::Int8 => bytes_of!(value, i8),
        DataType::Int16 => bytes_of!(value, i16),
        DataType::Int32 => bytes_of!(value, i32),
        DataType::Int64 => bytes_of!(value, i64),
        DataType::Uint8 => bytes_of!(value, u8),
        DataType::Uint16 => bytes_of!(value, u16),
        DataType::Uint32 => bytes_of!(value, u32),
        DataType::Uint64 => bytes_of!(value, u64),
        DataType::Bool => {
            let (shape, values) = value
                .try_extract_tensor::<bool>()
                .map_err(|error| BackendError::Runtime(error.to_string()))?;
            (
                shape.iter().copied().collect(),
                values.iter().map(|&b| u8::from(b)).collect(),
            )
        }
        DataType::Fp16 | DataType::Bytes => {
            return Err(BackendError::Runtime(format!(
                "output {name}: datatype {} is not supported",
                datatype.name()
            )));
        }
    };
    Ok(Tensor {
        name: name.to_string(),
        datatype,
        shape,
        data: Bytes::from(data),
    })
}
