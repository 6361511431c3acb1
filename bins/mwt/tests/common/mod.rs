//! What the `mwt` integration tests share: a small synthetic dataset on disk.

// Each test crate compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cardet_detect::dataset::{DatasetWriter, YoloLabel};
use cardet_detect::synth::render_scene;

/// A one-class ("vehicle") YOLO dataset of seeded synthetic scenes: the first
/// `n_train` in `train`, the next `n_val` in `val`; returns its data.yaml.
pub fn synth_dataset(
    root: &Path,
    n_train: usize,
    n_val: usize,
    size: (u32, u32),
    seed: u64,
) -> PathBuf {
    let writer = DatasetWriter::create(root, vec!["vehicle".into()], "png").expect("folders");
    for index in 0..n_train + n_val {
        let scene = render_scene(seed, index as u64, size);
        let labels: Vec<YoloLabel> = scene
            .objects
            .iter()
            .map(|object| YoloLabel::from_box(0, &object.bbox, size))
            .collect();
        let split = if index < n_train { "train" } else { "val" };
        writer
            .add(split, &format!("s{index}"), &scene.image, &labels)
            .expect("scene");
    }
    writer.finish().expect("data.yaml")
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}
