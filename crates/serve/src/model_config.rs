//! `config.pbtxt`: Triton's model configuration in protobuf text format.
//!
//! [`parse`] reads the text format generically (fields, nested messages, lists,
//! comments), then [`ModelConfig::from_text`] picks the fields `serve` acts on:
//! inputs, outputs, `max_batch_size`, `dynamic_batching`, `instance_group` counts and
//! the version policy. Fields it does not use are accepted and ignored, as Triton
//! ignores what a backend does not need; a field it uses with a wrong type is an
//! error naming the field and line.

use std::time::Duration;

use crate::tensor::DataType;

/// What `serve` takes from a model's `config.pbtxt`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    pub platform: String,
    pub backend: String,
    /// 0: the model has no batch dimension and is never batched.
    pub max_batch_size: u32,
    pub inputs: Vec<TensorConfig>,
    pub outputs: Vec<TensorConfig>,
    pub dynamic_batching: Option<DynamicBatching>,
    /// `instance_group`s as configured; one CPU instance when there are none.
    pub instance_groups: Vec<InstanceGroup>,
    /// `parameters { key: "cudnn_conv_algo_search" }` (Triton's onnxruntime backend:
    /// 0 exhaustive, 1 heuristic, 2 default), for instances on a GPU.
    pub conv_algo_search: ConvAlgoSearch,
    /// `parameters { key: "cardet_pad_batch" }`: the rows a merged batch is padded to
    /// (`None`: not configured, see [`ModelConfig::effective_pad_batch`]).
    pub pad_batch: Option<PadBatch>,
    /// `parameters { key: "cardet_split_when_busy" }` (default "true"): one CPU
    /// instance runs two batches at once on half of its threads each while requests
    /// wait (see [`crate::batcher::SplitInstance`]).
    pub split_when_busy: bool,
    pub version_policy: VersionPolicy,
    pub default_model_filename: String,
}

/// An input or output as configured: `dims` exclude the batch dimension when
/// `max_batch_size > 0`; -1 is a variable dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorConfig {
    pub name: String,
    pub datatype: DataType,
    pub dims: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DynamicBatching {
    pub preferred_batch_sizes: Vec<u32>,
    pub max_queue_delay: Duration,
    /// `default_queue_policy { max_queue_size }`: requests this model version holds
    /// at once before refusing more; `None` (or 0 in the config): the server's
    /// `--max-queue-size`.
    pub max_queue_size: Option<usize>,
}

/// One `instance_group`: `count` instances on the CPU, or on each of `gpus`.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceGroup {
    pub count: u32,
    pub kind: InstanceKind,
    /// The CUDA devices of a `KIND_GPU` group (Triton's `gpus`; default device 0).
    pub gpus: Vec<i32>,
}

/// Triton's `KIND_CPU` and `KIND_GPU`. `KIND_AUTO` (the default) and `KIND_MODEL`
/// run on the CPU: `serve` never guesses a GPU, a config or `--gpu` asks for one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceKind {
    Cpu,
    Gpu,
}

/// How cuDNN picks each convolution's algorithm on a GPU.
///
/// Heuristic unless a config asks otherwise (Triton's default is exhaustive). A
/// session searches again each time its input shape changes, and with dynamic
/// batching that is nearly every batch. Measured on an H200 with YOLOv8n
/// (BENCHMARKS "serve on a GPU"), a change of shape cost 760-990 ms exhaustive
/// against 140-150 ms heuristic; with 8 clients, batching ran 5 images/s with the
/// exhaustive search and 83 with the heuristic, before the sessions per batch size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvAlgoSearch {
    Exhaustive,
    #[default]
    Heuristic,
    Default,
}

/// Rows of zeros appended to a merged batch before it runs, so that the model sees
/// few distinct batch sizes. ONNX Runtime's CUDA provider pays for each change of
/// input shape (BENCHMARKS "serve on a GPU"); the padded rows' outputs are dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PadBatch {
    /// Run the rows the requests brought.
    #[default]
    None,
    /// Up to the next power of two (at most `max_batch_size`).
    PowerOfTwo,
    /// Always `max_batch_size` rows.
    Max,
}

impl PadBatch {
    /// The rows to run for `rows` rows of requests.
    pub fn rows(self, rows: usize, max_batch_size: usize) -> usize {
        match self {
            PadBatch::None => rows,
            PadBatch::PowerOfTwo => rows.next_power_of_two().min(max_batch_size).max(rows),
            PadBatch::Max => max_batch_size.max(rows),
        }
    }
}

/// Where one model instance runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA device, through ONNX Runtime's CUDA execution provider.
    Cuda(i32),
}

impl InstanceGroup {
    pub fn cpu(count: u32) -> InstanceGroup {
        InstanceGroup {
            count,
            kind: InstanceKind::Cpu,
            gpus: Vec::new(),
        }
    }
}

fn parse_instance_group(group: &Message) -> Result<InstanceGroup, ConfigError> {
    let count = group.integer("count")?.unwrap_or(1);
    let count = u32::try_from(count)
        .ok()
        .filter(|count| (1..=256).contains(count))
        .ok_or_else(|| ConfigError {
            line: group.line_of("count"),
            message: format!("instance_group count {count} is not in 1..=256"),
        })?;
    let kind = match group.identifier("kind")?.as_deref() {
        None | Some("KIND_AUTO" | "KIND_CPU" | "KIND_MODEL") => InstanceKind::Cpu,
        Some("KIND_GPU") => InstanceKind::Gpu,
        Some(other) => {
            return Err(ConfigError {
                line: group.line_of("kind"),
                message: format!(
                    "instance_group kind {other} is not one of KIND_AUTO, KIND_CPU, KIND_GPU, KIND_MODEL"
                ),
            });
        }
    };
    let gpus = group
        .integers("gpus")?
        .into_iter()
        .map(|gpu| {
            i32::try_from(gpu)
                .ok()
                .filter(|gpu| *gpu >= 0)
                .ok_or_else(|| ConfigError {
                    line: group.line_of("gpus"),
                    message: format!("instance_group gpus: {gpu} is not a device number"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if kind == InstanceKind::Cpu && !gpus.is_empty() {
        return Err(ConfigError {
            line: group.line_of("gpus"),
            message: "instance_group gpus are only for kind: KIND_GPU".into(),
        });
    }
    Ok(InstanceGroup { count, kind, gpus })
}

/// Which versions of a model are served (Triton's `version_policy`).
#[derive(Clone, Debug, PartialEq)]
pub enum VersionPolicy {
    Latest(u32),
    All,
    Specific(Vec<i64>),
}

impl VersionPolicy {
    /// The versions to serve out of those available.
    pub fn select(&self, available: &[i64]) -> Vec<i64> {
        let mut sorted = available.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        match self {
            VersionPolicy::All => sorted,
            VersionPolicy::Latest(n) => {
                let keep = (*n as usize).min(sorted.len());
                sorted[sorted.len() - keep..].to_vec()
            }
            VersionPolicy::Specific(wanted) => sorted
                .into_iter()
                .filter(|version| wanted.contains(version))
                .collect(),
        }
    }
}

/// A parse or meaning error, with the line it was found on (1-based; 0 when none).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ConfigError {
    pub line: usize,
    pub message: String,
}

impl ModelConfig {
    /// All instances, each group's `count` once per GPU of a `KIND_GPU` group.
    pub fn instance_count(&self) -> u32 {
        self.instance_groups
            .iter()
            .map(|group| {
                let gpus = u32::try_from(group.gpus.len().max(1)).unwrap_or(u32::MAX);
                group.count.saturating_mul(gpus)
            })
            .fold(0, u32::saturating_add)
    }

    /// Where each instance runs, in the order of the groups: a `KIND_GPU` group
    /// places `count` instances on each of its GPUs.
    pub fn instance_devices(&self) -> Vec<Device> {
        let mut devices = Vec::new();
        for group in &self.instance_groups {
            match group.kind {
                InstanceKind::Cpu => {
                    devices.extend(std::iter::repeat_n(Device::Cpu, group.count as usize))
                }
                InstanceKind::Gpu => {
                    let gpus = if group.gpus.is_empty() {
                        &[0][..]
                    } else {
                        &group.gpus[..]
                    };
                    for &gpu in gpus {
                        devices
                            .extend(std::iter::repeat_n(Device::Cuda(gpu), group.count as usize));
                    }
                }
            }
        }
        devices
    }

    /// The padding merged batches get: as configured, else powers of two when an
    /// instance runs on a GPU (a CUDA instance keeps one session per batch size, so
    /// fewer sizes means fewer sessions and their memory) and none on the CPU.
    pub fn effective_pad_batch(&self) -> PadBatch {
        self.pad_batch.unwrap_or_else(|| {
            let on_gpu = self
                .instance_groups
                .iter()
                .any(|group| group.kind == InstanceKind::Gpu);
            if on_gpu {
                PadBatch::PowerOfTwo
            } else {
                PadBatch::None
            }
        })
    }

    /// Every instance on `gpu` (`serve --gpu`), keeping the configured count.
    pub fn place_on_gpu(&mut self, gpu: i32) {
        let count = self.instance_count().max(1);
        self.instance_groups = vec![InstanceGroup {
            count,
            kind: InstanceKind::Gpu,
            gpus: vec![gpu],
        }];
    }

    /// A configuration for a model folder without `config.pbtxt`: inputs and outputs
    /// come from the model file itself.
    pub fn empty(name: &str) -> ModelConfig {
        ModelConfig {
            name: name.to_string(),
            platform: "onnxruntime_onnx".to_string(),
            backend: "onnxruntime".to_string(),
            max_batch_size: 0,
            inputs: Vec::new(),
            outputs: Vec::new(),
            dynamic_batching: None,
            instance_groups: vec![InstanceGroup::cpu(1)],
            conv_algo_search: ConvAlgoSearch::default(),
            pad_batch: None,
            split_when_busy: true,
            version_policy: VersionPolicy::Latest(1),
            default_model_filename: "model.onnx".to_string(),
        }
    }

    /// Parses `config.pbtxt` text; `folder_name` is the name when the text has none.
    pub fn from_text(text: &str, folder_name: &str) -> Result<ModelConfig, ConfigError> {
        let root = parse(text)?;
        let mut config = ModelConfig::empty(folder_name);
        if let Some(name) = root.string("name")? {
            config.name = name;
        }
        if let Some(platform) = root.string("platform")? {
            config.platform = platform;
        }
        if let Some(backend) = root.string("backend")? {
            config.backend = backend;
        }
        let known = ["onnxruntime", "onnxruntime_onnx", ""];
        if !known.contains(&config.platform.as_str()) || !known.contains(&config.backend.as_str()) {
            return Err(ConfigError {
                line: 0,
                message: format!(
                    "platform {:?} / backend {:?}: serve runs ONNX models only (onnxruntime)",
                    config.platform, config.backend
                ),
            });
        }
        if let Some(max) = root.integer("max_batch_size")? {
            config.max_batch_size = u32::try_from(max).map_err(|_| ConfigError {
                line: root.line_of("max_batch_size"),
                message: format!("max_batch_size {max} is out of range"),
            })?;
        }
        if let Some(file) = root.string("default_model_filename")? {
            config.default_model_filename = file;
        }
        config.inputs = root
            .messages("input")?
            .into_iter()
            .map(tensor_config)
            .collect::<Result<_, _>>()?;
        config.outputs = root
            .messages("output")?
            .into_iter()
            .map(tensor_config)
            .collect::<Result<_, _>>()?;
        if let Some(batching) = root.messages("dynamic_batching")?.first() {
            let preferred = batching
                .integers("preferred_batch_size")?
                .into_iter()
                .map(|size| u32::try_from(size).unwrap_or(0))
                .collect();
            let delay = batching
                .integer("max_queue_delay_microseconds")?
                .unwrap_or(0);
            let mut max_queue_size = None;
            if let Some(policy) = batching.messages("default_queue_policy")?.first() {
                let size = policy.integer("max_queue_size")?.unwrap_or(0);
                let size = usize::try_from(size).map_err(|_| ConfigError {
                    line: policy.line_of("max_queue_size"),
                    message: format!(
                        "default_queue_policy.max_queue_size is {size}; it must be 0 (the server's limit) or more"
                    ),
                })?;
                max_queue_size = (size > 0).then_some(size);
            }
            config.dynamic_batching = Some(DynamicBatching {
                preferred_batch_sizes: preferred,
                max_queue_delay: Duration::from_micros(u64::try_from(delay).unwrap_or(0)),
                max_queue_size,
            });
        }
        let groups = root.messages("instance_group")?;
        if !groups.is_empty() {
            config.instance_groups = groups
                .into_iter()
                .map(parse_instance_group)
                .collect::<Result<_, _>>()?;
            if config.instance_count() > 256 {
                return Err(ConfigError {
                    line: root.line_of("instance_group"),
                    message: format!(
                        "instance_group: {} instances in all, more than 256",
                        config.instance_count()
                    ),
                });
            }
        }
        for parameter in root.messages("parameters")? {
            let key = parameter.string("key")?.unwrap_or_default();
            let value = match parameter.messages("value")?.first() {
                Some(value) => value.string("string_value")?,
                None => None,
            };
            let invalid = |expected: &str| ConfigError {
                line: parameter.line,
                message: format!("parameters {key}: {value:?} is not {expected}"),
            };
            match key.as_str() {
                "cudnn_conv_algo_search" => {
                    config.conv_algo_search = match value.as_deref() {
                        Some("0") => ConvAlgoSearch::Exhaustive,
                        Some("1") => ConvAlgoSearch::Heuristic,
                        Some("2") => ConvAlgoSearch::Default,
                        _ => {
                            return Err(invalid(
                                "\"0\" (exhaustive), \"1\" (heuristic) or \"2\" (default)",
                            ));
                        }
                    }
                }
                "cardet_pad_batch" => {
                    config.pad_batch = Some(match value.as_deref() {
                        Some("none") => PadBatch::None,
                        Some("pow2") => PadBatch::PowerOfTwo,
                        Some("max") => PadBatch::Max,
                        _ => return Err(invalid("\"none\", \"pow2\" or \"max\"")),
                    })
                }
                "cardet_split_when_busy" => {
                    config.split_when_busy = match value.as_deref() {
                        Some("true") => true,
                        Some("false") => false,
                        _ => return Err(invalid("\"true\" or \"false\"")),
                    }
                }
                // Other backends' parameters (Triton's) mean nothing here.
                _ => {}
            }
        }
        if let Some(policy) = root.messages("version_policy")?.first() {
            config.version_policy = if let Some(latest) = policy.messages("latest")?.first() {
                let n = latest.integer("num_versions")?.unwrap_or(1);
                VersionPolicy::Latest(u32::try_from(n).unwrap_or(1).max(1))
            } else if let Some(specific) = policy.messages("specific")?.first() {
                VersionPolicy::Specific(specific.integers("versions")?)
            } else if !policy.messages("all")?.is_empty() {
                VersionPolicy::All
            } else {
                VersionPolicy::Latest(1)
            };
        }
        Ok(config)
    }
}

fn tensor_config(message: &Message) -> Result<TensorConfig, ConfigError> {
    let missing = |field: &str| ConfigError {
        line: message.line,
        message: format!("input/output without `{field}`"),
    };
    let name = message.string("name")?.ok_or_else(|| missing("name"))?;
    let type_name = message
        .identifier("data_type")?
        .ok_or_else(|| missing("data_type"))?;
    let datatype = DataType::from_config_name(&type_name).ok_or_else(|| ConfigError {
        line: message.line_of("data_type"),
        message: format!("{name}: unknown data_type {type_name}"),
    })?;
    let dims = message.integers("dims")?;
    if dims.iter().any(|&dim| dim < -1) {
        return Err(ConfigError {
            line: message.line_of("dims"),
            message: format!("{name}: dims {dims:?} must be -1 or positive"),
        });
    }
    if !message.messages("reshape")?.is_empty() {
        return Err(ConfigError {
            line: message.line_of("reshape"),
            message: format!("{name}: reshape is not supported by serve"),
        });
    }
    Ok(TensorConfig {
        name,
        datatype,
        dims,
    })
}

/// A value of the text format.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(String),
    /// Numbers, enum names and `true`/`false`, as written.
    Word(String),
    Message(Message),
}

/// A message: its fields in order, repeated fields appearing once per value.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Message {
    pub line: usize,
    pub fields: Vec<(String, Value, usize)>,
}

impl Message {
    fn values<'a>(&'a self, field: &'a str) -> impl Iterator<Item = (&'a Value, usize)> + 'a {
        self.fields
            .iter()
            .filter(move |(name, _, _)| name == field)
            .map(|(_, value, line)| (value, *line))
    }

    fn line_of(&self, field: &str) -> usize {
        self.values(field)
            .next()
            .map_or(self.line, |(_, line)| line)
    }

    fn last<'a>(&'a self, field: &'a str) -> Option<(&'a Value, usize)> {
        self.values(field).last()
    }

    fn string(&self, field: &str) -> Result<Option<String>, ConfigError> {
        match self.last(field) {
            None => Ok(None),
            Some((Value::String(text), _)) => Ok(Some(text.clone())),
            Some((_, line)) => Err(wrong_type(field, "a quoted string", line)),
        }
    }

    fn identifier(&self, field: &str) -> Result<Option<String>, ConfigError> {
        match self.last(field) {
            None => Ok(None),
            Some((Value::Word(word), _)) => Ok(Some(word.clone())),
            Some((_, line)) => Err(wrong_type(field, "a name", line)),
        }
    }

    fn integer(&self, field: &str) -> Result<Option<i64>, ConfigError> {
        match self.last(field) {
            None => Ok(None),
            Some((value, line)) => as_integer(field, value, line).map(Some),
        }
    }

    fn integers(&self, field: &str) -> Result<Vec<i64>, ConfigError> {
        self.values(field)
            .map(|(value, line)| as_integer(field, value, line))
            .collect()
    }

    fn messages<'a>(&'a self, field: &'a str) -> Result<Vec<&'a Message>, ConfigError> {
        self.values(field)
            .map(|(value, line)| match value {
                Value::Message(message) => Ok(message),
                _ => Err(wrong_type(field, "a message `{ ... }`", line)),
            })
            .collect()
    }
}

fn as_integer(field: &str, value: &Value, line: usize) -> Result<i64, ConfigError> {
    match value {
        Value::Word(word) => word
            .parse::<i64>()
            .map_err(|_| wrong_type(field, "an integer", line)),
        _ => Err(wrong_type(field, "an integer", line)),
    }
}

fn wrong_type(field: &str, expected: &str, line: usize) -> ConfigError {
    ConfigError {
        line,
        message: format!("`{field}` must be {expected}"),
    }
}

/// Nesting deeper than this is refused, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

/// Parses protobuf text format into a generic [`Message`].
pub fn parse(text: &str) -> Result<Message, ConfigError> {
    let mut parser = Parser {
        chars: text.chars().collect(),
        position: 0,
        line: 1,
    };
    let message = parser.message(0, None)?;
    Ok(message)
}

struct Parser {
    chars: Vec<char>,
    position: usize,
    line: usize,
}

impl Parser {
    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            line: self.line,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.position).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let next = self.peek()?;
        self.position += 1;
        if next == '\n' {
            self.line += 1;
        }
        Some(next)
    }

    /// Skips whitespace and `#` comments.
    fn skip_blank(&mut self) {
        while let Some(next) = self.peek() {
            if next == '#' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else if next.is_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    /// Fields until `close` (or the end of the text for the top level).
    fn message(&mut self, depth: usize, close: Option<char>) -> Result<Message, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(self.error("messages nested too deeply"));
        }
        let mut message = Message {
            line: self.line,
            fields: Vec::new(),
        };
        loop {
            self.skip_blank();
            match (self.peek(), close) {
                (None, None) => return Ok(message),
                (None, Some(close)) => return Err(self.error(format!("missing `{close}`"))),
                (Some(next), Some(close)) if next == close => {
                    self.bump();
                    return Ok(message);
                }
                _ => {}
            }
            let line = self.line;
            let name = self.word();
            if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                let found = self
                    .peek()
                    .map_or("end of text".to_string(), |c| format!("`{c}`"));
                return Err(self.error(format!("expected a field name, found {found}")));
            }
            self.skip_blank();
            let colon = self.peek() == Some(':');
            if colon {
                self.bump();
                self.skip_blank();
            }
            match self.peek() {
                Some('[') => {
                    self.bump();
                    loop {
                        self.skip_blank();
                        if self.peek() == Some(']') {
                            self.bump();
                            break;
                        }
                        let value = self.value(depth)?;
                        message.fields.push((name.clone(), value, line));
                        self.skip_blank();
                        match self.peek() {
                            Some(',') => {
                                self.bump();
                            }
                            Some(']') => {}
                            _ => return Err(self.error(format!("`{name}`: expected `,` or `]`"))),
                        }
                    }
                }
                Some('{') | Some('<') => {
                    let value = self.value(depth)?;
                    message.fields.push((name, value, line));
                }
                _ if colon => {
                    let value = self.value(depth)?;
                    message.fields.push((name, value, line));
                }
                _ => return Err(self.error(format!("`{name}`: expected `:` or `{{`"))),
            }
            self.skip_blank();
            if matches!(self.peek(), Some(',') | Some(';')) {
                self.bump();
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ConfigError> {
        match self.peek() {
            Some('{') => {
                self.bump();
                Ok(Value::Message(self.message(depth + 1, Some('}'))?))
            }
            Some('<') => {
                self.bump();
                Ok(Value::Message(self.message(depth + 1, Some('>'))?))
            }
            Some(quote @ ('"' | '\'')) => {
                self.bump();
                let mut text = String::new();
                // Adjacent quoted strings concatenate, as in C and protobuf text.
                loop {
                    match self.bump() {
                        None | Some('\n') => return Err(self.error("unterminated string")),
                        Some('\\') => match self.bump() {
                            Some('n') => text.push('\n'),
                            Some('t') => text.push('\t'),
                            Some(other) => text.push(other),
                            None => return Err(self.error("unterminated string")),
                        },
                        Some(c) if c == quote => break,
                        Some(c) => text.push(c),
                    }
                }
                Ok(Value::String(text))
            }
            _ => {
                let word = self.word();
                if word.is_empty() {
                    let found = self
                        .peek()
                        .map_or("end of text".to_string(), |c| format!("`{c}`"));
                    return Err(self.error(format!("expected a value, found {found}")));
                }
                Ok(Value::Word(word))
            }
        }
    }

    fn word(&mut self) -> String {
        let mut word = String::new();
        while let Some(next) = self.peek() {
            if next.is_ascii_alphanumeric() || matches!(next, '_' | '-' | '+' | '.') {
                word.push(next);
                self.bump();
            } else {
                break;
            }
        }
        word
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<ModelConfig, &str>) {
        let actual = ModelConfig::from_text(text, "folder");
        match (actual, expected) {
            (Ok(actual), Ok(expected)) => assert_eq!(actual, expected),
            (Err(error), Err(expected)) => {
                let error = error.to_string();
                assert!(error.contains(expected), "{error:?} lacks {expected:?}");
            }
            (actual, expected) => panic!("{actual:?} but expected {expected:?}"),
        }
    }

    const ORIGINAL: &str = r#"
name: "yolov8n_car"
backend: "onnxruntime"
max_batch_size : 2
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
    dims: [ -1, -1 ]
  }
]
instance_group [ { kind: KIND_CPU } ]  # one instance
"#;

    fn original() -> ModelConfig {
        ModelConfig {
            name: "yolov8n_car".into(),
            max_batch_size: 2,
            inputs: vec![TensorConfig {
                name: "images".into(),
                datatype: DataType::Fp32,
                dims: vec![3, 640, 640],
            }],
            outputs: vec![TensorConfig {
                name: "output0".into(),
                datatype: DataType::Fp32,
                dims: vec![-1, -1],
            }],
            ..ModelConfig::empty("folder")
        }
    }

    #[test]
    fn the_original_config_parses() {
        check(ORIGINAL, Ok(original()));
    }

    #[test]
    fn batching_instances_and_policies_parse() {
        let text = format!(
            "{ORIGINAL}\ndynamic_batching {{ preferred_batch_size: [4, 8] max_queue_delay_microseconds: 500 default_queue_policy {{ max_queue_size: 3 }} }}\n\
             instance_group {{ count: 2 kind: KIND_CPU }}\nversion_policy: {{ specific {{ versions: [1, 3] }} }}"
        );
        let mut expected = original();
        expected.dynamic_batching = Some(DynamicBatching {
            preferred_batch_sizes: vec![4, 8],
            max_queue_delay: Duration::from_micros(500),
            max_queue_size: Some(3),
        });
        expected.instance_groups.push(InstanceGroup::cpu(2));
        expected.version_policy = VersionPolicy::Specific(vec![1, 3]);
        check(&text, Ok(expected));
        let latest = ModelConfig::from_text("version_policy { latest { num_versions: 2 } }", "m")
            .expect("parses");
        assert_eq!(latest.version_policy, VersionPolicy::Latest(2));
        assert_eq!(latest.version_policy.select(&[3, 1, 2]), vec![2, 3]);
        assert_eq!(VersionPolicy::All.select(&[2, 1]), vec![1, 2]);
        assert_eq!(VersionPolicy::Specific(vec![1, 7]).select(&[2, 1]), vec![1]);
    }

    #[test]
    fn gpu_groups_place_count_instances_on_each_gpu() {
        let config = ModelConfig::from_text(
            "instance_group [ { count: 2 kind: KIND_GPU gpus: [0, 1] }, { kind: KIND_CPU } ]\n\
             instance_group { kind: KIND_GPU }",
            "m",
        )
        .expect("parses");
        assert_eq!(config.instance_count(), 6);
        use Device::{Cpu, Cuda};
        assert_eq!(
            config.instance_devices(),
            vec![Cuda(0), Cuda(0), Cuda(1), Cuda(1), Cpu, Cuda(0)]
        );
        let mut cpu = ModelConfig::from_text("instance_group { count: 3 }", "m").expect("parses");
        assert_eq!(cpu.instance_devices(), vec![Cpu; 3]);
        cpu.place_on_gpu(1);
        assert_eq!(cpu.instance_devices(), vec![Cuda(1); 3]);
        let exhaustive = ModelConfig::from_text(
            "parameters { key: \"cudnn_conv_algo_search\" value: { string_value: \"0\" } }",
            "m",
        )
        .expect("parses");
        assert_eq!(exhaustive.conv_algo_search, ConvAlgoSearch::Exhaustive);
        assert_eq!(cpu.conv_algo_search, ConvAlgoSearch::Heuristic);
        check(
            "parameters { key: \"cudnn_conv_algo_search\" value: { string_value: \"fast\" } }",
            Err("line 1: parameters cudnn_conv_algo_search: Some(\"fast\") is not"),
        );
        let padded = ModelConfig::from_text(
            "parameters { key: \"cardet_pad_batch\" value: { string_value: \"pow2\" } }",
            "m",
        )
        .expect("parses");
        assert_eq!(padded.pad_batch, Some(PadBatch::PowerOfTwo));
        assert_eq!(
            padded.effective_pad_batch(),
            PadBatch::PowerOfTwo,
            "as configured"
        );
        assert_eq!(
            ModelConfig::empty("m").effective_pad_batch(),
            PadBatch::None,
            "CPU: no padding"
        );
        assert_eq!(
            config.effective_pad_batch(),
            PadBatch::PowerOfTwo,
            "GPU: powers of two"
        );
        assert_eq!(
            [1, 3, 5, 8].map(|rows| PadBatch::PowerOfTwo.rows(rows, 6)),
            [1, 4, 6, 8]
        );
        assert_eq!([1, 9].map(|rows| PadBatch::Max.rows(rows, 8)), [8, 9]);
        assert!(ModelConfig::empty("m").split_when_busy, "split by default");
        let unsplit = ModelConfig::from_text(
            "parameters { key: \"cardet_split_when_busy\" value: { string_value: \"false\" } }",
            "m",
        )
        .expect("parses");
        assert!(!unsplit.split_when_busy);
        check(
            "parameters { key: \"cardet_split_when_busy\" value: { string_value: \"no\" } }",
            Err("line 1: parameters cardet_split_when_busy: Some(\"no\") is not"),
        );
        check(
            "instance_group { kind: KIND_TPU }",
            Err(
                "line 1: instance_group kind KIND_TPU is not one of KIND_AUTO, KIND_CPU, KIND_GPU, KIND_MODEL",
            ),
        );
        check(
            "instance_group { kind: KIND_CPU gpus: [0] }",
            Err("line 1: instance_group gpus are only for kind: KIND_GPU"),
        );
        check(
            "instance_group { kind: KIND_GPU gpus: [-1] }",
            Err("line 1: instance_group gpus: -1 is not a device number"),
        );
    }

    #[test]
    fn errors_name_the_field_and_line() {
        check(
            "max_batch_size: \"two\"",
            Err("line 1: `max_batch_size` must be an integer"),
        );
        check(
            "name: \"m\"\ninput [ { name: \"x\" } ]",
            Err("line 2: input/output without `data_type`"),
        );
        check(
            "input { name: \"x\" data_type: TYPE_FLOAT }",
            Err("unknown data_type TYPE_FLOAT"),
        );
        check("input [ { name: \"x\" ", Err("missing `}`"));
        check("name: \"unterminated", Err("unterminated string"));
        check(
            "platform: \"tensorflow_savedmodel\"",
            Err("ONNX models only"),
        );
        check(
            "instance_group [{ count: 0 }]",
            Err("instance_group count 0"),
        );
        check("max_batch_size: -1", Err("out of range"));
        check(": 3", Err("expected a field name"));
        check(&"a {".repeat(100), Err("nested too deeply"));
    }

    #[test]
    fn unknown_fields_and_angle_brackets_are_accepted() {
        let config = ModelConfig::from_text(
            "optimization < execution_accelerators { cpu_execution_accelerator: [ { name: 'openvino' } ] } >\nmodel_warmup []; max_batch_size: 8",
            "m",
        )
        .expect("parses");
        assert_eq!(config.max_batch_size, 8);
    }
}
