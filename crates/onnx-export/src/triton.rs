//! Triton's `config.pbtxt` for an exported model, in protobuf text format.
//!
//! Dims exclude the batch axis, which Triton adds when `max_batch_size > 0`.

use std::fmt::Write;

/// The fields of Triton's `ModelConfig` a YOLO ONNX export needs.
#[derive(Clone, Debug, PartialEq)]
pub struct TritonConfig {
    pub name: String,
    pub max_batch_size: i64,
    pub inputs: Vec<TensorConfig>,
    pub outputs: Vec<TensorConfig>,
    /// Preferred batch sizes for dynamic batching; empty lets Triton choose.
    pub preferred_batch_sizes: Vec<i64>,
    pub max_queue_delay_microseconds: u64,
    /// `KIND_CPU` or `KIND_GPU` instances.
    pub instance_kind: InstanceKind,
    pub instance_count: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorConfig {
    pub name: String,
    /// Without the batch axis; -1 for a variable axis.
    pub dims: Vec<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceKind {
    Cpu,
    Gpu,
}

impl TritonConfig {
    /// The text of `config.pbtxt` (every tensor is FP32: that is what YOLO exports take and give).
    pub fn to_pbtxt(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "name: {}", quote(&self.name));
        let _ = writeln!(text, "platform: \"onnxruntime_onnx\"");
        let _ = writeln!(text, "max_batch_size: {}", self.max_batch_size);
        write_tensors(&mut text, "input", &self.inputs);
        write_tensors(&mut text, "output", &self.outputs);
        let _ = writeln!(text, "dynamic_batching {{");
        if !self.preferred_batch_sizes.is_empty() {
            let _ = writeln!(
                text,
                "  preferred_batch_size: [ {} ]",
                join(&self.preferred_batch_sizes)
            );
        }
        let _ = writeln!(
            text,
            "  max_queue_delay_microseconds: {}",
            self.max_queue_delay_microseconds
        );
        let _ = writeln!(text, "}}");
        let kind = match self.instance_kind {
            InstanceKind::Cpu => "KIND_CPU",
            InstanceKind::Gpu => "KIND_GPU",
        };
        let _ = writeln!(text, "instance_group [");
        let _ = writeln!(text, "  {{");
        let _ = writeln!(text, "    count: {}", self.instance_count);
        let _ = writeln!(text, "    kind: {kind}");
        let _ = writeln!(text, "  }}");
        let _ = writeln!(text, "]");
        text
    }
}

fn write_tensors(text: &mut String, field: &str, tensors: &[TensorConfig]) {
    let _ = writeln!(text, "{field} [");
    for (index, tensor) in tensors.iter().enumerate() {
        let _ = writeln!(text, "  {{");
        let _ = writeln!(text, "    name: {}", quote(&tensor.name));
        let _ = writeln!(text, "    data_type: TYPE_FP32");
        let _ = writeln!(text, "    dims: [ {} ]", join(&tensor.dims));
        let separator = if index + 1 < tensors.len() { "," } else { "" };
        let _ = writeln!(text, "  }}{separator}");
    }
    let _ = writeln!(text, "]");
}

fn join(values: &[i64]) -> String {
    values
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A protobuf text-format string literal.
fn quote(value: &str) -> String {
    let mut quoted = String::from("\"");
    for ch in value.chars() {
        match ch {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            _ => quoted.push(ch),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(config: &TritonConfig, expected: &str) {
        assert_eq!(config.to_pbtxt(), expected);
    }

    #[test]
    fn yolov8n_config() {
        let config = TritonConfig {
            name: "yolov8n_\"car\"".into(),
            max_batch_size: 8,
            inputs: vec![TensorConfig {
                name: "images".into(),
                dims: vec![3, 640, 640],
            }],
            outputs: vec![TensorConfig {
                name: "output0".into(),
                dims: vec![84, 8400],
            }],
            preferred_batch_sizes: vec![4, 8],
            max_queue_delay_microseconds: 100,
            instance_kind: InstanceKind::Cpu,
            instance_count: 1,
        };
        check(
            &config,
            r#"name: "yolov8n_\"car\""
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "images"
    data_type: TYPE_FP32
    dims: [ 3, 640, 640 ]
  }
]
output [
  {
    name: "output0"
    data_type: TYPE_FP32
    dims: [ 84, 8400 ]
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"#,
        );
    }
}
