//! Safetensors in and out, keyed by the Ultralytics state-dict names.
//!
//! The file's `__metadata__` carries what a checkpoint needs beyond tensors:
//! `names` (a JSON list of class names), `scale` (`n`..`x`) and `nc`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use tch::{Device, Kind, Tensor, nn};

use crate::{Config, Error, Scale, YoloV8};

/// A network with its variables and class names: what `mwt` trains, predicts with and exports.
#[derive(Debug)]
pub struct Detector {
    pub vs: nn::VarStore,
    pub net: YoloV8,
    pub names: Vec<String>,
}

/// The `__metadata__` of a cardet safetensors file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightsMetadata {
    pub names: Option<Vec<String>>,
    pub scale: Option<Scale>,
}

impl Detector {
    /// A freshly initialised network for `names.len()` classes.
    pub fn new(scale: Scale, names: Vec<String>, device: Device) -> Detector {
        let vs = nn::VarStore::new(device);
        let config = Config {
            scale,
            num_classes: names.len() as i64,
        };
        let net = YoloV8::new(&vs.root(), config);
        Detector { vs, net, names }
    }

    /// Loads a safetensors file whose metadata names its scale and classes (as
    /// `cargo xtask import-weights` and [`Detector::save`] write them).
    pub fn load(path: &Path, device: Device) -> Result<Detector, Error> {
        let metadata = read_metadata(path)?;
        let scale = metadata.scale.ok_or_else(|| Error::Metadata {
            path: path.to_path_buf(),
            key: "scale",
            reason: "missing; pass the scale explicitly".into(),
        })?;
        let names = metadata.names.ok_or_else(|| Error::Metadata {
            path: path.to_path_buf(),
            key: "names",
            reason: "missing; pass the class names explicitly".into(),
        })?;
        Detector::load_as(path, scale, names, device)
    }

    /// Loads a safetensors state dict into a network of the given scale and classes.
    pub fn load_as(
        path: &Path,
        scale: Scale,
        names: Vec<String>,
        device: Device,
    ) -> Result<Detector, Error> {
        let mut detector = Detector::new(scale, names, device);
        load_state_dict(&mut detector.vs, detector.net.config, path)?;
        Ok(detector)
    }

    /// Writes every variable, plus scale and names in the metadata.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let metadata = WeightsMetadata {
            names: Some(self.names.clone()),
            scale: Some(self.net.config.scale),
        };
        save_state_dict(&self.vs, &metadata, path)
    }
}

/// Reads only the header's metadata.
pub fn read_metadata(path: &Path) -> Result<WeightsMetadata, Error> {
    let buffer = read(path)?;
    let (_, header) = SafeTensors::read_metadata(&buffer).map_err(|e| format_error(path, e))?;
    let Some(map) = header.metadata() else {
        return Ok(WeightsMetadata::default());
    };
    let names = match map.get("names") {
        Some(text) => {
            Some(
                serde_json::from_str::<Vec<String>>(text).map_err(|e| Error::Metadata {
                    path: path.to_path_buf(),
                    key: "names",
                    reason: format!("not a JSON list of strings: {e}"),
                })?,
            )
        }
        None => None,
    };
    let scale = match map.get("scale") {
        Some(letter) => Some(Scale::from_letter(letter).ok_or_else(|| Error::Metadata {
            path: path.to_path_buf(),
            key: "scale",
            reason: format!("{letter:?} is none of n, s, m, l, x"),
        })?),
        None => None,
    };
    Ok(WeightsMetadata { names, scale })
}

/// Copies a safetensors state dict into `vs`, checking that its key set and shapes are
/// exactly the model's. The first difference, in model order, is the error.
pub fn load_state_dict(vs: &mut nn::VarStore, config: Config, path: &Path) -> Result<(), Error> {
    let buffer = read(path)?;
    let file = SafeTensors::deserialize(&buffer).map_err(|e| format_error(path, e))?;
    let file_tensors: HashMap<String, TensorView> = file.tensors().into_iter().collect();
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by_key(|a| natural_key(&a.0));
    let mismatch = |name: &str| {
        (
            path.to_path_buf(),
            config.scale,
            config.num_classes,
            name.to_string(),
        )
    };
    for (name, variable) in &variables {
        let Some(view) = file_tensors.get(name) else {
            let (path, scale, num_classes, name) = mismatch(name);
            return Err(Error::MissingTensor {
                path,
                scale,
                num_classes,
                name,
            });
        };
        let found: Vec<i64> = view.shape().iter().map(|d| *d as i64).collect();
        if found != variable.size() {
            let (path, scale, num_classes, name) = mismatch(name);
            return Err(Error::ShapeMismatch {
                path,
                scale,
                num_classes,
                name,
                expected: variable.size(),
                found,
            });
        }
    }
    let mut extra: Vec<&String> = file_tensors
        .keys()
        .filter(|name| !variables.iter().any(|(known, _)| known == *name))
        .collect();
    extra.sort_by_key(|name| natural_key(name));
    if let Some(name) = extra.first() {
        let (path, scale, num_classes, name) = mismatch(name);
        return Err(Error::UnexpectedTensor {
            path,
            scale,
            num_classes,
            name,
        });
    }
    tch::no_grad(|| -> Result<(), Error> {
        for (name, variable) in &variables {
            let view = &file_tensors[name];
            let source = to_tensor(path, name, view)?;
            let mut target = variable.shallow_clone();
            target.f_copy_(&source.to_kind(variable.kind()))?;
        }
        Ok(())
    })
}

/// Writes every variable of `vs` (float32 as it is, on CPU) with the metadata.
pub fn save_state_dict(
    vs: &nn::VarStore,
    metadata: &WeightsMetadata,
    path: &Path,
) -> Result<(), Error> {
    let mut tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, tensor)| (name, tensor.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    tensors.sort_by_key(|a| natural_key(&a.0));
    let mut bytes = Vec::with_capacity(tensors.len());
    for (name, tensor) in &tensors {
        let dtype = match tensor.kind() {
            Kind::Float => Dtype::F32,
            Kind::Int64 => Dtype::I64,
            Kind::Half => Dtype::F16,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Double => Dtype::F64,
            other => {
                return Err(Error::Dtype {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let n_bytes = tensor.numel() * tensor.kind().elt_size_in_bytes();
        let mut data = vec![0u8; n_bytes];
        tensor.f_copy_data_u8(&mut data, tensor.numel())?;
        let shape: Vec<usize> = tensor.size().iter().map(|d| *d as usize).collect();
        bytes.push((name.clone(), dtype, shape, data));
    }
    let views = bytes
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| format_error(path, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut info = HashMap::new();
    if let Some(names) = &metadata.names {
        info.insert(
            "names".to_string(),
            serde_json::Value::from(names.clone()).to_string(),
        );
        info.insert("nc".to_string(), names.len().to_string());
    }
    if let Some(scale) = metadata.scale {
        info.insert("scale".to_string(), scale.to_string());
    }
    let encoded = safetensors::serialize(views, Some(info)).map_err(|e| format_error(path, e))?;
    std::fs::write(path, encoded).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Sorts keys in the order Ultralytics registers them: numbers compare as numbers
/// (`model.10` after `model.9`), a Conv's `conv` before its `bn`, and a BatchNorm's
/// tensors in `state_dict()` order.
pub fn natural_key(name: &str) -> Vec<(u8, u64, String)> {
    const REGISTRATION_ORDER: [&str; 7] = [
        "conv",
        "bn",
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ];
    name.split('.')
        .map(|part| match part.parse::<u64>() {
            Ok(number) => (0, number, String::new()),
            Err(_) => match REGISTRATION_ORDER.iter().position(|known| *known == part) {
                Some(rank) => (1, rank as u64, String::new()),
                None => (2, 0, part.to_string()),
            },
        })
        .collect()
}

fn to_tensor(path: &Path, name: &str, view: &TensorView) -> Result<Tensor, Error> {
    let kind = match view.dtype() {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        other => {
            return Err(Error::Dtype {
                path: path.to_path_buf(),
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    };
    let shape: Vec<i64> = view.shape().iter().map(|d| *d as i64).collect();
    Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: PathBuf::from(path),
        source,
    })
}

fn format_error(path: &Path, error: safetensors::SafeTensorError) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(mut names: Vec<&str>, expected: &[&str]) {
        names.sort_by_key(|name| natural_key(name));
        assert_eq!(names, expected);
    }

    #[test]
    fn keys_sort_in_model_order() {
        check(
            vec![
                "model.10.cv1.conv.weight",
                "model.9.cv2.bn.bias",
                "model.2.m.0.cv1.bn.weight",
                "model.2.cv1.bn.running_var",
                "model.2.cv1.bn.bias",
                "model.2.cv1.conv.weight",
                "model.22.dfl.conv.weight",
                "model.22.cv3.0.2.bias",
            ],
            &[
                "model.2.cv1.conv.weight",
                "model.2.cv1.bn.bias",
                "model.2.cv1.bn.running_var",
                "model.2.m.0.cv1.bn.weight",
                "model.9.cv2.bn.bias",
                "model.10.cv1.conv.weight",
                "model.22.cv3.0.2.bias",
                "model.22.dfl.conv.weight",
            ],
        );
    }
}
