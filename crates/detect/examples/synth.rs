//! What `cargo xtask synth` runs (built in release, so thousands of scenes take
//! seconds): writes a YOLO dataset of synthetic traffic scenes, or with `--grid` a
//! picture of samples with their boxes.
//!
//! `cargo run --release -p cardet-detect --example synth -- --out DIR --images N --seed S --size WxH`

use std::path::PathBuf;
use std::process::ExitCode;

use cardet_detect::synth::{SynthConfig, write_dataset, write_grid};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("synth: {error}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut out = None;
    let mut n_images = 1000;
    let mut seed = 0;
    let mut size = (640, 640);
    let mut val_every = 5;
    let mut grid = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(value)),
            "--images" => n_images = value.parse()?,
            "--seed" => seed = value.parse()?,
            "--size" => size = parse_size(&value)?,
            "--val-every" => val_every = value.parse()?,
            "--grid" => grid = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if let Some(path) = grid {
        write_grid(&path, seed, 4, 3, size)?;
        println!("wrote {}", path.display());
        return Ok(());
    }
    let out = out.ok_or("--out DIR is required")?;
    let config = SynthConfig {
        out,
        n_images,
        seed,
        size,
        val_every,
    };
    let started = std::time::Instant::now();
    let data_yaml = write_dataset(&config, &|done| {
        if done % 500 == 0 || done == n_images {
            eprintln!("synth: {done}/{n_images} images");
        }
    })?;
    println!(
        "wrote {} ({n_images} images in {:.1} s)",
        data_yaml.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (width, height) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("size {text:?} is not WxH"))?;
    let parse = |part: &str| {
        part.trim()
            .parse::<u32>()
            .map_err(|_| format!("size {text:?} is not WxH"))
    };
    Ok((parse(width)?, parse(height)?))
}
