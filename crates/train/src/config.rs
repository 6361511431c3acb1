//! The training settings, with Ultralytics' `args.yaml` names and defaults.

use std::path::{Path, PathBuf};

use cardet_augment::AugmentConfig;

use crate::Error;
use crate::loss::LossGains;
use crate::optim::OptimizerName;

/// Everything a run needs; field names are Ultralytics' `args.yaml` keys.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// The dataset's `data.yaml`.
    pub data: PathBuf,
    /// A scale letter (`n`, `s`, `m`, `l`, `x`: train from scratch) or a safetensors
    /// checkpoint to start from.
    pub model: String,
    pub epochs: usize,
    /// Images per optimiser batch over all ranks.
    pub batch: usize,
    pub imgsz: u32,
    pub lr0: f64,
    pub lrf: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    pub warmup_momentum: f64,
    pub warmup_bias_lr: f64,
    pub optimizer: OptimizerName,
    pub cos_lr: bool,
    /// Mosaic is off for this many final epochs.
    pub close_mosaic: usize,
    pub seed: u64,
    pub deterministic: bool,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub workers: usize,
    /// Runs go to `<project>/<name>`.
    pub project: PathBuf,
    pub name: String,
    /// Batches per optimiser step; `None`: Ultralytics' rule `round(64 / batch)`.
    pub accumulate: Option<usize>,
    /// Wall-clock budget in hours (overrides `epochs` once the first epoch is timed).
    pub time: Option<f64>,
    /// Validate after every epoch (the last is always validated).
    pub val: bool,
    pub plots: bool,
    /// Mixed precision (`crate::amp`): fp16 autocast with a loss scaler on CUDA, a bf16
    /// copy of the model on CPU. Off by default: on CPU it gained nothing beyond noise
    /// (BENCHMARKS.md, "distributed").
    #[serde(default)]
    pub amp: bool,
    #[serde(flatten)]
    pub gains: LossGains,
    #[serde(flatten)]
    pub augment: AugmentConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::from("data.yaml"),
            model: "n".into(),
            epochs: 100,
            batch: 16,
            imgsz: 640,
            lr0: 0.01,
            lrf: 0.01,
            momentum: 0.937,
            weight_decay: 0.0005,
            warmup_epochs: 3.0,
            warmup_momentum: 0.8,
            warmup_bias_lr: 0.1,
            optimizer: OptimizerName::Auto,
            cos_lr: false,
            close_mosaic: 10,
            seed: 0,
            deterministic: true,
            device: "cpu".into(),
            workers: 8,
            project: PathBuf::from("runs/train"),
            name: "exp".into(),
            accumulate: None,
            time: None,
            val: true,
            plots: true,
            amp: false,
            gains: LossGains::default(),
            augment: AugmentConfig::default(),
        }
    }
}

/// Ultralytics keys that cardet reads but does not act on (so an Ultralytics
/// `args.yaml` loads without complaint).
const IGNORED_KEYS: &[&str] = &[
    "task",
    "mode",
    "patience",
    "save",
    "save_period",
    "cache",
    "exist_ok",
    "pretrained",
    "verbose",
    "single_cls",
    "rect",
    "resume",
    "fraction",
    "profile",
    "freeze",
    "multi_scale",
    "overlap_mask",
    "mask_ratio",
    "dropout",
    "split",
    "save_json",
    "conf",
    "iou",
    "max_det",
    "half",
    "dnn",
    "source",
    "vid_stride",
    "stream_buffer",
    "visualize",
    "augment",
    "agnostic_nms",
    "classes",
    "retina_masks",
    "embed",
    "show",
    "save_frames",
    "save_txt",
    "save_conf",
    "save_crop",
    "show_labels",
    "show_conf",
    "show_boxes",
    "line_width",
    "format",
    "keras",
    "optimize",
    "int8",
    "dynamic",
    "simplify",
    "opset",
    "workspace",
    "nms",
    "pose",
    "kobj",
    "nbs",
    "bgr",
    "copy_paste",
    "copy_paste_mode",
    "auto_augment",
    "erasing",
    "cfg",
    "tracker",
    "save_dir",
    "mixup",
    "cutmix",
    "compile",
    "label_smoothing",
    "crop_fraction",
    "rle",
    "angle",
    "end2end",
    "semseg",
    "muon_w",
    "sgd_w",
    "cls_pw",
    "batch_size",
];

impl TrainConfig {
    /// The run folder: `<project>/<name>`.
    pub fn run_dir(&self) -> PathBuf {
        self.project.join(&self.name)
    }

    /// Sets one setting from its Ultralytics name and its text; `Ok(false)` for a key
    /// Ultralytics has and cardet ignores.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, Error> {
        let value = value.trim().trim_matches(['"', '\'']);
        let bad = |expected: &str| Error::Config(format!("{key}: {value:?} is not {expected}"));
        let float = || value.parse::<f64>().map_err(|_| bad("a number"));
        let float32 = || value.parse::<f32>().map_err(|_| bad("a number"));
        let int = || value.parse::<usize>().map_err(|_| bad("a whole number"));
        let boolean = || match value.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(bad("true or false")),
        };
        let is_null = matches!(value, "" | "null" | "None" | "~");
        match key {
            "data" => self.data = PathBuf::from(value),
            "model" => self.model = value.to_string(),
            "epochs" => self.epochs = int()?,
            "batch" => self.batch = int()?,
            "imgsz" => self.imgsz = value.parse().map_err(|_| bad("a whole number"))?,
            "lr0" => self.lr0 = float()?,
            "lrf" => self.lrf = float()?,
            "momentum" => self.momentum = float()?,
            "weight_decay" => self.weight_decay = float()?,
            "warmup_epochs" => self.warmup_epochs = float()?,
            "warmup_momentum" => self.warmup_momentum = float()?,
            "warmup_bias_lr" => self.warmup_bias_lr = float()?,
            "optimizer" => self.optimizer = value.parse()?,
            "cos_lr" => self.cos_lr = boolean()?,
            "close_mosaic" => self.close_mosaic = int()?,
            "seed" => self.seed = value.parse().map_err(|_| bad("a whole number"))?,
            "deterministic" => self.deterministic = boolean()?,
            "device" => {
                self.device = if is_null {
                    "cpu".into()
                } else {
                    value.to_string()
                }
            }
            "workers" => self.workers = int()?,
            "project" => {
                if !is_null {
                    self.project = PathBuf::from(value)
                }
            }
            "name" => {
                if !is_null {
                    self.name = value.to_string()
                }
            }
            "accumulate" => self.accumulate = if is_null { None } else { Some(int()?) },
            "time" => self.time = if is_null { None } else { Some(float()?) },
            "val" => self.val = boolean()?,
            "plots" => self.plots = boolean()?,
            "amp" => self.amp = boolean()?,
            "box" => self.gains.box_gain = float()?,
            "cls" => self.gains.cls_gain = float()?,
            "dfl" => self.gains.dfl_gain = float()?,
            "mosaic" => self.augment.mosaic = float32()?,
            "degrees" => self.augment.degrees = float32()?,
            "translate" => self.augment.translate = float32()?,
            "scale" => self.augment.scale = float32()?,
            "shear" => self.augment.shear = float32()?,
            "perspective" => self.augment.perspective = float32()?,
            "hsv_h" => self.augment.hsv_h = float32()?,
            "hsv_s" => self.augment.hsv_s = float32()?,
            "hsv_v" => self.augment.hsv_v = float32()?,
            "fliplr" => self.augment.fliplr = float32()?,
            "flipud" => self.augment.flipud = float32()?,
            _ if IGNORED_KEYS.contains(&key) => return Ok(false),
            _ => {
                return Err(Error::Config(format!(
                    "unknown setting {key:?} (cardet reads Ultralytics' args.yaml names)"
                )));
            }
        }
        Ok(true)
    }

    /// Applies a flat `key: value` YAML file (an Ultralytics `args.yaml`); returns the
    /// keys it ignored.
    pub fn apply_yaml_file(&mut self, path: &Path) -> Result<Vec<String>, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut ignored = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split(" #").next().unwrap_or("").trim_end();
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(Error::Config(format!(
                    "{}:{}: expected `key: value`, found {line:?}",
                    path.display(),
                    number + 1
                )));
            };
            let key = key.trim();
            if !self
                .set(key, value)
                .map_err(|e| Error::Config(format!("{}:{}: {e}", path.display(), number + 1)))?
            {
                ignored.push(key.to_string());
            }
        }
        Ok(ignored)
    }

    /// The settings as Ultralytics' `args.yaml` (flat `key: value` lines).
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for (key, value) in self.to_params() {
            out.push_str(&format!("{key}: {value}\n"));
        }
        out
    }

    /// The settings as `(name, text)` pairs in a stable order (for `args.yaml` and the
    /// observer's `on_start`).
    pub fn to_params(&self) -> std::collections::BTreeMap<String, String> {
        let value = serde_json::to_value(self).unwrap_or_default();
        let mut params = std::collections::BTreeMap::new();
        if let serde_json::Value::Object(map) = value {
            for (key, value) in map {
                let text = match value {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => "null".into(),
                    other => other.to_string(),
                };
                params.insert(key, text);
            }
        }
        params
    }

    /// Checks ranges before anything is loaded.
    pub fn validate(&self) -> Result<(), Error> {
        let problem = if self.epochs == 0 && self.time.is_none() {
            Some("epochs must be at least 1".to_string())
        } else if self.batch == 0 {
            Some("batch must be at least 1".into())
        } else if self.imgsz == 0 || !self.imgsz.is_multiple_of(32) {
            Some(format!(
                "imgsz {} is not a positive multiple of 32",
                self.imgsz
            ))
        } else if !(self.lr0 > 0.0 && self.lr0.is_finite()) {
            Some(format!("lr0 {} must be positive", self.lr0))
        } else if !(self.lrf > 0.0 && self.lrf <= 1.0) {
            Some(format!("lrf {} must be in (0, 1]", self.lrf))
        } else if !(0.0..1.0).contains(&self.momentum) {
            Some(format!("momentum {} must be in [0, 1)", self.momentum))
        } else if self.weight_decay < 0.0 || self.warmup_epochs < 0.0 {
            Some("weight_decay and warmup_epochs must not be negative".into())
        } else if self.accumulate == Some(0) {
            Some("accumulate must be at least 1".into())
        } else if self.time.is_some_and(|t| t.is_nan() || t <= 0.0) {
            Some("time (hours) must be positive".into())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(Error::Config(problem)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_yaml_round_trips_and_unknown_keys_are_named() {
        let mut config = TrainConfig {
            epochs: 7,
            cos_lr: true,
            time: Some(0.5),
            ..TrainConfig::default()
        };
        config.augment.mosaic = 0.25;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("args.yaml");
        std::fs::write(&path, format!("{}task: detect\n", config.to_yaml())).expect("write");
        let mut read = TrainConfig::default();
        let ignored = read.apply_yaml_file(&path).expect("reads");
        assert_eq!(read, config);
        assert_eq!(ignored, ["task"]);
        let error = read.set("epoch", "3").expect_err("typo");
        assert!(
            error.to_string().contains("unknown setting \"epoch\""),
            "{error}"
        );
        let error = read.set("lr0", "fast").expect_err("not a number");
        assert!(error.to_string().contains("lr0"), "{error}");
    }
}
