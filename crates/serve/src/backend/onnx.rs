//! The ONNX Runtime backend: one `ort` session per model instance on the CPU, one per
//! batch size for an instance on CUDA (see `Sessions`).
//!
//! `Session::run` takes `&mut self`, so each instance owns its session behind an
//! uncontended mutex and is driven by exactly one OS thread (the batcher's instance
//! worker).
//!
//! The 4.9 MB image of a request is not copied here: input bytes that are aligned for
//! their element type (the REST edge lays binary data out so) are handed to ONNX
//! Runtime as a borrowed view, and numeric outputs stay in the buffer ONNX Runtime
//! wrote them to, shared as [`Bytes`] until the response is written. gRPC's
//! `raw_input_contents` sit wherever protobuf put them, seldom aligned, and are copied
//! once, in a vectorised loop (see `numeric_input`).
//!
//! Memory: the session runs without ONNX Runtime's CPU arena. The arena keeps the
//! high-water mark of the largest batch it ever ran (batch 8 of YOLOv8n at 640 is
//! hundreds of MB) for the life of the session; without it every run's activations
//! are returned when the run ends, so a server that saw one burst of traffic shrinks
//! back to its idle size. Memory patterns stay on: a pattern is planned once per
//! input shape (one per batch size) and turns a run's many activation allocations
//! into one block, which is what the arena would otherwise save. Measured with
//! `serve_bench` on 2 idle cores: a raw session at batch 1 ran 23.5 images/s with
//! both, about 23.4 with either one off and 21.2 with both off; `serve` went from
//! 19.7 to 21.1 images/s (one client) when patterns came back on. Spinning
//! intra-op threads stay on within a run (turning them off cost `serve` 7%), but
//! stop between runs (`session.force_spinning_stop`): with them spinning, the
//! answer of a batch-1 request waited 3.3-4.1 ms for a core to be sent on; with
//! them stopped, 0.05 ms (`serve_bench serve --clients 1`, 2-core AMD EPYC).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ort::ep;
use ort::session::{Session, SessionInputValue};
use ort::value::{
    DynTensor, DynTensorValueType, DynValue, Tensor as OrtTensor, TensorElementType, TensorRef,
    ValueType,
};

use crate::backend::{
    Backend, BackendError, Batch, HostPinning, Outputs, Signature, TensorSignature,
};
use crate::model_config::{ConvAlgoSearch, Device};
use crate::tensor::{DataType, Tensor};

/// Threads for each session: ONNX Runtime's intra- and inter-op pools (0: its default).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Threads {
    pub intra_op: usize,
    pub inter_op: usize,
}

pub struct OnnxBackend {
    sessions: Mutex<Sessions>,
    pinning: Option<Arc<dyn HostPinning>>,
}

/// On the CPU, one session runs every batch size. On CUDA, one session per batch
/// size (its first dimension), each built the first time that size comes: ONNX
/// Runtime's CUDA provider spends 140 ms (cuDNN's heuristic) to 850 ms (its
/// exhaustive search) every time a session's input shape changes, not only the
/// first time (`serve_bench shapes` on an H200), so a session that saw batches of
/// 3, then 5, then 3 paid it on each.
struct Sessions {
    by_rows: Vec<(i64, Session)>,
    recipe: SessionRecipe,
}

/// What a session is built from, kept to build the next batch size's.
struct SessionRecipe {
    runtime: Arc<cardet_onnx::Runtime>,
    model: PathBuf,
    threads: Threads,
    device: Device,
    conv_algo_search: ConvAlgoSearch,
}

/// The key of the CPU's one session, whatever the batch size.
const ANY_ROWS: i64 = 0;
/// The key of the session a CUDA instance built at load, before its first batch.
const UNCLAIMED: i64 = -1;
/// Sessions one CUDA instance keeps at most: every power of two up to a
/// `max_batch_size` of 128, or every size up to 8.
const MAX_SESSIONS: usize = 8;

impl Sessions {
    /// The session for a batch of `rows` (any batch on the CPU).
    fn for_rows(&mut self, rows: i64) -> Result<&mut Session, String> {
        let key = match self.recipe.device {
            Device::Cpu => ANY_ROWS,
            Device::Cuda(_) => rows,
        };
        let keys: Vec<i64> = self.by_rows.iter().map(|(k, _)| *k).collect();
        let index = match slot_for(&keys, key) {
            Slot::Use(index) => index,
            Slot::Claim(index) => {
                self.by_rows[index].0 = key;
                index
            }
            Slot::Build => {
                self.by_rows.push((key, self.recipe.build()?));
                self.by_rows.len() - 1
            }
        };
        Ok(&mut self.by_rows[index].1)
    }
}

/// Which session runs a batch whose key is `key`, given the sessions' keys.
#[derive(Debug, PartialEq)]
enum Slot {
    /// This session (its key, or past the cap the first session).
    Use(usize),
    /// The session built at load, not yet tied to a size: it takes this one.
    Claim(usize),
    /// A new session for this key.
    Build,
}

fn slot_for(keys: &[i64], key: i64) -> Slot {
    if let Some(index) = keys.iter().position(|k| *k == key) {
        return Slot::Use(index);
    }
    if let Some(index) = keys.iter().position(|k| *k == UNCLAIMED) {
        return Slot::Claim(index);
    }
    // Past the cap, the first session runs every new shape (paying the switch): a
    // model without a batch dimension whose first dimension varies would otherwise
    // grow one session, and its GPU memory, per value sent.
    if keys.len() >= MAX_SESSIONS {
        return Slot::Use(0);
    }
    Slot::Build
}

impl OnnxBackend {
    /// One CPU instance as a [`crate::batcher::SplitInstance`]'s sessions: one with
    /// `threads` and two with `half` each.
    ///
    /// Each session holds its own weights (about 15 MiB for YOLOv8n). ONNX Runtime's
    /// prepacked-weights container shares only the prepacked forms of initializers
    /// handed to every session with `AddInitializer`
    /// (`SessionState::PrepackConstantInitializedTensors`): passed to sessions built
    /// from a file it changed nothing (102 MB resident either way, three loads each),
    /// so it is not used. Handing all three the same initializers saved about 3 MiB of
    /// the 25 a single copy would (`benches/shared_initializers.py`), presumably
    /// because the graph optimizer makes each session's own copies of the weights it
    /// rewrites.
    pub fn load_split(
        runtime: &Arc<cardet_onnx::Runtime>,
        model: &Path,
        threads: Threads,
        half: Threads,
    ) -> Result<(OnnxBackend, [OnnxBackend; 2]), String> {
        let load = |threads| {
            Self::load(
                runtime,
                model,
                threads,
                Device::Cpu,
                ConvAlgoSearch::default(),
            )
        };
        Ok((load(threads)?, [load(half)?, load(half)?]))
    }

    /// Builds a session for the model file on `device` (on CUDA, the first of
    /// one per batch size).
    pub fn load(
        runtime: &Arc<cardet_onnx::Runtime>,
        model: &Path,
        threads: Threads,
        device: Device,
        conv_algo_search: ConvAlgoSearch,
    ) -> Result<OnnxBackend, String> {
        let recipe = SessionRecipe {
            runtime: runtime.clone(),
            model: model.to_path_buf(),
            threads,
            device,
            conv_algo_search,
        };
        let first = recipe.build()?;
        Ok(OnnxBackend {
            sessions: Mutex::new(Sessions {
                by_rows: vec![(
                    if device == Device::Cpu {
                        ANY_ROWS
                    } else {
                        UNCLAIMED
                    },
                    first,
                )],
                recipe,
            }),
            pinning: None,
        })
    }

    /// Merged batches for this instance are page-locked with `pinning` if it runs on
    /// CUDA; a CPU instance (of a model with groups of both kinds) ignores it.
    pub fn with_host_pinning(mut self, pinning: Option<Arc<dyn HostPinning>>) -> OnnxBackend {
        let on_cuda = {
            let sessions = match self.sessions.lock() {
                Ok(sessions) => sessions,
                Err(poisoned) => poisoned.into_inner(),
            };
            matches!(sessions.recipe.device, Device::Cuda(_))
        };
        self.pinning = pinning.filter(|_| on_cuda);
        self
    }

    /// The model's declared inputs and outputs.
    pub fn signature(&self) -> Signature {
        let sessions = match self.sessions.lock() {
            Ok(sessions) => sessions,
            Err(poisoned) => poisoned.into_inner(),
        };
        let session = &sessions.by_rows[0].1;
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

impl SessionRecipe {
    fn build(&self) -> Result<Session, String> {
        let (runtime, model, threads) = (&self.runtime, &self.model, self.threads);
        let cpu = ep::CPU::default().with_arena_allocator(false).build();
        let builder = Session::builder(&runtime.environment).map_err(|e| e.to_string())?;
        let mut builder = match self.device {
            Device::Cpu => builder
                .with_execution_providers([cpu])
                .map_err(|e| e.to_string()),
            // Nodes CUDA cannot run fall back to the CPU provider after it. Without
            // `error_on_failure` a library with no CUDA provider would quietly run
            // the whole model on the CPU.
            Device::Cuda(gpu) => builder
                .with_execution_providers([
                    ep::CUDA::default()
                        .with_device_id(gpu)
                        .with_conv_algorithm_search(match self.conv_algo_search {
                            ConvAlgoSearch::Exhaustive => ep::cuda::ConvAlgorithmSearch::Exhaustive,
                            ConvAlgoSearch::Heuristic => ep::cuda::ConvAlgorithmSearch::Heuristic,
                            ConvAlgoSearch::Default => ep::cuda::ConvAlgorithmSearch::Default,
                        })
                        .build()
                        .error_on_failure(),
                    cpu,
                ])
                .map_err(|error| no_cuda(runtime, gpu, &error.to_string())),
        }?;
        // Spinning stops the moment a run returns (it restarts with the next run):
        // otherwise the pool's spinning thread holds a core just when the async
        // side needs one to send the answer, which cost a scheduler slice (about
        // 4 ms) per request on 2 cores.
        builder = builder
            .with_config_entry("session.force_spinning_stop", "1")
            .map_err(|e| e.to_string())?;
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
        builder
            .commit_from_file(model)
            .map_err(|e| format!("{}: {e}", model.display()))
    }
}

/// Why an instance cannot run on CUDA device `gpu`: most often the library is the CPU
/// build, or CUDA's own libraries (cuDNN, cuBLAS) are not where it looks.
fn no_cuda(runtime: &cardet_onnx::Runtime, gpu: i32, error: &str) -> String {
    format!(
        "CUDA device {gpu} asked for (instance_group kind: KIND_GPU or --gpu), but ONNX Runtime {} at {} \
         could not start its CUDA provider: {error}. Install the GPU build with `cargo xtask setup --gpu` \
         or point ORT_DYLIB_PATH at onnxruntime-gpu's libonnxruntime.so, with CUDA's libraries on LD_LIBRARY_PATH",
        runtime.version,
        runtime.library.display(),
        error = error.trim_end().trim_end_matches('.'),
    )
}

impl Backend for OnnxBackend {
    fn infer(&self, batch: Batch) -> Result<Outputs, BackendError> {
        let mut values: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(batch.inputs.len());
        for tensor in &batch.inputs {
            values.push((tensor.name.as_str(), to_ort_value(tensor)?));
        }
        let rows = batch
            .inputs
            .first()
            .and_then(|input| input.shape.first().copied())
            .unwrap_or(0);
        let mut sessions = match self.sessions.lock() {
            Ok(sessions) => sessions,
            Err(poisoned) => poisoned.into_inner(),
        };
        let session = sessions.for_rows(rows).map_err(BackendError::Runtime)?;
        let mut outputs = session
            .run(values)
            .map_err(|error| BackendError::Input(error.to_string()))?;
        let names: Vec<String> = outputs.keys().map(str::to_string).collect();
        let mut tensors = Vec::with_capacity(names.len());
        for name in names {
            let value = outputs.remove(&name).ok_or_else(|| {
                BackendError::Runtime(format!("output {name} vanished from the results"))
            })?;
            tensors.push(from_ort_value(name, value)?);
        }
        Ok(Outputs { tensors })
    }

    fn host_pinning(&self) -> Option<Arc<dyn HostPinning>> {
        self.pinning.clone()
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

/// A numeric input as ONNX Runtime sees it: a view of the request's bytes when they
/// are aligned for `T` (no copy), else a typed copy.
///
/// `from_le_bytes` is a closure type of its own per `T`, not a `fn` pointer: through a
/// pointer every element was an indirect call, and the copy of a misaligned 640x640
/// image (every gRPC `raw_input_contents`, whose bytes sit where protobuf put them)
/// took 1.4% of a gRPC batch-1 run's CPU samples, about 2.5 ms a request, against
/// 0.4% inlined (`perf record` of `serve_bench serve --clients 1 --grpc`).
fn numeric_input<T>(
    tensor: &Tensor,
    from_le_bytes: impl Fn(&[u8]) -> T,
) -> ort::Result<SessionInputValue<'_>>
where
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
{
    let shape = tensor.shape.clone();
    // SAFETY: `T` is a primitive number, valid for every bit pattern; `align_to` only
    // yields the middle slice where the address is aligned for `T`.
    let (head, values, tail) = unsafe { tensor.data.align_to::<T>() };
    if cfg!(target_endian = "little") && head.is_empty() && tail.is_empty() {
        return TensorRef::from_array_view((shape, values)).map(SessionInputValue::from);
    }
    let values: Vec<T> = tensor
        .data
        .chunks_exact(std::mem::size_of::<T>())
        .map(from_le_bytes)
        .collect();
    OrtTensor::from_array((shape, values)).map(SessionInputValue::from)
}

/// `N` little-endian bytes (the caller's chunk is exactly `N` long).
fn le_bytes<const N: usize>(chunk: &[u8]) -> [u8; N] {
    let mut raw = [0u8; N];
    raw.copy_from_slice(chunk);
    raw
}

fn to_ort_value(tensor: &Tensor) -> Result<SessionInputValue<'_>, BackendError> {
    let result = match tensor.datatype {
        DataType::Fp32 => numeric_input(tensor, |c| f32::from_le_bytes(le_bytes(c))),
        DataType::Fp64 => numeric_input(tensor, |c| f64::from_le_bytes(le_bytes(c))),
        DataType::Int8 => numeric_input(tensor, |c| i8::from_le_bytes(le_bytes(c))),
        DataType::Int16 => numeric_input(tensor, |c| i16::from_le_bytes(le_bytes(c))),
        DataType::Int32 => numeric_input(tensor, |c| i32::from_le_bytes(le_bytes(c))),
        DataType::Int64 => numeric_input(tensor, |c| i64::from_le_bytes(le_bytes(c))),
        DataType::Uint8 => numeric_input(tensor, |c| u8::from_le_bytes(le_bytes(c))),
        DataType::Uint16 => numeric_input(tensor, |c| u16::from_le_bytes(le_bytes(c))),
        DataType::Uint32 => numeric_input(tensor, |c| u32::from_le_bytes(le_bytes(c))),
        DataType::Uint64 => numeric_input(tensor, |c| u64::from_le_bytes(le_bytes(c))),
        DataType::Bool => {
            let values: Vec<bool> = tensor.data.iter().map(|&byte| byte != 0).collect();
            OrtTensor::from_array((tensor.shape.clone(), values)).map(SessionInputValue::from)
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

/// A numeric output tensor's data, left where ONNX Runtime wrote it.
struct OutputBuffer {
    value: DynTensor,
    byte_len: usize,
}

impl AsRef<[u8]> for OutputBuffer {
    fn as_ref(&self) -> &[u8] {
        let data = self.value.data_ptr().cast::<u8>();
        if data.is_null() || self.byte_len == 0 {
            return &[];
        }
        // SAFETY: the value is a CPU tensor (checked in `from_ort_value`) of `byte_len`
        // bytes; its buffer lives as long as the value, which `self` owns, and nothing
        // writes to it after the run returned it.
        unsafe { std::slice::from_raw_parts(data, self.byte_len) }
    }
}

fn from_ort_value(name: String, value: DynValue) -> Result<Tensor, BackendError> {
    let ty = value
        .dtype()
        .tensor_type()
        .ok_or_else(|| BackendError::Runtime(format!("output {name} is not a tensor")))?;
    let datatype = from_ort_type(ty).ok_or_else(|| {
        BackendError::Runtime(format!(
            "output {name}: element type {ty:?} is not supported"
        ))
    })?;
    let shape: Vec<i64> = value
        .dtype()
        .tensor_shape()
        .map(|shape| shape.iter().copied().collect())
        .unwrap_or_default();
    let data = match (datatype, datatype.size()) {
        // ONNX Runtime's bools are one byte of 0 or 1, but copy them so the protocol's
        // encoding never depends on that.
        (DataType::Bool, _) => {
            let (_, values) = value
                .try_extract_tensor::<bool>()
                .map_err(|error| BackendError::Runtime(error.to_string()))?;
            Bytes::from(values.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>())
        }
        (DataType::Fp16 | DataType::Bytes, _) | (_, None) => {
            return Err(BackendError::Runtime(format!(
                "output {name}: datatype {} is not supported",
                datatype.name()
            )));
        }
        (_, Some(element_size)) => {
            let value = value
                .downcast::<DynTensorValueType>()
                .map_err(|error| BackendError::Runtime(format!("output {name}: {error}")))?;
            if !value.memory_info().is_cpu_accessible() {
                return Err(BackendError::Runtime(format!(
                    "output {name} is not in CPU memory"
                )));
            }
            let byte_len = Tensor::element_count(&shape)
                .and_then(|count| count.checked_mul(element_size))
                .ok_or_else(|| {
                    BackendError::Runtime(format!("output {name} has shape {shape:?}"))
                })?;
            if cfg!(target_endian = "little") {
                Bytes::from_owner(OutputBuffer { value, byte_len })
            } else {
                return Err(BackendError::Runtime(
                    "serve's ONNX backend needs a little-endian machine".into(),
                ));
            }
        }
    };
    Ok(Tensor {
        name,
        datatype,
        shape,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misaligned_input_bytes_are_copied_with_their_values() {
        let _runtime = cardet_onnx::load().expect("onnxruntime");
        let values: Vec<f32> = (0..1000).map(|i| i as f32 * 0.25 - 7.0).collect();
        let mut bytes = vec![0u8];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        // One byte in, the floats cannot be aligned for `f32`: the copy path.
        let tensor = Tensor {
            name: "images".into(),
            datatype: DataType::Fp32,
            shape: vec![10, 100],
            data: Bytes::from(bytes).slice(1..),
        };
        assert_ne!(
            tensor.data.as_ptr() as usize % std::mem::align_of::<f32>(),
            0
        );
        let value = to_ort_value(&tensor).expect("input");
        let (shape, seen) = value.try_extract_tensor::<f32>().expect("f32 tensor");
        assert_eq!(&**shape, &[10, 100]);
        assert_eq!(seen, values.as_slice());
    }

    #[test]
    fn each_batch_size_gets_its_session_up_to_the_cap() {
        // The load's session takes the first size; a known size reuses its own.
        assert_eq!(slot_for(&[UNCLAIMED], 4), Slot::Claim(0));
        assert_eq!(slot_for(&[4, 1], 1), Slot::Use(1));
        assert_eq!(slot_for(&[4, 1], 2), Slot::Build);
        // The CPU's one session answers every size.
        assert_eq!(slot_for(&[ANY_ROWS], ANY_ROWS), Slot::Use(0));
        // At the cap, a new size shares the first session instead of growing.
        let full: Vec<i64> = (1..=MAX_SESSIONS as i64).collect();
        assert_eq!(slot_for(&full, 100), Slot::Use(0));
        assert_eq!(slot_for(&full, 3), Slot::Use(2));
    }
}
