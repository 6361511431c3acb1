//! One training step of yolov8n (320 px, batch 8): ours (tch forward,
//! `DetectionLoss`, backward, our SGD) against Ultralytics' model and
//! `v8DetectionLoss` in eager PyTorch, on the same weights and batch, in one run.
//!
//! ```text
//! cargo run --release -p cardet-train --example train_step_bench -- [STEPS] [ROUNDS] [--device cuda]
//! cargo run --release -p cardet-train --example train_step_bench -- --side ours|ultralytics --steps N --device cuda
//! ```
//! The first form runs rounds: each runs the Python baseline (`benches/train_step.py`,
//! its own process) and then ours in a child process of this example, so peak RSS is
//! per side; the rounds interleave so machine load hits both alike. Prints the
//! medians and the ratio. The second form times one side once and prints
//! `cargo xtask bench`'s JSON line (`bench --gpu` runs it on CUDA); both sides read
//! the weights and batch the Python side writes to `$CARDET_HOME/bench/train_step`.

use std::process::Command;

use cardet_model::Detector;
use cardet_train::optim::{Optimizer, OptimizerChoice, OptimizerName};
use cardet_train::{DetectionLoss, LossGains};
use tch::{Device, Kind, Tensor};

const SCRIPT: &str = include_str!("../benches/train_step.py");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--ours") {
        let device = args.get(4).map_or("cpu", String::as_str);
        return ours(
            &args[2],
            args[3].parse()?,
            cardet_train::trainer::parse_device(device)?,
        );
    }
    let flag = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|index| args.get(index + 1))
            .cloned()
    };
    let device_name = flag("--device").unwrap_or_else(|| "cpu".into());
    let device = cardet_train::trainer::parse_device(&device_name)?;
    if let Some(side) = flag("--side") {
        let steps: usize = flag("--steps").map_or(Ok(10), |s| s.parse())?;
        return one_side(&side, steps, &device_name, device);
    }
    let positional: Vec<&String> = args
        .iter()
        .skip(1)
        .take_while(|arg| !arg.starts_with("--"))
        .collect();
    let steps: usize = positional.first().map_or(Ok(10), |s| s.parse())?;
    let rounds: usize = positional.get(1).map_or(Ok(3), |s| s.parse())?;
    let threads = tch::get_num_threads();
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("train_step.py");
    std::fs::write(&script, SCRIPT)?;
    let dir_str = dir.path().to_str().ok_or("utf-8 temp dir")?;
    let mut theirs = Vec::new();
    let mut mine = Vec::new();
    for round in 0..rounds {
        let output = Command::new(cardet_testkit::venv_python())
            .arg(&script)
            .args([
                dir_str,
                &steps.to_string(),
                &threads.to_string(),
                &device_name,
            ])
            .env("YOLO_CONFIG_DIR", dir.path())
            .output()?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned().into());
        }
        let baseline: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let output = Command::new(std::env::current_exe()?)
            .args(["--ours", dir_str, &steps.to_string(), &device_name])
            .output()?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned().into());
        }
        let ours: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        println!("round {round}: ultralytics {baseline} ours {ours}");
        theirs.push(baseline);
        mine.push(ours);
    }
    let median = |values: &[serde_json::Value], key: &str| {
        let mut v: Vec<f64> = values.iter().filter_map(|x| x[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (t, o) = (median(&theirs, "median_ms"), median(&mine, "median_ms"));
    println!(
        "threads {threads}: ultralytics {t:.1} ms/step, ours {o:.1} ms/step, ours/theirs {:.2}x time; peak RSS ultralytics {:.0} MiB, ours {:.0} MiB",
        o / t,
        median(&theirs, "peak_rss_mib"),
        median(&mine, "peak_rss_mib")
    );
    Ok(())
}

/// Times one side once, for `cargo xtask bench`: the Python side (re)writes the
/// weights and batch; ours writes them first, through it, when they are missing.
fn one_side(
    side: &str,
    steps: usize,
    device_name: &str,
    device: Device,
) -> Result<(), Box<dyn std::error::Error>> {
    let home = cardet_testkit::cardet_home();
    let dir = home.join("bench").join("train_step");
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("train_step.py");
    std::fs::write(&script, SCRIPT)?;
    let dir_str = dir.to_str().ok_or("utf-8 bench dir")?;
    let threads = tch::get_num_threads().to_string();
    let python = |steps: usize| -> Result<String, Box<dyn std::error::Error>> {
        let output = Command::new(cardet_testkit::venv_python())
            .arg(&script)
            .args([dir_str, &steps.to_string(), &threads, device_name])
            .env("YOLO_CONFIG_DIR", &dir)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(stderr.into_owned().into());
        }
        // The baseline's CARDET_STEP_BREAKDOWN line, next to ours.
        for line in stderr.lines().filter(|line| line.contains("breakdown:")) {
            eprintln!("{line}");
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    match side {
        "ultralytics" => {
            println!("{}", python(steps)?);
            Ok(())
        }
        "ours" => {
            if !dir.join("weights.safetensors").exists() {
                python(0)?;
            }
            ours(dir_str, steps, device)
        }
        other => Err(format!("unknown side {other:?} (ours or ultralytics)").into()),
    }
}

fn ours(dir: &str, steps: usize, device: Device) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(dir);
    let detector = Detector::load(&dir.join("weights.safetensors"), device)?;
    let batch: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("batch.safetensors"))?
            .into_iter()
            .map(|(name, tensor)| (name, tensor.to_device(device)))
            .collect();
    let images = &batch["images"];
    let flat = Vec::<f32>::try_from(
        &batch["targets"]
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .flatten(0, -1),
    )?;
    let targets: Vec<[f32; 6]> = flat
        .chunks_exact(6)
        .map(|r| [r[0], r[1], r[2], r[3], r[4], r[5]])
        .collect();
    let criterion = DetectionLoss::new(3, LossGains::default());
    let choice = OptimizerChoice {
        name: OptimizerName::Sgd,
        lr0: 0.01,
        momentum: 0.937,
        zero_bias_warmup: false,
    };
    let mut optimizer = Optimizer::new(&choice, detector.vs.variables(), 0.0)?;
    let mut times = Vec::new();
    // CARDET_STEP_BREAKDOWN=1: wait for the device after each phase and print the
    // median milliseconds of each on stderr (the waits make the total a little longer,
    // so the timed steps never use them).
    let breakdown = std::env::var_os("CARDET_STEP_BREAKDOWN").is_some();
    let sync = || {
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
    };
    let mut phases: [Vec<f64>; 5] = Default::default();
    for step in 0..steps + 2 {
        let started = std::time::Instant::now();
        let mut marks = [0.0; 5];
        let mut mark = |phase: usize| {
            if breakdown {
                sync();
                marks[phase] = started.elapsed().as_secs_f64() * 1000.0;
            }
        };
        optimizer.zero_grad();
        mark(0);
        let head = detector.net.forward_t(images, true);
        mark(1);
        let loss = criterion.compute(&head, &targets)?.total;
        mark(2);
        loss.backward();
        mark(3);
        optimizer.step();
        sync();
        mark(4);
        if step >= 2 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            for (phase, samples) in phases.iter_mut().enumerate() {
                let previous = if phase == 0 { 0.0 } else { marks[phase - 1] };
                samples.push(marks[phase] - previous);
            }
        }
    }
    if breakdown {
        let names = ["zero_grad", "forward", "loss", "backward", "optimizer"];
        let medians: Vec<String> = names
            .iter()
            .zip(phases.iter_mut())
            .map(|(name, samples)| {
                samples.sort_by(f64::total_cmp);
                let median = samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN);
                format!("{name} {median:.2} ms")
            })
            .collect();
        eprintln!("ours breakdown: {}", medians.join(", "));
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let peak_kib = cardet_testkit::own_status_kib("VmHWM:").map_or(f64::NAN, |kib| kib as f64);
    println!(
        "{}",
        serde_json::json!({
            "median_ms": median, "mean_ms": mean, "peak_rss_mib": peak_kib / 1024.0,
            "value": median, "unit": "ms/step", "higher_is_better": false
        })
    );
    Ok(())
}
