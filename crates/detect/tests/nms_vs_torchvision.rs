//! NMS against `torchvision.ops.nms` / `batched_nms`, and the whole decode against
//! Ultralytics' `non_max_suppression`, on the same random candidates.

mod common;

use cardet_detect::letterbox::TransformInfo;
use cardet_detect::nms::{batched_nms, nms};
use cardet_detect::{BoundingBox, PostprocessConfig, YoloV8Layout, postprocess};

/// Clustered boxes (many overlapping candidates per object, like a detector's),
/// distinct scores, a few classes.
fn candidates(seed: u64, n_boxes: usize) -> (Vec<BoundingBox>, Vec<f32>, Vec<usize>) {
    let mut rng = common::rng(seed);
    let n_objects = (n_boxes / 8).max(1);
    let objects: Vec<(f32, f32, f32, f32)> = (0..n_objects)
        .map(|_| {
            (
                rng.uniform(0.0, 600.0),
                rng.uniform(0.0, 600.0),
                rng.uniform(8.0, 200.0),
                rng.uniform(8.0, 200.0),
            )
        })
        .collect();
    // Distinct scores (a shuffled ladder), so that the visiting order is unambiguous:
    // torchvision's sort does not promise an order for ties.
    let mut ladder: Vec<usize> = (0..n_boxes).collect();
    for slot in (1..n_boxes).rev() {
        ladder.swap(slot, rng.below(0, slot + 1));
    }
    let mut boxes = Vec::new();
    let mut scores = Vec::new();
    let mut classes = Vec::new();
    for &rank in &ladder {
        let (cx, cy, w, h) = objects[rng.below(0, n_objects)];
        let jitter =
            |rng: &mut cardet_detect::synth::Rng, v: f32, s: f32| v + rng.normal() * s * 0.12;
        let (w, h) = (
            jitter(&mut rng, w, w).max(2.0),
            jitter(&mut rng, h, h).max(2.0),
        );
        let (cx, cy) = (jitter(&mut rng, cx, w), jitter(&mut rng, cy, h));
        boxes.push(BoundingBox::from_cxcywh(cx, cy, w, h));
        scores.push(0.05 + 0.9 * rank as f32 / n_boxes as f32);
        classes.push(rng.below(0, 3));
    }
    (boxes, scores, classes)
}

const TORCHVISION: &str = r#"
import json
import torch, torchvision
cases = json.load(open("cases.json"))
out = []
for case in cases:
    boxes = torch.tensor(case["boxes"], dtype=torch.float32)
    scores = torch.tensor(case["scores"], dtype=torch.float32)
    classes = torch.tensor(case["classes"], dtype=torch.int64)
    keep = torchvision.ops.nms(boxes, scores, case["iou"])
    batched = torchvision.ops.batched_nms(boxes, scores, classes, case["iou"])
    out.append({"nms": keep.tolist(), "batched": batched.tolist()})
print(json.dumps(out))
"#;

fn check(kept: Vec<usize>, expected: &serde_json::Value, what: &str) {
    let expected: Vec<usize> = serde_json::from_value(expected.clone()).expect("indices");
    assert_eq!(kept, expected, "{what}");
}

#[test]
fn nms_keeps_what_torchvision_keeps() {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = [
        (1_u64, 50_usize, 0.45_f32),
        (2, 400, 0.45),
        (3, 3000, 0.7),
        (4, 1000, 0.3),
        (5, 7, 0.5),
    ];
    let mut cases = Vec::new();
    let mut inputs = Vec::new();
    for &(seed, n_boxes, iou) in &settings {
        let (boxes, scores, classes) = candidates(seed, n_boxes);
        cases.push(serde_json::json!({
            "boxes": boxes.iter().map(|b| [b.x1, b.y1, b.x2, b.y2]).collect::<Vec<_>>(),
            "scores": scores,
            "classes": classes,
            "iou": iou,
        }));
        inputs.push((boxes, scores, classes, iou));
    }
    std::fs::write(
        dir.path().join("cases.json"),
        serde_json::to_string(&cases).expect("json"),
    )
    .expect("write");
    let stdout = common::run_python(dir.path(), "torchvision_nms.py", TORCHVISION);
    let reference: Vec<serde_json::Value> =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("json");
    for ((boxes, scores, classes, iou), expected) in inputs.iter().zip(&reference) {
        let what = format!("{} boxes at IoU {iou}", boxes.len());
        check(
            nms(boxes, scores, *iou),
            &expected["nms"],
            &format!("nms, {what}"),
        );
        check(
            batched_nms(boxes, scores, classes, *iou, usize::MAX),
            &expected["batched"],
            &format!("batched_nms, {what}"),
        );
    }
}

const ULTRALYTICS: &str = r#"
import json
import numpy as np
import torch
from ultralytics.utils.nms import non_max_suppression
case = json.load(open("decode.json"))
shape = case["shape"]
output = torch.from_numpy(np.fromfile("output.f32", dtype=np.float32).reshape(shape))
result = []
for agnostic in (False, True):
    dets = non_max_suppression(output, conf_thres=case["conf"], iou_thres=case["iou"], agnostic=agnostic, max_det=case["max_det"])
    result.append([d.tolist() for d in dets])
print(json.dumps(result))
"#;

#[test]
fn decode_matches_ultralytics_non_max_suppression() {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = YoloV8Layout {
        n_classes: 6,
        n_anchors: 2100,
    };
    let n_images = 2;
    let mut rng = common::rng(77);
    let mut output = vec![0.0_f32; n_images * layout.values_per_image()];
    for image_idx in 0..n_images {
        let (boxes, _, _) = candidates(100 + image_idx as u64, layout.n_anchors);
        let values = &mut output
            [image_idx * layout.values_per_image()..(image_idx + 1) * layout.values_per_image()];
        for (anchor, bbox) in boxes.iter().enumerate() {
            let bbox = bbox.clipped(320.0, 320.0);
            let bbox = if bbox.width() < 1.0 || bbox.height() < 1.0 {
                BoundingBox {
                    x1: 1.0,
                    y1: 1.0,
                    x2: 9.0,
                    y2: 9.0,
                }
            } else {
                bbox
            };
            let cxcywh = [
                (bbox.x1 + bbox.x2) / 2.0,
                (bbox.y1 + bbox.y2) / 2.0,
                bbox.width(),
                bbox.height(),
            ];
            for (channel, value) in cxcywh.into_iter().enumerate() {
                values[channel * layout.n_anchors + anchor] = value;
            }
            for class_id in 0..layout.n_classes {
                // Most anchors stay under the threshold, as in a real output.
                let score =
                    rng.unit().powi(6) + (anchor * layout.n_classes + class_id) as f32 * 1e-9;
                values[(4 + class_id) * layout.n_anchors + anchor] = score;
            }
        }
    }
    let bytes: Vec<u8> = output.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.path().join("output.f32"), bytes).expect("write output");
    let config = PostprocessConfig {
        confidence_threshold: 0.3,
        iou_threshold: 0.5,
        max_detections: 100,
        ..PostprocessConfig::default()
    };
    let case = serde_json::json!({"shape": [n_images, layout.n_channels(), layout.n_anchors], "conf": 0.3, "iou": 0.5, "max_det": 100});
    std::fs::write(dir.path().join("decode.json"), case.to_string()).expect("write case");
    let stdout = common::run_python(dir.path(), "ultralytics_nms.py", ULTRALYTICS);
    let reference: Vec<Vec<Vec<Vec<f64>>>> =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("json");
    // The input is the network's own size, so the inverse mapping is the identity.
    let infos = vec![TransformInfo::new((320, 320), (320, 320)).expect("sizes"); n_images];
    for (agnostic_idx, class_agnostic) in [false, true].into_iter().enumerate() {
        let ours = postprocess(
            &output,
            layout,
            &infos,
            &PostprocessConfig {
                class_agnostic,
                ..config
            },
        )
        .expect("decode");
        for image_idx in 0..n_images {
            let theirs = &reference[agnostic_idx][image_idx];
            assert!(!theirs.is_empty());
            assert_eq!(
                ours[image_idx].len(),
                theirs.len(),
                "agnostic {class_agnostic}, image {image_idx}"
            );
            for (detection, row) in ours[image_idx].iter().zip(theirs) {
                let ours_row = [
                    detection.bbox.x1,
                    detection.bbox.y1,
                    detection.bbox.x2,
                    detection.bbox.y2,
                    detection.confidence,
                    detection.class_id as f32,
                ];
                for (a, b) in ours_row.iter().zip(row) {
                    assert!(
                        (f64::from(*a) - b).abs() < 1e-3,
                        "agnostic {class_agnostic}: {ours_row:?} vs {row:?}"
                    );
                }
            }
        }
    }
}
