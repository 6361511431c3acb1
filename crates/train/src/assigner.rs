//! Ultralytics' `TaskAlignedAssigner` (`ultralytics/utils/tal.py`): which anchors learn
//! which ground-truth box, and with what soft class target.
//!
//! The operations follow Ultralytics' order one for one (indexed gathers, `topk`,
//! `scatter_add_` on int8 counts, `max` over the box axis) so that, on the same libtorch,
//! ties resolve the same way and the parity test can ask for 1e-4.

use tch::{Kind, Tensor};

/// The assigner's constants, as `v8DetectionLoss` builds it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AssignerConfig {
    /// Candidates kept per ground-truth box.
    pub topk: i64,
    /// Exponent of the class score in the alignment metric.
    pub alpha: f64,
    /// Exponent of the CIoU in the alignment metric.
    pub beta: f64,
    pub eps: f64,
    /// Ground-truth sides shorter than this (pixels) are widened to it before choosing
    /// candidate anchors, so tiny boxes still contain an anchor centre (Ultralytics uses
    /// the second stride, 16).
    pub min_side: f64,
}

impl Default for AssignerConfig {
    fn default() -> Self {
        AssignerConfig {
            topk: 10,
            alpha: 0.5,
            beta: 6.0,
            eps: 1e-9,
            min_side: 16.0,
        }
    }
}

/// What the assigner decides for every anchor of every image.
#[derive(Debug)]
pub struct Assignment {
    /// `[B, A, 4]` the assigned box, xyxy pixels (zeros where nothing was assigned).
    pub target_bboxes: Tensor,
    /// `[B, A, C]` soft one-hot class targets, scaled by the normalised alignment metric.
    pub target_scores: Tensor,
    /// `[B, A]` bool: anchors with an assigned box.
    pub fg_mask: Tensor,
}

/// The padded ground truth of a batch.
#[derive(Debug)]
pub struct GroundTruth<'a> {
    /// `[B, M, 1]` classes.
    pub labels: &'a Tensor,
    /// `[B, M, 4]` xyxy pixels.
    pub bboxes: &'a Tensor,
    /// `[B, M, 1]`: 1 for real boxes, 0 for padding rows.
    pub mask: &'a Tensor,
}

/// `TaskAlignedAssigner.forward` without gradients: `pd_scores` `[B, A, C]` sigmoid
/// scores, `pd_bboxes` `[B, A, 4]` xyxy pixels, `anc_points` `[A, 2]` anchor centres in
/// pixels.
pub fn assign(
    config: &AssignerConfig,
    num_classes: i64,
    pd_scores: &Tensor,
    pd_bboxes: &Tensor,
    anc_points: &Tensor,
    truth: &GroundTruth<'_>,
) -> Assignment {
    let (gt_labels, gt_bboxes, mask_gt) = (truth.labels, truth.bboxes, truth.mask);
    tch::no_grad(|| {
        let size = pd_scores.size();
        let (batch, anchors) = (size[0], size[1]);
        let max_boxes = gt_bboxes.size()[1];
        if max_boxes == 0 {
            return Assignment {
                target_bboxes: pd_bboxes.zeros_like(),
                target_scores: pd_scores.zeros_like(),
                fg_mask: Tensor::zeros([batch, anchors], (Kind::Bool, pd_scores.device())),
            };
        }
        let shape = [batch, max_boxes, anchors];

        // get_pos_mask
        let mask_in_gts = select_candidates_in_gts(config, anc_points, gt_bboxes, mask_gt);
        let (mut align_metric, mut overlaps) = box_metrics(
            config,
            pd_scores,
            pd_bboxes,
            gt_labels,
            gt_bboxes,
            &(&mask_in_gts * mask_gt),
            shape,
        );
        let topk_mask = mask_gt
            .expand([-1, -1, config.topk], false)
            .to_kind(Kind::Bool);
        let mask_topk = select_topk_candidates(config, &align_metric, &topk_mask);
        let mask_pos = mask_topk * &mask_in_gts * mask_gt.to_kind(Kind::Bool);

        // select_highest_overlaps: an anchor claimed by several boxes keeps the one it
        // overlaps most.
        let fg_count = mask_pos.sum_dim_intlist(-2, false, None::<Kind>);
        let multiple = fg_count
            .unsqueeze(1)
            .gt(1)
            .expand([-1, max_boxes, -1], false);
        let (_, max_overlap_idx) = overlaps.max_dim(1, false);
        let is_max_overlap =
            mask_pos
                .zeros_like()
                .scatter_value(1, &max_overlap_idx.unsqueeze(1), 1);
        let mask_pos = is_max_overlap.where_self(&multiple, &mask_pos);
        let (fg_mask, target_gt_idx) = mask_pos.max_dim(-2, false);

        // get_targets
        let batch_ind = Tensor::arange(batch, (Kind::Int64, gt_labels.device())).unsqueeze(-1);
        let flat_idx = &target_gt_idx + batch_ind * max_boxes;
        let target_labels = gt_labels
            .to_kind(Kind::Int64)
            .flatten(0, -1)
            .index_select(0, &flat_idx.flatten(0, -1))
            .view([batch, anchors])
            .clamp_min(0);
        let target_bboxes = gt_bboxes
            .view([-1, 4])
            .index_select(0, &flat_idx.flatten(0, -1))
            .view([batch, anchors, 4]);
        let one_hot = Tensor::zeros(
            [batch, anchors, num_classes],
            (Kind::Int8, target_labels.device()),
        )
        .scatter_value(2, &target_labels.unsqueeze(-1), 1);
        let target_scores = one_hot * fg_mask.unsqueeze(-1).gt(0);

        // Normalise: each box's best anchor gets the box's best CIoU as its target score.
        align_metric *= &mask_pos;
        let pos_align_metrics = align_metric.amax([-1].as_slice(), true);
        overlaps *= &mask_pos;
        let pos_overlaps = overlaps.amax([-1].as_slice(), true);
        let align_metric = align_metric * pos_overlaps / (pos_align_metrics + config.eps);
        let norm_align_metric = align_metric.amax([-2].as_slice(), false).unsqueeze(-1);
        let target_scores = target_scores * norm_align_metric;

        Assignment {
            target_bboxes,
            target_scores,
            fg_mask: fg_mask.to_kind(Kind::Bool),
        }
    })
}

/// `[B, M, A]` anchors whose centre lies strictly inside the (widened) box.
fn select_candidates_in_gts(
    config: &AssignerConfig,
    xy_centers: &Tensor,
    gt_bboxes: &Tensor,
    mask_gt: &Tensor,
) -> Tensor {
    let corners = gt_bboxes.chunk(2, -1);
    let centre = (&corners[0] + &corners[1]) / 2.0;
    let sides = &corners[1] - &corners[0];
    let widen = sides
        .lt(config.min_side)
        .logical_and(&mask_gt.to_kind(Kind::Bool));
    let sides = sides.masked_fill(&widen, config.min_side);
    let half = &sides / 2.0;
    let lt = (&centre - &half).unsqueeze(2);
    let rb = (&centre + &half).unsqueeze(2);
    let (cx, cy) = (xy_centers.select(1, 0), xy_centers.select(1, 1));
    let eps = 1e-9;
    let inside = (&cx - lt.select(-1, 0)).gt(eps);
    let inside = inside.logical_and(&(&cy - lt.select(-1, 1)).gt(eps));
    let inside = inside.logical_and(&(rb.select(-1, 0) - &cx).gt(eps));
    inside.logical_and(&(rb.select(-1, 1) - &cy).gt(eps))
}

/// `get_box_metrics`: the alignment metric `score^alpha * ciou^beta` and the CIoU, at
/// the candidate positions of `mask`, zero elsewhere.
fn box_metrics(
    config: &AssignerConfig,
    pd_scores: &Tensor,
    pd_bboxes: &Tensor,
    gt_labels: &Tensor,
    gt_bboxes: &Tensor,
    mask: &Tensor,
    shape: [i64; 3],
) -> (Tensor, Tensor) {
    let indices = mask.to_kind(Kind::Bool).nonzero_numpy();
    let (b, m, a) = (&indices[0], &indices[1], &indices[2]);
    let labels = gt_labels
        .index(&[Some(b), Some(m), Some(&b.zeros_like())])
        .to_kind(Kind::Int64);
    let bbox_scores = pd_scores.index(&[Some(b), Some(a), Some(&labels)]);
    let gt = gt_bboxes.index(&[Some(b), Some(m)]);
    let pd = pd_bboxes.index(&[Some(b), Some(a)]);
    let overlap_values = crate::loss::ciou(&gt, &pd).squeeze_dim(-1).clamp_min(0.0);
    let align_values =
        bbox_scores.pow_tensor_scalar(config.alpha) * overlap_values.pow_tensor_scalar(config.beta);
    let options = (pd_bboxes.kind(), pd_bboxes.device());
    let overlaps = Tensor::zeros(shape, options).index_put_(
        &[Some(b), Some(m), Some(a)],
        &overlap_values,
        false,
    );
    let align_metric = Tensor::zeros(shape, options).index_put_(
        &[Some(b), Some(m), Some(a)],
        &align_values,
        false,
    );
    (align_metric, overlaps)
}

/// `[B, M, A]` int8: 1 where the anchor is among a box's `topk` by metric (anchors that
/// several of one box's slots name, i.e. padding rows, count as none).
fn select_topk_candidates(config: &AssignerConfig, metrics: &Tensor, topk_mask: &Tensor) -> Tensor {
    let (_, topk_idxs) = metrics.topk(config.topk, -1, true, true);
    let topk_idxs = topk_idxs.masked_fill(&topk_mask.logical_not(), 0);
    let ones = topk_idxs.ones_like().to_kind(Kind::Int8);
    let counts = Tensor::zeros(metrics.size(), (Kind::Int8, metrics.device()))
        .scatter_add(-1, &topk_idxs, &ones);
    counts.masked_fill(&counts.gt(1), 0)
}
