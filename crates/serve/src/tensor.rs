//! Tensors as the server moves them: a datatype, a shape and little-endian bytes.
//!
//! Every protocol converts its wire form into [`Tensor`] at the edge; the batcher and
//! the backend only see these. Data stays as bytes until the backend builds the ONNX
//! Runtime value, so a binary request body is never parsed element by element.

use bytes::Bytes;

/// The element types of the KServe v2 protocol that `serve` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol's name (`FP32`, `INT64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    pub fn from_name(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|dtype| dtype.name() == name)
    }

    /// The model configuration's name (`TYPE_FP32`; `TYPE_STRING` for BYTES).
    pub fn config_name(self) -> String {
        match self {
            DataType::Bytes => "TYPE_STRING".to_string(),
            other => format!("TYPE_{}", other.name()),
        }
    }

    pub fn from_config_name(name: &str) -> Option<DataType> {
        match name {
            "TYPE_STRING" => Some(DataType::Bytes),
            other => other.strip_prefix("TYPE_").and_then(DataType::from_name),
        }
    }

    /// Bytes per element; `None` for variable-size BYTES.
    pub fn size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

/// One named tensor with its data as little-endian bytes, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

impl Tensor {
    /// Number of elements the shape holds; `None` when a dimension is negative or it overflows.
    pub fn element_count(shape: &[i64]) -> Option<usize> {
        shape.iter().try_fold(1usize, |count, &dim| {
            usize::try_from(dim)
                .ok()
                .and_then(|dim| count.checked_mul(dim))
        })
    }

    /// The data as `f32`s (tests and clients); `None` for another datatype.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.datatype == DataType::Fp32).then(|| {
            self.data
                .chunks_exact(4)
                .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
                .collect()
        })
    }

    /// An FP32 tensor from values (tests and benchmarks).
    pub fn from_f32(name: &str, shape: Vec<i64>, values: &[f32]) -> Tensor {
        let mut data = Vec::with_capacity(values.len() * 4);
        for value in values {
            data.extend_from_slice(&value.to_le_bytes());
        }
        Tensor {
            name: name.to_string(),
            datatype: DataType::Fp32,
            shape,
            data: Bytes::from(data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: Option<DataType>) {
        assert_eq!(DataType::from_name(name), expected, "{name}");
        if let Some(dtype) = expected {
            assert_eq!(
                DataType::from_config_name(&dtype.config_name()),
                Some(dtype)
            );
        }
    }

    #[test]
    fn datatype_names_round_trip() {
        check("FP32", Some(DataType::Fp32));
        check("INT64", Some(DataType::Int64));
        check("BYTES", Some(DataType::Bytes));
        check("fp32", None);
        check("FLOAT", None);
        assert_eq!(
            DataType::from_config_name("TYPE_STRING"),
            Some(DataType::Bytes)
        );
    }

    #[test]
    fn element_counts_refuse_negative_and_overflowing_shapes() {
        assert_eq!(Tensor::element_count(&[1, 3, 640, 640]), Some(1_228_800));
        assert_eq!(Tensor::element_count(&[]), Some(1));
        assert_eq!(Tensor::element_count(&[2, -1]), None);
        assert_eq!(Tensor::element_count(&[i64::MAX, i64::MAX]), None);
    }
}
