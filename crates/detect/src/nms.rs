//! Greedy non-maximum suppression with torchvision's semantics.
//!
//! Boxes are visited by decreasing score; a box is kept unless a kept box overlaps
//! it with IoU strictly above the threshold. IoU is computed exactly as
//! `torchvision.ops.nms` does on the CPU (areas without the `+1`, `f32`), so the kept
//! set is the same. The class-aware variant only compares boxes of one class, which
//! is what Ultralytics' coordinate offset of `7680 * class` achieves.

use crate::geometry::BoundingBox;
use crate::score_bits::ascending_bits;
use crate::simd::{Isa, kernel};

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
    let order = by_decreasing_score(&scores[..n_boxes]);
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

/// Indices by decreasing score (`f32::total_cmp`), equal scores in input order, as
/// a stable sort gives. Sorting one `u64` key per box (the score's order-preserving
/// bits, inverted, above the index) with an unstable sort is twice as fast as a
/// stable sort of indices that looks the scores up.
fn by_decreasing_score(scores: &[f32]) -> Vec<usize> {
    let mut keys: Vec<u64> = scores
        .iter()
        .enumerate()
        .map(|(idx, score)| (u64::from(!ascending_bits(*score)) << 32) | idx as u64)
        .collect();
    keys.sort_unstable();
    keys.into_iter()
        .map(|key| (key & u64::from(u32::MAX)) as usize)
        .collect()
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
        suppressed_by_any(
            Isa::detect(),
            [&self.x1, &self.y1, &self.x2, &self.y2, &self.area],
            candidate,
            iou_threshold,
        )
    }
}

/// Kept boxes compared with a candidate at once: no early exit inside a group, so
/// LLVM turns the comparisons into vector instructions.
const LANES: usize = 8;

kernel! {
    /// [`KeptBoxes::suppresses`] over the columns `[x1, y1, x2, y2, area]`. Each
    /// lane computes exactly what the scalar formula does (min, max, product and a
    /// correctly rounded division), so the decision is the same bit for bit.
    fn suppressed_by_any(kept: [&[f32]; 5], candidate: &BoundingBox, iou_threshold: f32) -> bool {
        let [x1, y1, x2, y2, area] = kept;
        let candidate_area = (candidate.x2 - candidate.x1) * (candidate.y2 - candidate.y1);
        let overlaps = |kept_x1: f32, kept_y1: f32, kept_x2: f32, kept_y2: f32, kept_area: f32| {
            let width = max(0.0, min(kept_x2, candidate.x2) - max(kept_x1, candidate.x1));
            let height = max(0.0, min(kept_y2, candidate.y2) - max(kept_y1, candidate.y1));
            let intersection = width * height;
            intersection / (kept_area + candidate_area - intersection) > iou_threshold
        };
        let n_grouped = area.len() - area.len() % LANES;
        let group = |column: &[f32], start: usize| -> [f32; LANES] {
            column[start..start + LANES]
                .try_into()
                .unwrap_or([f32::NAN; LANES])
        };
        for start in (0..n_grouped).step_by(LANES) {
            let (gx1, gy1, gx2, gy2, garea) = (
                group(x1, start),
                group(y1, start),
                group(x2, start),
                group(y2, start),
                group(area, start),
            );
            let mut hits = [false; LANES];
            for lane in 0..LANES {
                hits[lane] = overlaps(gx1[lane], gy1[lane], gx2[lane], gy2[lane], garea[lane]);
            }
            if hits.iter().any(|&hit| hit) {
                return true;
            }
        }
        (n_grouped..area.len())
            .any(|idx| overlaps(x1[idx], y1[idx], x2[idx], y2[idx], area[idx]))
    }
}

/// `std::min` as torchvision's C++ uses it (no NaN handling, so one vector instruction).
#[inline(always)]
fn min(a: f32, b: f32) -> f32 {
    if b < a { b } else { a }
}

/// `std::max` as torchvision's C++ uses it.
#[inline(always)]
fn max(a: f32, b: f32) -> f32 {
    if a < b { b } else { a }
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

    #[test]
    fn the_vector_and_scalar_overlap_tests_agree() {
        let mut rng = crate::synth::Rng::new(3);
        let mut kept = KeptBoxes::default();
        for _ in 0..37 {
            let (x, y) = (rng.uniform(0.0, 100.0), rng.uniform(0.0, 100.0));
            kept.push(&BoundingBox {
                x1: x,
                y1: y,
                x2: x + rng.uniform(1.0, 30.0),
                y2: y + rng.uniform(1.0, 30.0),
            });
        }
        let columns: [&[f32]; 5] = [&kept.x1, &kept.y1, &kept.x2, &kept.y2, &kept.area];
        let mut n_suppressed = 0;
        for _ in 0..500 {
            let (x, y) = (rng.uniform(0.0, 100.0), rng.uniform(0.0, 100.0));
            let candidate = BoundingBox {
                x1: x,
                y1: y,
                x2: x + rng.uniform(1.0, 30.0),
                y2: y + rng.uniform(1.0, 30.0),
            };
            let scalar = (0..kept.area.len()).any(|idx| {
                let kept_box = BoundingBox {
                    x1: kept.x1[idx],
                    y1: kept.y1[idx],
                    x2: kept.x2[idx],
                    y2: kept.y2[idx],
                };
                kept_box.iou(&candidate) > 0.3
            });
            for isa in [Isa::Baseline, Isa::detect()] {
                assert_eq!(
                    suppressed_by_any(isa, columns, &candidate, 0.3),
                    scalar,
                    "{isa:?} {candidate:?}"
                );
            }
            n_suppressed += usize::from(scalar);
        }
        assert!((50..450).contains(&n_suppressed), "{n_suppressed}");
    }

    #[test]
    fn the_score_order_is_a_stable_descending_total_order() {
        let scores = [
            0.5,
            -0.0,
            f32::NEG_INFINITY,
            0.5,
            1.0,
            0.0,
            -2.0,
            f32::INFINITY,
            0.5,
            -1e-30,
        ];
        let mut stable: Vec<usize> = (0..scores.len()).collect();
        stable.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        assert_eq!(by_decreasing_score(&scores), stable);
    }
}
