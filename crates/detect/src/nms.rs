//! Greedy non-maximum suppression with torchvision's semantics.
//!
//! Boxes are visited by decreasing score; a box is kept unless a kept box overlaps
//! it with IoU strictly above the threshold. IoU is computed exactly as
//! `torchvision.ops.nms` does on the CPU (areas without the `+1`, `f32`), so the kept
//! set is the same. The class-aware variant only compares boxes of one class, which
//! is what Ultralytics' coordinate offset of `7680 * class` achieves.

use crate::geometry::BoundingBox;

/// Indices of the kept boxes, by decreasing score (like `torchvision.ops.nms`).
pub fn nms(boxes: &[BoundingBox], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    let classes = vec![0; boxes.len()];
    batched_nms(boxes, scores, &classes, iou_threshold, usize::MAX)
}

/// Class-aware NMS (like `torchvision.ops.batched_nms`): boxes of different classes
/// never suppress each other. Stops after `max_kept` boxes.
pub fn batched_nms(
    boxes: &[BoundingBox],
    scores: &[f32],
    classes: &[usize],
    iou_threshold: f32,
    max_kept: usize,
) -> Vec<usize> {
    let n_boxes = boxes.len().min(scores.len()).min(classes.len());
    let mut order: Vec<usize> = (0..n_boxes).collect();
    // Stable, so equal scores keep their input order.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut kept = Vec::new();
    // The kept boxes of each class, as plain arrays for a tight inner loop.
    let mut kept_by_class: Vec<KeptBoxes> = Vec::new();
    let mut class_slot: Vec<usize> = Vec::new();
    for box_idx in order {
        if kept.len() >= max_kept {
            break;
        }
        let class_id = classes[box_idx];
        if class_id >= class_slot.len() {
            class_slot.resize(class_id + 1, usize::MAX);
        }
        if class_slot[class_id] == usize::MAX {
            class_slot[class_id] = kept_by_class.len();
            kept_by_class.push(KeptBoxes::default());
        }
        let group = &mut kept_by_class[class_slot[class_id]];
        let candidate = &boxes[box_idx];
        if !group.suppresses(candidate, iou_threshold) {
            group.push(candidate);
            kept.push(box_idx);
        }
    }
    kept
}

#[derive(Default)]
struct KeptBoxes {
    x1: Vec<f32>,
    y1: Vec<f32>,
    x2: Vec<f32>,
    y2: Vec<f32>,
    area: Vec<f32>,
}

impl KeptBoxes {
    fn push(&mut self, bbox: &BoundingBox) {
        self.x1.push(bbox.x1);
        self.y1.push(bbox.y1);
        self.x2.push(bbox.x2);
        self.y2.push(bbox.y2);
        self.area.push((bbox.x2 - bbox.x1) * (bbox.y2 - bbox.y1));
    }

    /// Whether any kept box overlaps `candidate` above the threshold, with
    /// torchvision's arithmetic: `inter / (area_kept + area_candidate - inter)`.
    fn suppresses(&self, candidate: &BoundingBox, iou_threshold: f32) -> bool {
        let area = (candidate.x2 - candidate.x1) * (candidate.y2 - candidate.y1);
        for kept_idx in 0..self.area.len() {
            let width = (self.x2[kept_idx].min(candidate.x2) - self.x1[kept_idx].max(candidate.x1))
                .max(0.0);
            let height = (self.y2[kept_idx].min(candidate.y2)
                - self.y1[kept_idx].max(candidate.y1))
            .max(0.0);
            let intersection = width * height;
            if intersection / (self.area[kept_idx] + area - intersection) > iou_threshold {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(boxes: &[[f32; 4]], scores: &[f32], classes: &[usize], expected: &[usize]) {
        let boxes: Vec<BoundingBox> = boxes
            .iter()
            .map(|&[x1, y1, x2, y2]| BoundingBox { x1, y1, x2, y2 })
            .collect();
        assert_eq!(
            batched_nms(&boxes, scores, classes, 0.5, usize::MAX),
            expected
        );
    }

    #[test]
    fn overlapping_boxes_of_one_class_are_suppressed() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [20.0, 20.0, 30.0, 30.0],
        ];
        check(&boxes, &[0.9, 0.8, 0.7], &[0, 0, 0], &[0, 2]);
        check(&boxes, &[0.7, 0.8, 0.9], &[0, 0, 0], &[2, 1]);
        // Another class is never suppressed.
        check(&boxes, &[0.9, 0.8, 0.7], &[0, 1, 0], &[0, 1, 2]);
        // IoU of exactly the threshold is kept (torchvision suppresses only above it).
        check(
            &[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]],
            &[0.9, 0.8],
            &[0, 0],
            &[0, 1],
        );
        check(&[], &[], &[], &[]);
    }
}
