//! Validation as Ultralytics' `DetectionValidator` does it: rectangular letterboxed
//! batches, NMS at confidence 0.001, IoU 0.7 and 300 detections, then COCO mAP
//! ([`cardet_detect::eval`]) against the labels in original image pixels.

use std::collections::HashMap;
use std::path::PathBuf;

use cardet_augment::Loader;
use cardet_detect::dataset::DatasetItem;
use cardet_detect::eval::{EvalImage, EvalReport, GroundTruth, GroundTruthBox, PredictedBox};
use cardet_detect::{BoundingBox, Detection, PostprocessConfig, YoloV8Layout, postprocess};
use cardet_model::YoloV8;
use tch::{Device, Kind, Tensor};

use crate::Error;
use crate::loss::DetectionLoss;

/// Ultralytics' validation NMS settings.
pub fn val_postprocess_config() -> PostprocessConfig {
    PostprocessConfig {
        confidence_threshold: 0.001,
        iou_threshold: 0.7,
        max_detections: 300,
        ..PostprocessConfig::default()
    }
}

/// One validated image kept for the plots.
#[derive(Clone, Debug)]
pub struct ValSample {
    pub image_path: PathBuf,
    pub detections: Vec<Detection>,
    /// `(class, box)` in original pixels.
    pub truth: Vec<(usize, BoundingBox)>,
}

/// What a validation pass gives.
#[derive(Clone, Debug)]
pub struct ValOutput {
    pub report: EvalReport,
    /// Mean val losses (box, cls, dfl) when a criterion was given.
    pub losses: Option<[f64; 3]>,
    pub confusion: ConfusionMatrix,
    pub samples: Vec<ValSample>,
    pub images_per_second: f64,
}

impl ValOutput {
    /// Ultralytics' `fitness`: `0.1 * mAP@0.5 + 0.9 * mAP@0.5:0.95`.
    pub fn fitness(&self) -> f64 {
        0.1 * self.report.map50 + 0.9 * self.report.map50_95
    }
}

/// Runs `net` (in evaluation mode) over every batch of `loader`, whose items are
/// `items`; with a criterion, the val losses too.
pub fn validate(
    net: &YoloV8,
    names: &[String],
    items: &[DatasetItem],
    loader: &Loader,
    device: Device,
    criterion: Option<&DetectionLoss>,
    keep_samples: usize,
) -> Result<ValOutput, Error> {
    let mut run = |input: &Tensor,
                   targets: &[[f32; 6]]|
     -> Result<(Tensor, Option<[f64; 3]>), Error> {
        let (head, output) = tch::no_grad(|| {
            let head = net.forward_t(input, false);
            let output = net.detect.decode(&head);
            (head, output)
        });
        let losses = match criterion {
            Some(criterion) => Some(tch::no_grad(|| criterion.compute(&head, targets))?.parts()),
            None => None,
        };
        Ok((output, losses))
    };
    validate_with(&mut run, names, items, loader, device, keep_samples)
}

/// A model that maps a `[n, 3, h, w]` float batch (and its targets, for a loss) to the
/// `[n, 4 + classes, anchors]` inference output (and the batch's three loss parts).
pub type ValModel<'a> =
    dyn FnMut(&Tensor, &[[f32; 6]]) -> Result<(Tensor, Option<[f64; 3]>), Error> + 'a;

/// [`validate`] for any model: an ONNX session, a remote server, ...
pub fn validate_with(
    model: &mut ValModel<'_>,
    names: &[String],
    items: &[DatasetItem],
    loader: &Loader,
    device: Device,
    keep_samples: usize,
) -> Result<ValOutput, Error> {
    let started = std::time::Instant::now();
    let ids: HashMap<&std::path::Path, u64> = items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.image_path.as_path(), i as u64))
        .collect();
    let ground_truth = ground_truth(items, names);
    let config = val_postprocess_config();
    let mut predictions = Vec::new();
    let mut confusion = ConfusionMatrix::new(names.len());
    let mut samples = Vec::new();
    let mut loss_sum = [0.0; 3];
    let mut with_loss = false;
    let mut batches = 0usize;
    let mut images = 0usize;
    for batch in loader.epoch(0, false) {
        let batch = batch?;
        let input = images_to_tensor(&batch.images, batch.shape, device)?;
        let (output, losses) = model(&input, &batch.targets)?;
        if let Some(parts) = losses {
            with_loss = true;
            for (sum, part) in loss_sum.iter_mut().zip(parts) {
                *sum += part;
            }
        }
        batches += 1;
        let size = output.size();
        let layout = YoloV8Layout {
            n_classes: (size[1] - 4) as usize,
            n_anchors: size[2] as usize,
        };
        let values = Vec::<f32>::try_from(
            &output
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
                .flatten(0, -1),
        )?;
        let infos: Vec<_> = batch.items.iter().map(|item| item.transform).collect();
        let detections = postprocess(&values, layout, &infos, &config)?;
        for (item, detections) in batch.items.iter().zip(detections) {
            images += 1;
            let Some(&id) = ids.get(item.image_path.as_path()) else {
                return Err(Error::Config(format!(
                    "the val loader gave {}, which is not in the val split",
                    item.image_path.display()
                )));
            };
            let truth: Vec<(usize, BoundingBox)> = items[id as usize]
                .labels
                .iter()
                .map(|label| (label.class_id, label.to_box(items[id as usize].image_size)))
                .collect();
            confusion.add(&detections, &truth);
            predictions.extend(detections.iter().map(|d| PredictedBox {
                image_id: id,
                category_id: d.class_id,
                bbox: cardet_detect::eval::xyxy_to_xywh(&d.bbox),
                score: f64::from(d.confidence),
            }));
            if samples.len() < keep_samples {
                samples.push(ValSample {
                    image_path: item.image_path.clone(),
                    detections,
                    truth,
                });
            }
        }
    }
    let report = cardet_detect::eval::evaluate(&ground_truth, &predictions);
    let losses = with_loss.then(|| loss_sum.map(|sum| sum / batches.max(1) as f64));
    Ok(ValOutput {
        report,
        losses,
        confusion,
        samples,
        images_per_second: images as f64 / started.elapsed().as_secs_f64().max(1e-9),
    })
}

/// `[n, 3, h, w]` u8 RGB to float in `[0, 1]` on `device`.
pub fn images_to_tensor(pixels: &[u8], shape: [usize; 4], device: Device) -> Result<Tensor, Error> {
    let dims: Vec<i64> = shape.iter().map(|d| *d as i64).collect();
    Ok(Tensor::f_from_slice(pixels)?
        .f_view(dims.as_slice())?
        .to_device(device)
        .to_kind(Kind::Float)
        / 255.0)
}

/// The val split's labels as COCO-style ground truth (ids are indices into `items`).
pub fn ground_truth(items: &[DatasetItem], names: &[String]) -> GroundTruth {
    GroundTruth {
        images: items
            .iter()
            .enumerate()
            .map(|(id, item)| EvalImage {
                id: id as u64,
                name: item
                    .image_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                size: Some(item.image_size),
                objects: item
                    .labels
                    .iter()
                    .map(|label| GroundTruthBox {
                        category_id: label.class_id,
                        bbox: cardet_detect::eval::xyxy_to_xywh(&label.to_box(item.image_size)),
                        iscrowd: false,
                    })
                    .collect(),
            })
            .collect(),
        categories: names.iter().cloned().enumerate().collect(),
    }
}

/// Ultralytics' detection confusion matrix: rows predicted class, columns true class,
/// the last row and column the background; detections above confidence 0.25 match
/// ground truth at IoU above 0.45, greedily by IoU.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfusionMatrix {
    pub num_classes: usize,
    /// `(num_classes + 1)^2`, row-major `[predicted][true]`.
    pub counts: Vec<u64>,
}

impl ConfusionMatrix {
    pub const CONFIDENCE: f32 = 0.25;
    pub const IOU: f32 = 0.45;

    pub fn new(num_classes: usize) -> ConfusionMatrix {
        ConfusionMatrix {
            num_classes,
            counts: vec![0; (num_classes + 1) * (num_classes + 1)],
        }
    }

    pub fn get(&self, predicted: usize, truth: usize) -> u64 {
        self.counts[predicted * (self.num_classes + 1) + truth]
    }

    fn bump(&mut self, predicted: usize, truth: usize) {
        let background = self.num_classes;
        let index = predicted.min(background) * (background + 1) + truth.min(background);
        self.counts[index] += 1;
    }

    /// Adds one image.
    pub fn add(&mut self, detections: &[Detection], truth: &[(usize, BoundingBox)]) {
        let detections: Vec<&Detection> = detections
            .iter()
            .filter(|d| d.confidence > Self::CONFIDENCE)
            .collect();
        let mut pairs = Vec::new();
        for (t, (_, truth_box)) in truth.iter().enumerate() {
            for (d, detection) in detections.iter().enumerate() {
                let iou = truth_box.iou(&detection.bbox);
                if iou > Self::IOU {
                    pairs.push((iou, t, d));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut truth_matched = vec![false; truth.len()];
        let mut detection_matched = vec![false; detections.len()];
        for (_, t, d) in pairs {
            if truth_matched[t] || detection_matched[d] {
                continue;
            }
            truth_matched[t] = true;
            detection_matched[d] = true;
            self.bump(detections[d].class_id, truth[t].0);
        }
        for (t, matched) in truth_matched.iter().enumerate() {
            if !matched {
                self.bump(self.num_classes, truth[t].0);
            }
        }
        for (d, matched) in detection_matched.iter().enumerate() {
            if !matched {
                self.bump(detections[d].class_id, self.num_classes);
            }
        }
    }
}
