//! Training checkpoints: one safetensors file per checkpoint.
//!
//! The EMA weights sit under their plain state-dict names (`model.0.conv.weight`, ...)
//! with `names` and `scale` in the metadata, so once [`strip`]ped (Ultralytics'
//! `strip_optimizer`) the file is an ordinary cardet weights file for `mwt predict`
//! and `mwt export`. During training it also holds the raw model under `train/`, the
//! optimiser buffers under `optimizer/<slot>/` and gradients accumulated but not yet
//! applied under `grad/`; the loop state is the `train_state` metadata entry (also
//! written beside it as `last.json` / `best.json`).

use std::collections::HashMap;
use std::path::Path;

use cardet_model::weights::{WeightsMetadata, read_metadata};
use cardet_model::{Detector, Scale};
use safetensors::{Dtype, tensor::TensorView};
use tch::{Device, Kind, Tensor};

use crate::Error;
use crate::config::TrainConfig;

pub const TRAIN_PREFIX: &str = "train/";
pub const OPTIMIZER_PREFIX: &str = "optimizer/";
pub const GRAD_PREFIX: &str = "grad/";

/// The loop's position and bookkeeping: what `--resume` needs beyond tensors.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// Epochs completed (the next epoch to run, 0-based).
    pub epoch: usize,
    /// Batches seen since the start of training.
    pub step: u64,
    /// The batch index (`ni`) of the last optimiser step, -1 before the first.
    pub last_opt_step: i64,
    pub optimizer_steps: u64,
    pub ema_updates: u64,
    pub best_fitness: Option<f64>,
    pub best_epoch: usize,
    /// The epochs the run plans (changes under `time`).
    pub epochs: usize,
    /// Seconds trained before this checkpoint (for `time` budgets across resumes).
    pub train_seconds: f64,
    /// The only randomness: the loader's batches depend on `(seed, epoch)` and libtorch's
    /// generator is seeded with `seed` once, before the model is built.
    pub seed: u64,
    pub optimizer: String,
    pub lr0: f64,
    pub momentum: f64,
    pub zero_bias_warmup: bool,
    pub args: TrainConfig,
    /// The CUDA AMP loss scaler's state; absent without it (and in checkpoints
    /// written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<crate::amp::LossScale>,
}

/// Writes a full checkpoint.
pub fn save(
    path: &Path,
    ema: &Detector,
    model: &Detector,
    optimizer_state: &[(String, Tensor)],
    pending_grads: &[(String, Tensor)],
    state: &TrainState,
) -> Result<(), Error> {
    let mut tensors: Vec<(String, Tensor)> = ema.vs.variables().into_iter().collect();
    for (name, tensor) in model.vs.variables() {
        tensors.push((format!("{TRAIN_PREFIX}{name}"), tensor));
    }
    for (name, tensor) in optimizer_state {
        tensors.push((format!("{OPTIMIZER_PREFIX}{name}"), tensor.shallow_clone()));
    }
    for (name, tensor) in pending_grads {
        tensors.push((format!("{GRAD_PREFIX}{name}"), tensor.shallow_clone()));
    }
    let state_json = serde_json::to_string(state)
        .map_err(|e| Error::Config(format!("train state to JSON: {e}")))?;
    write(
        path,
        &tensors,
        &ema.names,
        ema.net.config.scale,
        Some(&state_json),
    )
}

/// Rewrites `path` with the EMA weights only: a plain cardet weights file.
pub fn strip(path: &Path) -> Result<(), Error> {
    let metadata = read_metadata(path)?;
    let (names, scale) = names_and_scale(path, &metadata)?;
    let tensors: Vec<(String, Tensor)> = read_tensors(path)?
        .into_iter()
        .filter(|(name, _)| !name.contains('/'))
        .collect();
    write(path, &tensors, &names, scale, None)
}

/// The tensors of a checkpoint by name.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>, Error> {
    Ok(Tensor::read_safetensors(path)
        .map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .into_iter()
        .collect())
}

/// The loop state in a checkpoint's metadata.
pub fn read_state(path: &Path) -> Result<TrainState, Error> {
    let buffer = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&buffer).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let text = header
        .metadata()
        .as_ref()
        .and_then(|map| map.get("train_state"))
        .ok_or_else(|| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "no train_state metadata: a stripped (finished) checkpoint cannot resume"
                .into(),
        })?;
    serde_json::from_str(text).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("train_state: {e}"),
    })
}

/// A detector from any cardet weights file, full checkpoint or stripped: the plain
/// (EMA) names only.
pub fn load_detector(path: &Path, device: Device) -> Result<Detector, Error> {
    let metadata = read_metadata(path)?;
    let (names, scale) = names_and_scale(path, &metadata)?;
    let detector = Detector::new(scale, names, device);
    let tensors = read_tensors(path)?;
    copy_into(&detector, &tensors, "", path)?;
    Ok(detector)
}

/// Copies `prefix + name` tensors into every variable of `detector`, checking shapes.
pub fn copy_into(
    detector: &Detector,
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    path: &Path,
) -> Result<(), Error> {
    tch::no_grad(|| {
        for (name, variable) in detector.vs.variables() {
            let key = format!("{prefix}{name}");
            let source = tensors.get(&key).ok_or_else(|| Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("tensor {key} is missing"),
            })?;
            if source.size() != variable.size() {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!(
                        "tensor {key} has shape {:?}, the model expects {:?}",
                        source.size(),
                        variable.size()
                    ),
                });
            }
            variable
                .shallow_clone()
                .f_copy_(&source.to_kind(variable.kind()))?;
        }
        Ok(())
    })
}

fn names_and_scale(path: &Path, metadata: &WeightsMetadata) -> Result<(Vec<String>, Scale), Error> {
    match (&metadata.names, metadata.scale) {
        (Some(names), Some(scale)) => Ok((names.clone(), scale)),
        _ => Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "metadata lacks `names` or `scale`; not a cardet checkpoint".into(),
        }),
    }
}

fn write(
    path: &Path,
    tensors: &[(String, Tensor)],
    names: &[String],
    scale: Scale,
    state_json: Option<&str>,
) -> Result<(), Error> {
    let mut encoded = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let tensor = tensor.detach().to_device(Device::Cpu).contiguous();
        let dtype = match tensor.kind() {
            Kind::Float => Dtype::F32,
            Kind::Int64 => Dtype::I64,
            Kind::Double => Dtype::F64,
            other => {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!("tensor {name} has dtype {other:?}"),
                });
            }
        };
        let mut data = vec![0u8; tensor.numel() * tensor.kind().elt_size_in_bytes()];
        tensor.f_copy_data_u8(&mut data, tensor.numel())?;
        let shape: Vec<usize> = tensor.size().iter().map(|d| *d as usize).collect();
        encoded.push((name.clone(), dtype, shape, data));
    }
    encoded.sort_by(|a, b| a.0.cmp(&b.0));
    let views = encoded
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| Error::Checkpoint {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut info = HashMap::new();
    info.insert(
        "names".to_string(),
        serde_json::Value::from(names.to_vec()).to_string(),
    );
    info.insert("nc".to_string(), names.len().to_string());
    info.insert("scale".to_string(), scale.to_string());
    if let Some(state) = state_json {
        info.insert("train_state".to_string(), state.to_string());
    }
    let bytes = safetensors::serialize(views, Some(info)).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    // Write then rename: an interrupted save never leaves a torn `last`.
    let partial = path.with_extension("safetensors.partial");
    std::fs::write(&partial, bytes).map_err(|source| Error::Write {
        path: partial.clone(),
        source,
    })?;
    std::fs::rename(&partial, path).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}
