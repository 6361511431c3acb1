//! Validation batches: letterbox only, rectangular shapes sorted by aspect ratio,
//! checked against Ultralytics' own `YOLODataset(rect=True)` in the venv, and a
//! `transform` that maps every box back to the original image.

mod common;

use std::path::PathBuf;
use std::process::Command;

use cardet_augment::{Batch, Error, Loader, LoaderConfig};
use common::{PALETTE, Rectangle, batch_boxes, batch_image, colour_extent};

const IMGSZ: u32 = 320;
const BATCH_SIZE: usize = 3;
/// Distinct aspect ratios, so the sorted order has no ties to break.
const SIZES: [(u32, u32); 7] = [
    (640, 480),
    (480, 640),
    (500, 510),
    (900, 300),
    (300, 700),
    (256, 190),
    (333, 517),
];

struct Fixture {
    _folder: tempfile::TempDir,
    image_dir: PathBuf,
    items: Vec<cardet_detect::dataset::DatasetItem>,
    rectangles: Vec<Rectangle>,
}

fn fixture() -> Fixture {
    let folder = tempfile::tempdir().expect("temp dir");
    let mut items = Vec::new();
    let mut rectangles = Vec::new();
    for (image_idx, &(width, height)) in SIZES.iter().enumerate() {
        let rectangle = Rectangle {
            class_id: image_idx,
            x1: width / 5,
            y1: height / 3,
            x2: width / 5 + width / 3,
            y2: height / 3 + height / 2,
        };
        items.push(common::write_item(
            folder.path(),
            &format!("val_{image_idx}"),
            (width, height),
            &[rectangle],
        ));
        rectangles.push(rectangle);
    }
    Fixture {
        image_dir: folder.path().join("images/train"),
        _folder: folder,
        items,
        rectangles,
    }
}

fn collect(loader: &Loader) -> Vec<Batch> {
    loader
        .epoch(0, false)
        .collect::<Result<Vec<Batch>, Error>>()
        .expect("every batch builds")
}

#[test]
fn rect_batches_are_stride_multiples_and_map_boxes_back() {
    let fixture = fixture();
    let loader =
        Loader::new(fixture.items.clone(), LoaderConfig::val(IMGSZ, BATCH_SIZE)).expect("loader");
    let batches = collect(&loader);
    assert_eq!(batches.len(), 3);
    let mut previous_ratio = 0.0;
    let mut n_boxes = 0;
    for batch in &batches {
        let [n, _, height, width] = batch.shape;
        assert_eq!((height % 32, width % 32), (0, 0), "{:?}", batch.shape);
        assert!(height.max(width) <= IMGSZ as usize + 32);
        for image_idx in 0..n {
            let item = &batch.items[image_idx];
            let (original_width, original_height) = item.original_size;
            let ratio = f64::from(original_height) / f64::from(original_width);
            assert!(ratio > previous_ratio, "sorted by aspect ratio");
            previous_ratio = ratio;
            let source_idx = SIZES
                .iter()
                .position(|&size| size == item.original_size)
                .expect("a known image");
            let rectangle = fixture.rectangles[source_idx];

            let boxes = batch_boxes(batch, image_idx);
            assert_eq!(boxes.len(), 1);
            let (class_id, bbox) = boxes[0];
            assert_eq!(class_id, rectangle.class_id);
            // The box is where its colour is in the batch image...
            let image = batch_image(batch, image_idx);
            let extent =
                colour_extent(&image, PALETTE[class_id]).expect("the rectangle is visible");
            assert!(bbox.iou(&extent) > 0.9, "{bbox:?} vs pixels {extent:?}");
            // ...and maps back to the original rectangle.
            let back = item.transform.to_source(&bbox);
            let original = rectangle.bbox();
            for (got, expected) in [
                (back.x1, original.x1),
                (back.y1, original.y1),
                (back.x2, original.x2),
                (back.y2, original.y2),
            ] {
                assert!((got - expected).abs() < 0.05, "{back:?} != {original:?}");
            }
            n_boxes += 1;
        }
    }
    assert_eq!(n_boxes, SIZES.len());
}

#[test]
fn square_val_batches_letterbox_to_imgsz() {
    let fixture = fixture();
    let config = LoaderConfig {
        rect: false,
        ..LoaderConfig::val(IMGSZ, BATCH_SIZE)
    };
    let loader = Loader::new(fixture.items.clone(), config).expect("loader");
    for batch in collect(&loader) {
        assert_eq!(&batch.shape[1..], &[3, IMGSZ as usize, IMGSZ as usize]);
        for (image_idx, item) in batch.items.iter().enumerate() {
            let (_, bbox) = batch_boxes(&batch, image_idx)[0];
            let back = item.transform.to_source(&bbox);
            let source_idx = SIZES
                .iter()
                .position(|&size| size == item.original_size)
                .expect("a known image");
            assert!(back.iou(&fixture.rectangles[source_idx].bbox()) > 0.999);
        }
    }
}

#[test]
fn rect_batches_match_ultralytics_yolo_dataset() {
    let fixture = fixture();
    let loader =
        Loader::new(fixture.items.clone(), LoaderConfig::val(IMGSZ, BATCH_SIZE)).expect("loader");
    let batches = collect(&loader);

    let out = tempfile::tempdir().expect("temp dir");
    let script = cardet_testkit::manifest_dir().join("tests/ultralytics_val.py");
    let output = Command::new(cardet_testkit::venv_python())
        .arg(&script)
        .arg(&fixture.image_dir)
        .arg(IMGSZ.to_string())
        .arg(BATCH_SIZE.to_string())
        .arg(PALETTE.len().to_string())
        .arg(out.path())
        .env("YOLO_OFFLINE", "1")
        .output()
        .expect("runs the venv's python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reference: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(reference.len(), SIZES.len());

    let mut sample_idx = 0;
    for (batch_idx, batch) in batches.iter().enumerate() {
        for image_idx in 0..batch.shape[0] {
            let expected = &reference[sample_idx];
            let item = &batch.items[image_idx];
            assert_eq!(
                expected["file"].as_str().map(PathBuf::from),
                Some(item.image_path.clone()),
                "same order"
            );
            assert_eq!(expected["batch"].as_u64(), Some(batch_idx as u64));
            let shape: Vec<usize> = expected["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .filter_map(|value| value.as_u64().map(|value| value as usize))
                .collect();
            assert_eq!(shape, batch.shape[1..].to_vec(), "batch shape");

            let [_, _, height, width] = batch.shape;
            let plane = 3 * height * width;
            let ours = &batch.images[image_idx * plane..(image_idx + 1) * plane];
            let theirs = std::fs::read(out.path().join(format!("{sample_idx}.chw")))
                .expect("reference image");
            assert_eq!(theirs.len(), ours.len());
            let differences: Vec<i32> = ours
                .iter()
                .zip(&theirs)
                .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
                .collect();
            let worst = differences.iter().copied().max().unwrap_or(0);
            let mean =
                differences.iter().map(|&d| f64::from(d)).sum::<f64>() / differences.len() as f64;
            // The same fixed-point resize as OpenCV's vector code (measured: exact);
            // OpenCV's scalar code for the last pixels of a row may round otherwise.
            assert!(
                worst <= 1 && mean < 0.001,
                "{}: worst {worst}, mean {mean}",
                item.image_path.display()
            );

            let boxes = batch_boxes(batch, image_idx);
            let expected_boxes = expected["bboxes"].as_array().expect("bboxes");
            assert_eq!(boxes.len(), expected_boxes.len());
            let ours_target = batch
                .targets
                .iter()
                .find(|target| target[0] as usize == image_idx)
                .expect("one target");
            let theirs_box: Vec<f32> = expected_boxes[0]
                .as_array()
                .expect("a box")
                .iter()
                .filter_map(|value| value.as_f64().map(|value| value as f32))
                .collect();
            for (ours, theirs) in ours_target[2..].iter().zip(&theirs_box) {
                assert!(
                    (ours - theirs).abs() < 1e-4,
                    "{ours_target:?} vs {theirs_box:?}"
                );
            }
            assert_eq!(
                expected["cls"][0].as_f64().map(|class| class as f32),
                Some(ours_target[1])
            );
            sample_idx += 1;
        }
    }
}
