//! Training loader throughput against Ultralytics' own dataloader, side by side on
//! the same synthetic JPEG dataset: images per second with mosaic and the default
//! augmentation, at the same size, batch and number of workers.
//!
//! ```text
//! cargo run --release -p cardet-augment --example loader_bench -- [N_IMAGES] [EPOCHS] [DIR] [WORKERS]
//! ```
//! Defaults: 256 images of 640x480, 3 epochs, 2 workers (imgsz 320, batch 8), in
//! `$TMPDIR/cardet-augment-bench`. The dataset is written once and reused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cardet_augment::{Loader, LoaderConfig};
use cardet_detect::classes::coco_names;
use cardet_detect::dataset::{DatasetWriter, YoloLabel, read_dataset};
use cardet_detect::synth::render_scene;

const IMGSZ: u32 = 320;
const BATCH_SIZE: usize = 8;
const IMAGE_SIZE: (u32, u32) = (640, 480);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let n_images: usize = arguments.first().map_or(Ok(256), |value| value.parse())?;
    let epochs: u64 = arguments.get(1).map_or(Ok(3), |value| value.parse())?;
    let workers: usize = arguments.get(3).map_or(Ok(2), |value| value.parse())?;
    let folder = arguments.get(2).map_or_else(
        || std::env::temp_dir().join("cardet-augment-bench"),
        PathBuf::from,
    );
    let data_yaml = write_jpeg_dataset(&folder, n_images)?;

    let (dataset, diagnostics) = read_dataset(&data_yaml)?;
    if !diagnostics.is_empty() {
        return Err(format!(
            "{} images were skipped: {}",
            diagnostics.len(),
            diagnostics[0]
        )
        .into());
    }
    let config = LoaderConfig {
        workers,
        ..LoaderConfig::train(IMGSZ, BATCH_SIZE, 0)
    };
    let loader = Loader::new(dataset.train, config)?;
    let cpu_at_start = process_cpu_seconds();
    let start = Instant::now();
    let mut n_loaded = 0;
    let mut epoch_seconds = Vec::new();
    for epoch in 0..epochs {
        let epoch_start = Instant::now();
        for batch in loader.epoch(epoch, true) {
            n_loaded += batch?.shape[0];
        }
        epoch_seconds.push(epoch_start.elapsed().as_secs_f64());
    }
    let ours_seconds = start.elapsed().as_secs_f64();
    let ours_cpu_ms = (process_cpu_seconds() - cpu_at_start) * 1000.0 / n_loaded as f64;
    let ours = n_loaded as f64 / ours_seconds;
    println!(
        "cardet-augment: {n_loaded} images in {ours_seconds:.2} s = {ours:.1} images/s, \
         {ours_cpu_ms:.2} CPU ms/image (epochs {epoch_seconds:.2?})"
    );

    let script = cardet_testkit::manifest_dir().join("benches/ultralytics_loader.py");
    let output = Command::new(cardet_testkit::venv_python())
        .arg(&script)
        .arg(&data_yaml)
        .args([
            IMGSZ.to_string(),
            BATCH_SIZE.to_string(),
            workers.to_string(),
            epochs.to_string(),
        ])
        .env("YOLO_OFFLINE", "1")
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "the Ultralytics baseline failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rfind(|line| line.starts_with('{'))
        .ok_or("the Ultralytics baseline printed no result")?;
    let reply: serde_json::Value = serde_json::from_str(line)?;
    let their_images = reply["images"].as_f64().ok_or("no image count")?;
    let their_seconds = reply["seconds"].as_f64().ok_or("no seconds")?;
    let their_cpu_seconds = reply["cpu_seconds"].as_f64().ok_or("no CPU seconds")?;
    let theirs = their_images / their_seconds;
    let their_cpu_ms = their_cpu_seconds * 1000.0 / their_images;
    println!(
        "Ultralytics: {their_images} images in {their_seconds:.2} s = {theirs:.1} images/s, \
         {their_cpu_ms:.2} CPU ms/image (epochs {})",
        reply["epoch_seconds"]
    );
    let case = format!(
        "train loader, mosaic, imgsz {IMGSZ}, batch {BATCH_SIZE}, {workers} workers, \
         {n_loaded} images (JPEG {}x{}) over {epochs} epochs",
        IMAGE_SIZE.0, IMAGE_SIZE.1
    );
    println!(
        "| {case}: images/s | {ours:.1} | Ultralytics 8.4 YOLODataset + InfiniteDataLoader {theirs:.1} | **{:.2}x** |",
        ours / theirs
    );
    println!(
        "| {case}: CPU ms per image | {ours_cpu_ms:.2} | Ultralytics {their_cpu_ms:.2} | **{:.2}x** |",
        their_cpu_ms / ours_cpu_ms
    );
    Ok(())
}

/// User plus system CPU seconds of this process, all threads (Linux `/proc`), so
/// the comparison holds on a machine other work also loads.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // After the command name (which may hold spaces) the fields start at state
    // (field 3); utime and stime are fields 14 and 15, in clock ticks of 1/100 s.
    let Some((_, after_name)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
    };
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// Synthetic traffic scenes as JPEGs (what real datasets hold), written once.
fn write_jpeg_dataset(
    folder: &Path,
    n_images: usize,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let data_yaml = folder.join("data.yaml");
    let marker = folder.join(format!(".complete-{n_images}"));
    if marker.exists() {
        return Ok(data_yaml);
    }
    let writer = DatasetWriter::create(folder, coco_names(), "jpg")?;
    for index in 0..n_images {
        let scene = render_scene(2026, index as u64, IMAGE_SIZE);
        let labels: Vec<YoloLabel> = scene
            .objects
            .iter()
            .map(|object| YoloLabel::from_box(object.class_id, &object.bbox, IMAGE_SIZE))
            .collect();
        // Ultralytics needs a val split to exist; one image is enough.
        let split = if index == 0 { "val" } else { "train" };
        writer.add(split, &format!("scene_{index:05}"), &scene.image, &labels)?;
    }
    let written = writer.finish()?;
    std::fs::write(marker, b"")?;
    Ok(written)
}
