//! The YOLO dataset format end to end: written, read back, and what happens with a
//! corrupt image, a malformed label line and an image without a label file.

use std::path::Path;

use cardet_detect::dataset::{
    DatasetWriter, YoloLabel, read_data_yaml, read_dataset, read_label_file,
};
use cardet_detect::synth::{SynthConfig, render_scene, write_dataset};
use cardet_detect::{Error, image_io};
use image::RgbImage;

fn label(class_id: usize, cx: f32) -> YoloLabel {
    YoloLabel {
        class_id,
        cx,
        cy: 0.5,
        width: 0.2,
        height: 0.1,
        confidence: None,
    }
}

fn small_dataset(root: &Path) {
    let writer = DatasetWriter::create(
        root,
        vec!["car".into(), "bus".into(), "truck".into()],
        "jpg",
    )
    .expect("create");
    let image = RgbImage::from_pixel(64, 48, image::Rgb([90, 90, 90]));
    writer
        .add("train", "a", &image, &[label(0, 0.3), label(2, 0.6)])
        .expect("add");
    writer.add("train", "b", &image, &[]).expect("add");
    writer
        .add("val", "c", &image, &[label(1, 0.5)])
        .expect("add");
    writer.finish().expect("finish");
}

fn check(
    data_yaml: &Path,
    expected_train: usize,
    expected_val: usize,
    expected_diagnostics: &[&str],
) {
    let (dataset, diagnostics) = read_dataset(data_yaml).expect("read dataset");
    assert_eq!(
        (dataset.train.len(), dataset.val.len()),
        (expected_train, expected_val)
    );
    let messages: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), expected_diagnostics.len(), "{messages:?}");
    for (message, fragment) in messages.iter().zip(expected_diagnostics) {
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }
}

#[test]
fn a_written_dataset_reads_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    small_dataset(dir.path());
    check(&dir.path().join("data.yaml"), 2, 1, &[]);
    let (dataset, _) = read_dataset(&dir.path().join("data.yaml")).expect("read");
    assert_eq!(dataset.data.names, ["car", "bus", "truck"]);
    let a = dataset
        .train
        .iter()
        .find(|item| item.image_path.ends_with("a.jpg"))
        .expect("a.jpg");
    assert_eq!(a.image_size, (64, 48));
    assert_eq!(a.labels, vec![label(0, 0.3), label(2, 0.6)]);
}

#[test]
fn issue_4_image_without_label_file_has_no_objects() {
    let dir = tempfile::tempdir().expect("temp dir");
    small_dataset(dir.path());
    std::fs::remove_file(dir.path().join("labels/train/a.txt")).expect("remove");
    let (dataset, diagnostics) = read_dataset(&dir.path().join("data.yaml")).expect("read");
    assert!(diagnostics.is_empty());
    let a = dataset
        .train
        .iter()
        .find(|item| item.image_path.ends_with("a.jpg"))
        .expect("a.jpg is still there");
    assert!(a.labels.is_empty());
}

#[test]
fn issue_4_malformed_label_line_names_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    small_dataset(dir.path());
    let label_path = dir.path().join("labels/train/a.txt");
    std::fs::write(&label_path, "0 0.3 0.5 0.2 0.1\n\n2 0.6 0.5 oops 0.1\n").expect("write");
    match read_label_file(&label_path) {
        Err(Error::LabelLine { path, line, reason }) => {
            assert_eq!((path, line), (label_path.clone(), 3));
            assert!(reason.contains("w is not a number"), "{reason}");
        }
        other => panic!("expected a label line error, got {other:?}"),
    }
    let message = read_label_file(&label_path)
        .expect_err("malformed")
        .to_string();
    assert!(message.contains("labels/train/a.txt:3:"), "{message}");
    // The dataset reader skips that image and says why; the others still load.
    check(
        &dir.path().join("data.yaml"),
        1,
        1,
        &["labels/train/a.txt:3: w is not a number"],
    );
    // A class beyond `names` is reported the same way.
    std::fs::write(dir.path().join("labels/val/c.txt"), "9 0.5 0.5 0.1 0.1\n").expect("write");
    check(
        &dir.path().join("data.yaml"),
        1,
        0,
        &[
            "a.txt:3:",
            "labels/val/c.txt:1: class 9 is not below the 3 names",
        ],
    );
}

#[test]
fn issue_4_truncated_image_names_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    small_dataset(dir.path());
    let image_path = dir.path().join("images/train/b.jpg");
    let bytes = std::fs::read(&image_path).expect("read");
    std::fs::write(&image_path, &bytes[..bytes.len() / 4]).expect("truncate");
    let message = image_io::load_rgb(&image_path)
        .expect_err("truncated")
        .to_string();
    assert!(message.contains("images/train/b.jpg"), "{message}");
    std::fs::write(&image_path, b"GIF89a not really").expect("corrupt");
    let message = image_io::load_rgb(&image_path)
        .expect_err("corrupt")
        .to_string();
    assert!(message.contains("images/train/b.jpg"), "{message}");
    // Its header is unreadable now, so the dataset reader skips it, naming it.
    check(&dir.path().join("data.yaml"), 1, 1, &["images/train/b.jpg"]);
}

#[test]
fn data_yaml_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("data.yaml");
    std::fs::write(&path, "train: images/train\nval: images/val\n").expect("write");
    let message = read_data_yaml(&path).expect_err("no names").to_string();
    assert!(
        message.contains("data.yaml") && message.contains("missing `names`"),
        "{message}"
    );
    std::fs::write(
        &path,
        "path: .\ntrain: images/train\nval: images/val\nnc: 3\nnames: [car, bus]\n",
    )
    .expect("write");
    let message = read_data_yaml(&path).expect_err("nc mismatch").to_string();
    assert!(message.contains("`nc` is 3"), "{message}");
    std::fs::write(
        &path,
        "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: car\n  1: bus\n",
    )
    .expect("write");
    let data = read_data_yaml(&path).expect("valid");
    assert_eq!(data.names, ["car", "bus"]);
    assert_eq!(data.root, dir.path().join("."));
}

#[test]
fn a_synthetic_dataset_reads_back_with_the_scenes_boxes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = SynthConfig {
        out: dir.path().join("synth"),
        n_images: 10,
        seed: 9,
        size: (96, 64),
        val_every: 5,
    };
    let n_done = std::sync::atomic::AtomicUsize::new(0);
    let data_yaml = write_dataset(&config, &|done| {
        n_done.fetch_max(done, std::sync::atomic::Ordering::Relaxed);
    })
    .expect("synth");
    assert_eq!(n_done.into_inner(), 10);
    let (dataset, diagnostics) = read_dataset(&data_yaml).expect("read");
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    assert_eq!((dataset.train.len(), dataset.val.len()), (8, 2));
    assert_eq!(dataset.data.names[2], "car");
    let first = dataset
        .train
        .iter()
        .find(|item| item.image_path.ends_with("synth_000000.png"))
        .expect("first image");
    let scene = render_scene(9, 0, (96, 64));
    assert_eq!(first.labels.len(), scene.objects.len());
    for (label, object) in first.labels.iter().zip(&scene.objects) {
        let bbox = label.to_box((96, 64));
        assert_eq!(label.class_id, object.class_id);
        assert!(
            (bbox.x1 - object.bbox.x1).abs() < 1e-3 && (bbox.y2 - object.bbox.y2).abs() < 1e-3,
            "{bbox:?} vs {:?}",
            object.bbox
        );
    }
    // PNG is lossless: the file is the scene.
    assert_eq!(
        image_io::load_rgb(&first.image_path).expect("load"),
        scene.image
    );
}
