//! Letterbox against OpenCV (`cv2.resize` INTER_LINEAR + `copyMakeBorder` 114, with
//! Ultralytics' size and padding arithmetic) and the inverse mapping against
//! Ultralytics' `scale_boxes`, on generated images of odd sizes.

mod common;

use cardet_detect::letterbox::{letterbox, letterbox_batch};
use cardet_detect::{BoundingBox, TransformInfo};
use image::RgbImage;

const SIZES: [(u32, u32); 6] = [
    (333, 517),
    (1280, 719),
    (97, 61),
    (640, 480),
    (641, 1),
    (1023, 1025),
];
const TARGET: (u32, u32) = (640, 640);

fn generated_image(size: (u32, u32), seed: u64) -> RgbImage {
    let mut rng = common::rng(seed);
    let (fx, fy) = (rng.uniform(0.01, 0.2), rng.uniform(0.01, 0.2));
    RgbImage::from_fn(size.0, size.1, |x, y| {
        let wave = ((x as f32 * fx).sin() + (y as f32 * fy).cos()) * 60.0 + 128.0;
        let checker = if (x / 7 + y / 5) % 2 == 0 {
            40.0
        } else {
            -40.0
        };
        let noise = rng.uniform(-30.0, 30.0);
        image::Rgb([
            (wave + noise).clamp(0.0, 255.0) as u8,
            (wave + checker).clamp(0.0, 255.0) as u8,
            (255.0 - wave + noise * 0.5).clamp(0.0, 255.0) as u8,
        ])
    })
}

const REFERENCE: &str = r#"
import json, sys
import cv2
import numpy as np
import torch
from ultralytics.utils.ops import scale_boxes

cases = json.load(open("cases.json"))
out = []
for case in cases:
    img = cv2.cvtColor(cv2.imread(case["path"], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    nh, nw = case["target"][1], case["target"][0]
    r = min(nh / h, nw / w)
    new_unpad = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (nw - new_unpad[0]) / 2, (nh - new_unpad[1]) / 2
    if (w, h) != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    np.ascontiguousarray(img).tofile(case["path"] + ".opencv.rgb")
    boxes = torch.tensor(case["input_boxes"], dtype=torch.float32).reshape(-1, 4)
    back = scale_boxes((nh, nw), boxes.clone(), (h, w))
    out.append({"pad": [left, top], "resized": list(new_unpad), "shape": list(img.shape), "source_boxes": back.tolist()})
print(json.dumps(out))
"#;

fn check(
    case_idx: usize,
    image: &RgbImage,
    reference: &serde_json::Value,
    opencv: &[u8],
    input_boxes: &[BoundingBox],
) {
    let (ours, info) = letterbox(image, TARGET).expect("letterbox");
    let size = image.dimensions();
    assert_eq!(
        reference["shape"],
        serde_json::json!([TARGET.1, TARGET.0, 3]),
        "{size:?}"
    );
    assert_eq!(
        reference["pad"],
        serde_json::json!([info.pad.0, info.pad.1]),
        "padding of {size:?}"
    );
    assert_eq!(
        reference["resized"],
        serde_json::json!([info.resized_size.0, info.resized_size.1]),
        "resized size of {size:?}"
    );
    assert_eq!(opencv.len(), ours.as_raw().len());
    let total: u64 = ours
        .as_raw()
        .iter()
        .zip(opencv)
        .map(|(&a, &b)| u64::from(a.abs_diff(b)))
        .sum();
    let mean_abs_diff = total as f64 / opencv.len() as f64;
    let max_diff = ours
        .as_raw()
        .iter()
        .zip(opencv)
        .map(|(&a, &b)| a.abs_diff(b))
        .max()
        .unwrap_or(0);
    println!("{size:?}: mean abs diff {mean_abs_diff:.4}, max {max_diff}");
    assert!(
        mean_abs_diff < 1.0,
        "case {case_idx} {size:?}: mean abs diff {mean_abs_diff} (max {max_diff})"
    );
    // The inverse mapping agrees with Ultralytics' scale_boxes (which clips, as ours does).
    let reference_boxes = reference["source_boxes"].as_array().expect("boxes");
    for (bbox, reference_box) in input_boxes.iter().zip(reference_boxes) {
        let back = info.to_source(bbox);
        let expected: Vec<f64> = reference_box
            .as_array()
            .expect("box")
            .iter()
            .map(|v| v.as_f64().unwrap_or(f64::NAN))
            .collect();
        for (ours, theirs) in [back.x1, back.y1, back.x2, back.y2].iter().zip(&expected) {
            assert!(
                (f64::from(*ours) - theirs).abs() < 1e-2,
                "{size:?}: {back:?} vs {expected:?}"
            );
        }
    }
}

#[test]
fn letterbox_matches_opencv_and_boxes_map_back_like_ultralytics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cases = Vec::new();
    let mut images = Vec::new();
    let mut all_input_boxes = Vec::new();
    let mut rng = common::rng(11);
    for (case_idx, &size) in SIZES.iter().enumerate() {
        let image = generated_image(size, case_idx as u64);
        let path = dir.path().join(format!("case{case_idx}.png"));
        image.save(&path).expect("write png");
        let info = TransformInfo::new(size, TARGET).expect("sizes");
        let input_boxes: Vec<BoundingBox> = (0..5)
            .map(|_| {
                let x1 = rng.uniform(0.0, size.0 as f32 * 0.8);
                let y1 = rng.uniform(0.0, size.1 as f32 * 0.8);
                let source = BoundingBox {
                    x1,
                    y1,
                    x2: x1 + rng.uniform(1.0, size.0 as f32 * 0.3),
                    y2: y1 + rng.uniform(1.0, size.1 as f32 * 0.3),
                }
                .clipped(size.0 as f32, size.1 as f32);
                info.to_input(&source)
            })
            .collect();
        cases.push(serde_json::json!({
            "path": path.display().to_string(),
            "target": [TARGET.0, TARGET.1],
            "input_boxes": input_boxes.iter().map(|b| [b.x1, b.y1, b.x2, b.y2]).collect::<Vec<_>>(),
        }));
        images.push((image, path));
        all_input_boxes.push(input_boxes);
    }
    std::fs::write(
        dir.path().join("cases.json"),
        serde_json::to_string(&cases).expect("json"),
    )
    .expect("write cases");
    let stdout = common::run_python(dir.path(), "reference.py", REFERENCE);
    let reference: Vec<serde_json::Value> =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("reference json");
    for (case_idx, ((image, path), input_boxes)) in images.iter().zip(&all_input_boxes).enumerate()
    {
        let opencv =
            std::fs::read(format!("{}.opencv.rgb", path.display())).expect("opencv output");
        check(case_idx, image, &reference[case_idx], &opencv, input_boxes);
    }
}

#[test]
fn boxes_round_trip_within_half_a_pixel() {
    let mut rng = common::rng(5);
    for &size in &SIZES {
        let info = TransformInfo::new(size, TARGET).expect("sizes");
        for _ in 0..200 {
            let x1 = rng.uniform(0.0, size.0 as f32);
            let y1 = rng.uniform(0.0, size.1 as f32);
            let original = BoundingBox {
                x1,
                y1,
                x2: rng.uniform(x1, size.0 as f32),
                y2: rng.uniform(y1, size.1 as f32),
            };
            let back = info.to_source(&info.to_input(&original));
            for (a, b) in [
                (original.x1, back.x1),
                (original.y1, back.y1),
                (original.x2, back.x2),
                (original.y2, back.y2),
            ] {
                assert!(
                    (a - b).abs() <= 0.5,
                    "{size:?}: {original:?} came back as {back:?}"
                );
            }
        }
    }
}

#[test]
fn the_batch_buffer_is_the_letterboxed_images_in_chw() {
    let images: Vec<RgbImage> = SIZES[..3]
        .iter()
        .enumerate()
        .map(|(i, &size)| generated_image(size, i as u64))
        .collect();
    let batch = letterbox_batch(&images, TARGET).expect("batch");
    assert_eq!(batch.shape, [3, 3, 640, 640]);
    let plane = 640 * 640;
    for (image_idx, image) in images.iter().enumerate() {
        let (single, info) = letterbox(image, TARGET).expect("letterbox");
        assert_eq!(batch.infos[image_idx], info);
        for (pixel_idx, pixel) in single.pixels().enumerate().step_by(97) {
            for channel in 0..3 {
                let value = batch.data[image_idx * 3 * plane + channel * plane + pixel_idx];
                assert_eq!(value, f32::from(pixel.0[channel]) / 255.0);
            }
        }
    }
}
