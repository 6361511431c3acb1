//! One side of `cargo xtask bench detect`: times decode + NMS of a `[1, 84, 8400]`
//! YOLOv8 output with about `--candidates` anchors over the threshold and prints
//! the median milliseconds per call as the harness's JSON line. With `--dump PATH`
//! it only writes the output tensor (little-endian f32) for the numpy baseline, so
//! both sides measure the very same input.
//!
//! `cargo run --release -p cardet-detect --example postprocess_bench -- --candidates 3000`

#[path = "../benches/fixtures.rs"]
mod fixtures;

use std::time::Instant;

use cardet_detect::letterbox::TransformInfo;
use cardet_detect::{PostprocessConfig, postprocess};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut n_candidates = 3000;
    let mut n_iterations = 300;
    let mut dump = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--candidates" => n_candidates = value.parse()?,
            "--iterations" => n_iterations = value.parse()?,
            "--dump" => dump = Some(value),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let output = fixtures::yolo_output(n_candidates, 7);
    if let Some(path) = dump {
        if let Some(parent) = std::path::Path::new(&path).parent() {
            std::fs::create_dir_all(parent)?;
        }
        let bytes: Vec<u8> = output
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        std::fs::write(&path, bytes)?;
        return Ok(());
    }
    let info = TransformInfo::new((1280, 720), (640, 640))?;
    let config = PostprocessConfig::default();
    let mut n_detections = 0;
    for _ in 0..10 {
        n_detections = postprocess(&output, fixtures::LAYOUT, &[info], &config)?[0].len();
    }
    let mut milliseconds = Vec::with_capacity(n_iterations);
    for _ in 0..n_iterations {
        let start = Instant::now();
        let detections = postprocess(
            std::hint::black_box(&output),
            fixtures::LAYOUT,
            &[info],
            &config,
        )?;
        milliseconds.push(start.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(detections);
    }
    milliseconds.sort_by(f64::total_cmp);
    eprintln!(
        "{} anchors over 0.25, {n_detections} detections",
        fixtures::n_over_threshold(&output, 0.25)
    );
    println!(
        "{}",
        serde_json::json!({"value": milliseconds[milliseconds.len() / 2], "unit": "ms", "higher_is_better": false})
    );
    Ok(())
}
