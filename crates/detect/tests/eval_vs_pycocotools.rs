//! COCO mAP against pycocotools' COCOeval on the same generated ground truth and
//! detections: several images and classes, crowded scenes (more than 100
//! detections), images with no objects, crowd regions, duplicate detections.

mod common;

use std::path::Path;

use cardet_detect::eval::{evaluate, load_inputs, read_coco_ground_truth, read_coco_results};

/// Writes `gt.json` and `results.json`.
fn generate(dir: &Path, seed: u64) {
    let mut rng = common::rng(seed);
    let categories = [2_usize, 3, 5, 7];
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    let mut results = Vec::new();
    let mut annotation_id = 1;
    for image_id in 1..=24_u64 {
        let (width, height) = (640.0, 480.0);
        images.push(serde_json::json!({"id": image_id, "file_name": format!("img{image_id}.png"), "width": 640, "height": 480}));
        let n_objects = match image_id % 6 {
            0 => 0,                 // an empty image
            1 => rng.below(40, 90), // a crowded scene
            _ => rng.below(1, 12),
        };
        for _ in 0..n_objects {
            let category_id = if rng.chance(0.6) {
                2
            } else {
                rng.pick(&categories)
            };
            let (w, h) = (rng.uniform(6.0, 150.0), rng.uniform(6.0, 120.0));
            let (x, y) = (rng.uniform(0.0, width - w), rng.uniform(0.0, height - h));
            let iscrowd = rng.chance(0.04);
            annotations.push(serde_json::json!({"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h], "area": w * h, "iscrowd": u8::from(iscrowd)}));
            annotation_id += 1;
            // A detector's view of the object: found (maybe twice), shifted, or missed.
            let n_detections = if rng.chance(0.15) {
                0
            } else if rng.chance(0.2) {
                2
            } else {
                1
            };
            for _ in 0..n_detections {
                let shift = rng.uniform(0.0, 0.35);
                let dx = rng.normal() * w * shift * 0.5;
                let dy = rng.normal() * h * shift * 0.5;
                let dw = w * (1.0 + rng.normal() * shift * 0.4);
                let dh = h * (1.0 + rng.normal() * shift * 0.4);
                let detected_category = if rng.chance(0.08) {
                    rng.pick(&categories)
                } else {
                    category_id
                };
                let score = (1.0 - shift * 1.8 + rng.normal() * 0.15).clamp(0.01, 0.999);
                results.push(serde_json::json!({"image_id": image_id, "category_id": detected_category, "bbox": [x + dx, y + dy, dw.max(1.0), dh.max(1.0)], "score": score}));
            }
        }
        // False positives, including on empty images; an exact duplicate too.
        for _ in 0..rng.below(0, 6) {
            let (w, h) = (rng.uniform(6.0, 150.0), rng.uniform(6.0, 120.0));
            let result = serde_json::json!({"image_id": image_id, "category_id": rng.pick(&categories), "bbox": [rng.uniform(0.0, width - w), rng.uniform(0.0, height - h), w, h], "score": rng.uniform(0.01, 0.9)});
            if rng.chance(0.3) {
                results.push(result.clone());
            }
            results.push(result);
        }
    }
    let categories_json: Vec<serde_json::Value> = [1, 2, 3, 5, 7]
        .iter()
        .map(|id| serde_json::json!({"id": id, "name": format!("c{id}")}))
        .collect();
    let gt = serde_json::json!({
        "images": images,
        "annotations": annotations,
        // Category 1 has no objects: it must be left out of the mean.
        "categories": categories_json,
    });
    std::fs::write(dir.join("gt.json"), gt.to_string()).expect("write gt");
    std::fs::write(
        dir.join("results.json"),
        serde_json::Value::Array(results).to_string(),
    )
    .expect("write results");
}

const PYCOCOTOOLS: &str = r#"
import contextlib, io, json
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO("gt.json")
    dt = gt.loadRes("results.json")
    evaluator = COCOeval(gt, dt, "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
precision = evaluator.eval["precision"]  # [T, R, K, A, M]
per_class = {}
for k, category_id in enumerate(evaluator.params.catIds):
    p50 = precision[0, :, k, 0, 2]
    p = precision[:, :, k, 0, 2]
    if (p50 > -1).any():
        per_class[int(category_id)] = [float(p50.mean()), float(p[p > -1].mean())]
print(json.dumps({"map50_95": evaluator.stats[0], "map50": evaluator.stats[1], "per_class": per_class}))
"#;

fn check(seed: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    generate(dir.path(), seed);
    let stdout = common::run_python(dir.path(), "pycocotools_eval.py", PYCOCOTOOLS);
    let reference: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("json");
    let ground_truth = read_coco_ground_truth(&dir.path().join("gt.json")).expect("gt");
    let (predictions, diagnostics) =
        read_coco_results(&dir.path().join("results.json"), &ground_truth).expect("results");
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    let report = evaluate(&ground_truth, &predictions);
    let close = |ours: f64, theirs: &serde_json::Value, what: &str| {
        let theirs = theirs.as_f64().unwrap_or(f64::NAN);
        assert!(
            (ours - theirs).abs() < 1e-4,
            "seed {seed}: {what}: ours {ours}, pycocotools {theirs}"
        );
    };
    close(report.map50, &reference["map50"], "mAP@0.5");
    close(report.map50_95, &reference["map50_95"], "mAP@0.5:0.95");
    let per_class = reference["per_class"].as_object().expect("per class");
    assert_eq!(
        report.per_class.len(),
        per_class.len(),
        "classes with ground truth"
    );
    for class in &report.per_class {
        let theirs = &per_class[&class.category_id.to_string()];
        close(
            class.ap50,
            &theirs[0],
            &format!("AP50 of {}", class.category_id),
        );
        close(
            class.ap50_95,
            &theirs[1],
            &format!("AP50-95 of {}", class.category_id),
        );
    }
    assert!(
        report.map50 > 0.2 && report.map50 < 0.95,
        "a fixture that tests something: {}",
        report.map50
    );
}

#[test]
fn map_equals_pycocotools() {
    for seed in [1, 2, 3] {
        check(seed);
    }
}

#[test]
fn yolo_folders_evaluate_like_the_same_boxes_in_coco_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gt_dir, pred_dir) = (dir.path().join("gt"), dir.path().join("pred"));
    std::fs::create_dir_all(&gt_dir).expect("mkdir");
    std::fs::create_dir_all(&pred_dir).expect("mkdir");
    // a: one car found; b: no label file (no objects) but a false positive; c: a bus missed.
    std::fs::write(gt_dir.join("a.txt"), "2 0.5 0.5 0.2 0.2\n").expect("write");
    std::fs::write(
        gt_dir.join("c.txt"),
        "5 0.3 0.3 0.1 0.1\n2 0.8 0.8 0.1 0.1\n",
    )
    .expect("write");
    std::fs::write(pred_dir.join("a.txt"), "2 0.5 0.5 0.2 0.2 0.9\n").expect("write");
    std::fs::write(pred_dir.join("b.txt"), "2 0.5 0.5 0.2 0.2 0.95\n").expect("write");
    std::fs::write(pred_dir.join("c.txt"), "2 0.8 0.8 0.1 0.1 0.5\n").expect("write");
    let names = cardet_detect::classes::coco_names();
    let (ground_truth, predictions, diagnostics) =
        load_inputs(&gt_dir, &pred_dir, &names).expect("load");
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    assert_eq!(ground_truth.images.len(), 3);
    let report = evaluate(&ground_truth, &predictions);
    // car: detections by score 0.95 (FP), 0.9 (TP), 0.5 (TP) over 2 cars: precision
    // 2/3 at recall 1 after the envelope -> AP 2/3. bus: 0.
    let expected = (2.0 / 3.0 + 0.0) / 2.0;
    assert!((report.map50 - expected).abs() < 1e-9, "{}", report.map50);
    assert_eq!(
        report
            .per_class
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["car", "bus"]
    );
}
