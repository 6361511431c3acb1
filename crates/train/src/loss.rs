//! Ultralytics' `v8DetectionLoss` (`ultralytics/utils/loss.py`): task-aligned assignment,
//! BCE-with-logits classification, CIoU box regression and distribution focal loss.
//!
//! The normalisation is Ultralytics': every part is divided by the sum of the soft
//! class targets (at least 1), scaled by its gain, and the total that is
//! back-propagated is the sum of the parts times the batch size.

use cardet_model::HeadOutput;
use cardet_model::yolov8::REG_MAX;
use tch::{Kind, Reduction, Tensor};

use crate::Error;
use crate::assigner::{AssignerConfig, GroundTruth, assign};

/// Ultralytics' loss gains (`box`, `cls`, `dfl` in `default.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossGains {
    #[serde(rename = "box")]
    pub box_gain: f64,
    #[serde(rename = "cls")]
    pub cls_gain: f64,
    #[serde(rename = "dfl")]
    pub dfl_gain: f64,
}

impl Default for LossGains {
    fn default() -> Self {
        LossGains {
            box_gain: 7.5,
            cls_gain: 0.5,
            dfl_gain: 1.5,
        }
    }
}

/// The loss of one batch.
#[derive(Debug)]
pub struct LossOutput {
    /// Scalar to back-propagate: `(box + cls + dfl) * batch_size`.
    pub total: Tensor,
    /// `[3]` detached: box, cls, dfl, each with its gain, not multiplied by the batch size
    /// (Ultralytics' `loss_items`).
    pub items: Tensor,
}

impl LossOutput {
    /// The three detached parts as numbers: box, cls, dfl.
    pub fn parts(&self) -> [f64; 3] {
        let values: Vec<f64> = Vec::try_from(&self.items.to_kind(Kind::Double)).unwrap_or_default();
        [0, 1, 2].map(|i| values.get(i).copied().unwrap_or(f64::NAN))
    }
}

/// The names Ultralytics gives the three parts (`results.csv` prefixes them with `train/`).
pub const LOSS_NAMES: [&str; 3] = ["box_loss", "cls_loss", "dfl_loss"];

/// `v8DetectionLoss` for a network with `num_classes` classes.
#[derive(Clone, Debug)]
pub struct DetectionLoss {
    pub num_classes: i64,
    pub gains: LossGains,
    pub assigner: AssignerConfig,
}

impl DetectionLoss {
    pub fn new(num_classes: i64, gains: LossGains) -> DetectionLoss {
        DetectionLoss {
            num_classes,
            gains,
            assigner: AssignerConfig::default(),
        }
    }

    /// The loss of the raw head maps against `targets`, rows of
    /// `[index in batch, class, cx, cy, w, h]` with coordinates normalised to the batch
    /// image (Ultralytics' `batch_idx, cls, bboxes`).
    pub fn compute(&self, head: &HeadOutput, targets: &[[f32; 6]]) -> Result<LossOutput, Error> {
        let first = head.pred.first().ok_or(Error::Shape {
            what: "head output",
            reason: "no detection levels".into(),
        })?;
        let size = first.size();
        let (batch, device) = (size[0], first.device());
        let channels = 4 * REG_MAX + self.num_classes;
        if size[1] != channels {
            return Err(Error::Shape {
                what: "head output",
                reason: format!(
                    "{} channels at level P3, a {}-class head has {channels}",
                    size[1], self.num_classes
                ),
            });
        }
        let flat: Vec<Tensor> = head
            .pred
            .iter()
            .map(|level| level.view([batch, channels, -1]))
            .collect();
        let flat = Tensor::cat(&flat, 2);
        let pred_distri = flat
            .narrow(1, 0, 4 * REG_MAX)
            .permute([0, 2, 1])
            .contiguous();
        let pred_scores = flat
            .narrow(1, 4 * REG_MAX, self.num_classes)
            .permute([0, 2, 1])
            .contiguous();
        let anchor_points = &head.anchors;
        let stride_tensor = &head.strides;
        // The input size in pixels, from the finest level (stride 8): (h, w).
        let image_h = (size[2] * 8) as f64;
        let image_w = (size[3] * 8) as f64;

        let (gt_labels, gt_bboxes) =
            self.pad_targets(targets, batch, (image_w, image_h), device)?;
        let mask_gt = gt_bboxes.sum_dim_intlist(2, true, None::<Kind>).gt(0.0);

        let pred_bboxes = decode_boxes(anchor_points, &pred_distri);
        let assignment = assign(
            &self.assigner,
            self.num_classes,
            &pred_scores.detach().sigmoid(),
            &(pred_bboxes.detach() * stride_tensor),
            &(anchor_points * stride_tensor),
            &GroundTruth {
                labels: &gt_labels,
                bboxes: &gt_bboxes,
                mask: &mask_gt,
            },
        );
        let target_scores = &assignment.target_scores;
        let target_scores_sum = target_scores.sum(Kind::Float).clamp_min(1.0);

        let bce = pred_scores.binary_cross_entropy_with_logits::<Tensor>(
            target_scores,
            None,
            None,
            Reduction::None,
        );
        let loss_cls = bce.sum(Kind::Float) / &target_scores_sum;

        let (loss_box, loss_dfl) = box_losses(
            &pred_distri,
            &pred_bboxes,
            anchor_points,
            &(&assignment.target_bboxes / stride_tensor),
            target_scores,
            &target_scores_sum,
            &assignment.fg_mask,
        );

        let parts = Tensor::stack(
            &[
                loss_box * self.gains.box_gain,
                loss_cls * self.gains.cls_gain,
                loss_dfl * self.gains.dfl_gain,
            ],
            0,
        );
        Ok(LossOutput {
            total: parts.sum(Kind::Float) * batch as f64,
            items: parts.detach(),
        })
    }

    /// `preprocess`: `[B, M, 1]` classes and `[B, M, 4]` xyxy pixel boxes, each image's
    /// boxes in their order of appearance, zero rows as padding.
    fn pad_targets(
        &self,
        targets: &[[f32; 6]],
        batch: i64,
        (image_w, image_h): (f64, f64),
        device: tch::Device,
    ) -> Result<(Tensor, Tensor), Error> {
        let batch_len = batch as usize;
        let mut per_image: Vec<Vec<[f32; 5]>> = vec![Vec::new(); batch_len];
        for (row, target) in targets.iter().enumerate() {
            let index = target[0];
            if !(index >= 0.0 && (index as usize) < batch_len && index.fract() == 0.0) {
                return Err(Error::Target {
                    row,
                    reason: format!("batch index {index} is not an image of this batch of {batch}"),
                });
            }
            let class = target[1];
            if !(class >= 0.0 && (class as i64) < self.num_classes && class.fract() == 0.0) {
                return Err(Error::Target {
                    row,
                    reason: format!(
                        "class {class} is not one of the {} classes",
                        self.num_classes
                    ),
                });
            }
            if target[2..].iter().any(|v| !v.is_finite()) {
                return Err(Error::Target {
                    row,
                    reason: format!("non-finite box {:?}", &target[2..]),
                });
            }
            per_image[index as usize].push([target[1], target[2], target[3], target[4], target[5]]);
        }
        let max_boxes = per_image.iter().map(Vec::len).max().unwrap_or(0);
        let mut padded = vec![0f32; batch_len * max_boxes * 5];
        for (image, rows) in per_image.iter().enumerate() {
            for (slot, row) in rows.iter().enumerate() {
                let start = (image * max_boxes + slot) * 5;
                padded[start..start + 5].copy_from_slice(row);
            }
        }
        let padded = Tensor::from_slice(&padded)
            .view([batch, max_boxes as i64, 5])
            .to_device(device);
        let labels = padded.narrow(2, 0, 1);
        let scale = Tensor::from_slice(&[
            image_w as f32,
            image_h as f32,
            image_w as f32,
            image_h as f32,
        ])
        .to_device(device);
        let xywh = padded.narrow(2, 1, 4) * scale;
        Ok((labels, xywh_to_xyxy(&xywh)))
    }
}

/// `bbox_decode`: the expectation of each side's softmax over `REG_MAX` bins, then
/// distances from the anchor to xyxy (grid units).
fn decode_boxes(anchor_points: &Tensor, pred_distri: &Tensor) -> Tensor {
    let size = pred_distri.size();
    let (b, a) = (size[0], size[1]);
    let proj = Tensor::arange(REG_MAX, (Kind::Float, pred_distri.device()));
    let distances = pred_distri
        .view([b, a, 4, REG_MAX])
        .softmax(3, Kind::Float)
        .matmul(&proj);
    cardet_model::yolov8::dist2bbox(&distances, anchor_points, false, -1)
}

/// `BboxLoss.forward`: CIoU loss and DFL over the foreground anchors, weighted by each
/// anchor's target score.
fn box_losses(
    pred_distri: &Tensor,
    pred_bboxes: &Tensor,
    anchor_points: &Tensor,
    target_bboxes: &Tensor,
    target_scores: &Tensor,
    target_scores_sum: &Tensor,
    fg_mask: &Tensor,
) -> (Tensor, Tensor) {
    let fg = fg_mask.nonzero_numpy();
    let (b, a) = (&fg[0], &fg[1]);
    let weight = target_scores
        .index(&[Some(b), Some(a)])
        .sum_dim_intlist(-1, true, None::<Kind>);
    let iou = ciou(
        &pred_bboxes.index(&[Some(b), Some(a)]),
        &target_bboxes.index(&[Some(b), Some(a)]),
    );
    let loss_iou = ((iou.neg() + 1.0) * &weight).sum(Kind::Float) / target_scores_sum;

    let target_ltrb = box_to_distances(anchor_points, target_bboxes, (REG_MAX - 1) as f64);
    let loss_dfl = distribution_focal_loss(
        &pred_distri.index(&[Some(b), Some(a)]).view([-1, REG_MAX]),
        &target_ltrb.index(&[Some(b), Some(a)]),
    ) * &weight;
    let loss_dfl = loss_dfl.sum(Kind::Float) / target_scores_sum;
    (loss_iou, loss_dfl)
}

/// `bbox2dist`: xyxy boxes to (left, top, right, bottom) distances from the anchor,
/// clamped to `[0, reg_max - 0.01]`.
fn box_to_distances(anchor_points: &Tensor, bbox: &Tensor, reg_max: f64) -> Tensor {
    let corners = bbox.chunk(2, -1);
    Tensor::cat(
        &[anchor_points - &corners[0], &corners[1] - anchor_points],
        -1,
    )
    .clamp(0.0, reg_max - 0.01)
}

/// `DFLoss`: cross-entropy against the two bins either side of the target distance,
/// weighted by closeness; `[K*4, REG_MAX]` logits and `[K, 4]` targets give `[K, 1]`.
fn distribution_focal_loss(pred_dist: &Tensor, target: &Tensor) -> Tensor {
    let target = target.clamp(0.0, (REG_MAX - 1) as f64 - 0.01);
    let left = target.to_kind(Kind::Int64);
    let right = &left + 1;
    let weight_left = right.to_kind(Kind::Float) - &target;
    let weight_right = weight_left.neg() + 1.0;
    let logp = pred_dist.log_softmax(1, Kind::Float);
    let shape = left.size();
    let pick = |bins: &Tensor| {
        logp.gather(1, &bins.view([-1, 1]), false)
            .view(shape.as_slice())
    };
    (pick(&left) * weight_left + pick(&right) * weight_right)
        .neg()
        .mean_dim(-1, true, None::<Kind>)
}

/// `bbox_iou(..., xywh=False, CIoU=True)` with eps 1e-7, `[..., 4]` xyxy to `[..., 1]`.
/// The aspect-ratio weight `alpha` is a constant to autograd, as in Ultralytics.
pub(crate) fn ciou(box1: &Tensor, box2: &Tensor) -> Tensor {
    let eps = 1e-7;
    let b1 = box1.chunk(4, -1);
    let b2 = box2.chunk(4, -1);
    let (b1_x1, b1_y1, b1_x2, b1_y2) = (&b1[0], &b1[1], &b1[2], &b1[3]);
    let (b2_x1, b2_y1, b2_x2, b2_y2) = (&b2[0], &b2[1], &b2[2], &b2[3]);
    let w1 = b1_x2 - b1_x1;
    let h1 = b1_y2 - b1_y1 + eps;
    let w2 = b2_x2 - b2_x1;
    let h2 = b2_y2 - b2_y1 + eps;
    let inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp_min(0.0)
        * (b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)).clamp_min(0.0);
    let union = &w1 * &h1 + &w2 * &h2 - &inter + eps;
    let iou = inter / union;
    let cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1);
    let ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1);
    let c2 = cw.square() + ch.square() + eps;
    let rho2 =
        ((b2_x1 + b2_x2 - b1_x1 - b1_x2).square() + (b2_y1 + b2_y2 - b1_y1 - b1_y2).square()) / 4.0;
    let v =
        (4.0 / std::f64::consts::PI.powi(2)) * ((&w2 / &h2).atan() - (&w1 / &h1).atan()).square();
    let alpha = tch::no_grad(|| &v / (iou.neg() + 1.0 + &v + eps));
    &iou - (rho2 / c2 + v * alpha)
}

fn xywh_to_xyxy(xywh: &Tensor) -> Tensor {
    let halves = xywh.chunk(2, -1);
    let half = &halves[1] / 2.0;
    Tensor::cat(&[&halves[0] - &half, &halves[0] + &half], -1)
}
