//! A small synthetic traffic dataset (one class, `vehicle`) written with the detect
//! crate's seeded scene renderer.

use std::path::{Path, PathBuf};

use cardet_detect::dataset::{DatasetWriter, YoloLabel};
use cardet_detect::synth::render_scene;

pub fn synth_dataset(root: &Path, n_train: usize, n_val: usize, size: (u32, u32)) -> PathBuf {
    let writer =
        DatasetWriter::create(root, vec!["vehicle".to_string()], "png").expect("dataset folders");
    for index in 0..n_train + n_val {
        let scene = render_scene(7, index as u64, size);
        let labels: Vec<YoloLabel> = scene
            .objects
            .iter()
            .map(|object| YoloLabel::from_box(0, &object.bbox, size))
            .collect();
        let split = if index < n_train { "train" } else { "val" };
        writer
            .add(split, &format!("scene{index:04}"), &scene.image, &labels)
            .expect("writes a scene");
    }
    writer.finish().expect("data.yaml")
}

/// `n` scenes written to both splits: a set a model can be asked to fit.
pub fn synth_dataset_same_val(root: &Path, n: usize, size: (u32, u32)) -> PathBuf {
    let writer =
        DatasetWriter::create(root, vec!["vehicle".to_string()], "png").expect("dataset folders");
    for index in 0..n {
        let scene = render_scene(5, index as u64, size);
        let labels: Vec<YoloLabel> = scene
            .objects
            .iter()
            .map(|object| YoloLabel::from_box(0, &object.bbox, size))
            .collect();
        for split in ["train", "val"] {
            writer
                .add(split, &format!("scene{index:04}"), &scene.image, &labels)
                .expect("writes a scene");
        }
    }
    writer.finish().expect("data.yaml")
}
