//! What the loader is asked to do: Ultralytics' augmentation hyper-parameters and
//! the loader's own settings.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The stride every YOLOv8 input side is a multiple of.
pub const STRIDE: u32 = 32;
/// Ultralytics' padding of rectangular validation batch shapes, in strides.
pub const RECT_PAD: f64 = 0.5;

/// Ultralytics' hyper-parameter names and defaults (`default.yaml`): mosaic 1.0,
/// degrees 0.0, translate 0.1, scale 0.5, shear 0.0, perspective 0.0, hsv_h 0.015,
/// hsv_s 0.7, hsv_v 0.4, fliplr 0.5, flipud 0.0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AugmentConfig {
    /// Probability that a sample is a 4-image mosaic.
    pub mosaic: f32,
    /// Rotation range, degrees (`±degrees`).
    pub degrees: f32,
    /// Translation range, fraction of the output size (`0.5 ± translate`).
    pub translate: f32,
    /// Scale range (`1 ± scale`).
    pub scale: f32,
    /// Shear range, degrees.
    pub shear: f32,
    /// Perspective range (`±perspective` on the projective row).
    pub perspective: f32,
    /// Hue, saturation and value gains (`±gain`).
    pub hsv_h: f32,
    pub hsv_s: f32,
    pub hsv_v: f32,
    /// Probability of a horizontal flip.
    pub fliplr: f32,
    /// Probability of a vertical flip.
    pub flipud: f32,
}

impl Default for AugmentConfig {
    fn default() -> AugmentConfig {
        AugmentConfig {
            mosaic: 1.0,
            degrees: 0.0,
            translate: 0.1,
            scale: 0.5,
            shear: 0.0,
            perspective: 0.0,
            hsv_h: 0.015,
            hsv_s: 0.7,
            hsv_v: 0.4,
            fliplr: 0.5,
            flipud: 0.0,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all: every transform is the identity (the warp still
    /// centres the image in the square, like Ultralytics with all gains at zero).
    pub fn none() -> AugmentConfig {
        AugmentConfig {
            mosaic: 0.0,
            degrees: 0.0,
            translate: 0.0,
            scale: 0.0,
            shear: 0.0,
            perspective: 0.0,
            hsv_h: 0.0,
            hsv_s: 0.0,
            hsv_v: 0.0,
            fliplr: 0.0,
            flipud: 0.0,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let named = [
            ("mosaic", self.mosaic),
            ("degrees", self.degrees),
            ("translate", self.translate),
            ("scale", self.scale),
            ("shear", self.shear),
            ("perspective", self.perspective),
            ("hsv_h", self.hsv_h),
            ("hsv_s", self.hsv_s),
            ("hsv_v", self.hsv_v),
            ("fliplr", self.fliplr),
            ("flipud", self.flipud),
        ];
        for (name, value) in named {
            if !value.is_finite() || value < 0.0 {
                return Err(Error::InvalidConfig(format!(
                    "augment.{name} is {value}, expected a finite value >= 0"
                )));
            }
        }
        for (name, value) in [
            ("mosaic", self.mosaic),
            ("fliplr", self.fliplr),
            ("flipud", self.flipud),
            ("hsv_h", self.hsv_h),
            ("hsv_s", self.hsv_s),
            ("hsv_v", self.hsv_v),
        ] {
            if value > 1.0 {
                return Err(Error::InvalidConfig(format!(
                    "augment.{name} is {value}, expected at most 1"
                )));
            }
        }
        if self.translate > 0.5 {
            return Err(Error::InvalidConfig(format!(
                "augment.translate is {}, expected at most 0.5",
                self.translate
            )));
        }
        Ok(())
    }
}

/// How the loader batches, augments and shards one split.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Square training size; for validation the long side (rect batches). A multiple of 32.
    pub imgsz: u32,
    /// Images per batch, per rank.
    pub batch_size: usize,
    /// Decoding and augmenting threads (0: build batches on the consumer's thread).
    pub workers: usize,
    /// How many finished batches may wait ahead of the consumer.
    pub prefetch_batches: usize,
    pub seed: u64,
    /// Train true, val false.
    pub shuffle: bool,
    /// `None`: letterbox only (validation).
    pub augment: Option<AugmentConfig>,
    /// Ultralytics' rectangular batches (sorted by aspect ratio, stride 32, pad 0.5).
    pub rect: bool,
    /// Distributed shard: `DistributedSampler` semantics (the epoch's shuffle is
    /// seeded by `seed + epoch`; the order is padded by wrapping around to a multiple
    /// of `world_size`, and rank `r` takes positions `r, r + world_size, ...`).
    pub rank: usize,
    pub world_size: usize,
    /// Drop this rank's last, incomplete batch.
    pub drop_last: bool,
}

impl LoaderConfig {
    /// A training loader's settings with Ultralytics' default augmentation.
    pub fn train(imgsz: u32, batch_size: usize, seed: u64) -> LoaderConfig {
        LoaderConfig {
            imgsz,
            batch_size,
            workers: 2,
            prefetch_batches: 4,
            seed,
            shuffle: true,
            augment: Some(AugmentConfig::default()),
            rect: false,
            rank: 0,
            world_size: 1,
            drop_last: false,
        }
    }

    /// A validation loader's settings: letterbox only, rectangular batches, in order.
    pub fn val(imgsz: u32, batch_size: usize) -> LoaderConfig {
        LoaderConfig {
            imgsz,
            batch_size,
            workers: 2,
            prefetch_batches: 4,
            seed: 0,
            shuffle: false,
            augment: None,
            rect: true,
            rank: 0,
            world_size: 1,
            drop_last: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.imgsz == 0 || !self.imgsz.is_multiple_of(STRIDE) {
            return Err(Error::InvalidConfig(format!(
                "imgsz {} is not a positive multiple of the stride {STRIDE}",
                self.imgsz
            )));
        }
        if self.batch_size == 0 {
            return Err(Error::InvalidConfig("batch_size is 0".to_string()));
        }
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(Error::InvalidConfig(format!(
                "rank {} is not below world_size {}",
                self.rank, self.world_size
            )));
        }
        if self.rect && self.shuffle {
            // Rectangular batches need the aspect-ratio order; Ultralytics turns
            // shuffle off with a warning, we refuse the contradiction instead.
            return Err(Error::InvalidConfig(
                "rect batches are sorted by aspect ratio and cannot be shuffled".to_string(),
            ));
        }
        if let Some(augment) = &self.augment {
            augment.validate()?;
        }
        Ok(())
    }
}
