//! Forward-pass timing of yolov8n (random weights, CPU) for `cargo xtask bench model`.
//!
//! `forward_bench tch --batch B [--size S] [--iters N]`: our tch network, eval mode, no grad.
//! `forward_bench onnx --batch B [--size S] [--iters N]`: our ONNX export in ONNX Runtime
//! (2 intra-op threads, graph optimisations at their default, all).
//! `--height H` runs at H x S instead of S x S; `--dynamic 1` exports with the size
//! left variable (`mwt export --dynamic-size`) instead of fixed at the run's size.
//!
//! The last stdout line is `{"value": ms per batch, "unit": "ms/batch", "higher_is_better": false}`,
//! the median over the iterations after two warm-up passes. The baselines are
//! `crates/model/benches/forward_torch.py` and `forward_onnx.py`.

use std::time::Instant;

use cardet_model::{Detector, ExportOptions, Scale};
use tch::{Device, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: i64| -> Result<i64, Box<dyn std::error::Error>> {
        match args.iter().position(|arg| arg == name) {
            Some(index) => Ok(args.get(index + 1).ok_or("missing value")?.parse()?),
            None => Ok(default),
        }
    };
    let (batch, size, iters) = (
        flag("--batch", 1)?,
        flag("--size", 640)?,
        flag("--iters", 10)?,
    );
    let (height, dynamic_size) = (flag("--height", size)?, flag("--dynamic", 0)? != 0);
    let names: Vec<String> = (0..80).map(|i| i.to_string()).collect();
    tch::manual_seed(0);
    let detector = Detector::new(Scale::N, names, Device::Cpu);
    let images = Tensor::rand([batch, 3, height, size], tch::kind::FLOAT_CPU);
    let mut timings = Vec::new();
    match args.first().map(String::as_str) {
        Some("tch") => {
            tch::no_grad(|| {
                for iteration in 0..iters + 2 {
                    let start = Instant::now();
                    let output = detector.net.predict(&images);
                    let _ = output.sum(tch::Kind::Float).double_value(&[]);
                    if iteration >= 2 {
                        timings.push(start.elapsed().as_secs_f64() * 1e3);
                    }
                }
            });
        }
        Some("onnx") => {
            let model = cardet_model::export_onnx(
                &detector.net,
                &detector.names,
                &ExportOptions {
                    height,
                    width: size,
                    dynamic_size,
                },
            )?;
            let bytes = cardet_onnx_export::encode(&model);
            let runtime = cardet_onnx::load()?;
            let mut session = cardet_onnx::ort::session::Session::builder(&runtime.environment)?
                .with_intra_threads(2)?
                .commit_from_memory(&bytes)?;
            let shape: Vec<usize> = images.size().iter().map(|d| *d as usize).collect();
            let data = Vec::<f32>::try_from(&images.view([-1]))?;
            for iteration in 0..iters + 2 {
                let input =
                    cardet_onnx::ort::value::Tensor::from_array((shape.clone(), data.clone()))?;
                let start = Instant::now();
                let outputs = session.run(cardet_onnx::ort::inputs!["images" => input])?;
                let (_, values) = outputs["output0"].try_extract_tensor::<f32>()?;
                let _ = values.iter().sum::<f32>();
                if iteration >= 2 {
                    timings.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        _ => return Err("usage: forward_bench tch|onnx --batch B [--size S] [--height H] [--dynamic 0|1] [--iters N]".into()),
    }
    timings.sort_by(f64::total_cmp);
    let median = timings[timings.len() / 2];
    println!("{{\"value\": {median:.3}, \"unit\": \"ms/batch\", \"higher_is_better\": false}}");
    Ok(())
}
