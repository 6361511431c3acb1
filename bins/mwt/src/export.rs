//! `mwt export`: a safetensors checkpoint to ONNX in a Triton model repository.
//! Glue only: the graph is `cardet_model::export_onnx`, the layout
//! `cardet_model::write_model_repository`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use cardet_model::{Detector, ExportOptions, RepositoryOptions, Scale};
use cardet_onnx_export::triton::InstanceKind;

/// The flags of `mwt export`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  mwt export --weights yolov8n.safetensors                      # model_repo/yolov8n/1/model.onnx\n  mwt export --weights best.safetensors --name yolov8n_car --imgsz 640 --max-batch-size 8\n  mwt export --weights w.safetensors --scale s --names car,truck --height 384 --width 640\n  mwt export --weights best.safetensors --dynamic-size           # any input size: rect letterbox in clients"
)]
pub struct ExportFlags {
    /// Weights: a safetensors state dict with Ultralytics keys (from `cargo xtask
    /// import-weights` or `mwt train`).
    #[arg(long)]
    weights: PathBuf,
    /// Model scale, when the file's metadata does not say (n, s, m, l, x).
    #[arg(long)]
    scale: Option<String>,
    /// Class names, comma separated, when the file's metadata does not say.
    #[arg(long, value_delimiter = ',')]
    names: Option<Vec<String>>,
    /// Square input size; --height/--width override it. Multiples of 32.
    #[arg(long, default_value_t = 640)]
    imgsz: i64,
    #[arg(long)]
    height: Option<i64>,
    #[arg(long)]
    width: Option<i64>,
    /// Leave height and width variable (any multiple of 32; config.pbtxt dims
    /// [3, -1, -1]), as Ultralytics' dynamic=True: clients then letterbox a 720p
    /// frame to 640x384 instead of the 640x640 square, 40% less work for the model.
    #[arg(long)]
    dynamic_size: bool,
    /// The model repository's root.
    #[arg(long, default_value = "model_repo")]
    repo: PathBuf,
    /// The model's name in the repository (default `yolov8<scale>`).
    #[arg(long)]
    name: Option<String>,
    /// The version folder.
    #[arg(long, default_value_t = 1)]
    version: u32,
    /// Triton's max_batch_size (the ONNX batch axis is dynamic).
    #[arg(long, default_value_t = 8)]
    max_batch_size: i64,
    /// Where Triton runs instances: cpu or gpu.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "gpu"])]
    instance_kind: String,
    /// Instances per device.
    #[arg(long, default_value_t = 1)]
    instances: u32,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(flags: &ExportFlags) -> anyhow::Result<()> {
    let device = tch::Device::Cpu;
    let detector = match (&flags.scale, &flags.names) {
        (None, None) => Detector::load(&flags.weights, device),
        _ => {
            let metadata = cardet_model::weights::read_metadata(&flags.weights)?;
            let scale = match &flags.scale {
                Some(letter) => Scale::from_letter(letter)
                    .with_context(|| format!("--scale {letter:?} is none of n, s, m, l, x"))?,
                None => metadata
                    .scale
                    .context("the weights' metadata has no scale: pass --scale")?,
            };
            let names = match &flags.names {
                Some(names) => names.clone(),
                None => metadata
                    .names
                    .context("the weights' metadata has no class names: pass --names")?,
            };
            Detector::load_as(&flags.weights, scale, names, device)
        }
    }
    .with_context(|| format!("loading {}", flags.weights.display()))?;
    let options = ExportOptions {
        height: flags.height.unwrap_or(flags.imgsz),
        width: flags.width.unwrap_or(flags.imgsz),
        dynamic_size: flags.dynamic_size,
    };
    let model = cardet_model::export_onnx(&detector.net, &detector.names, &options)?;
    let name = flags
        .name
        .clone()
        .unwrap_or_else(|| format!("yolov8{}", detector.net.config.scale));
    let repository = RepositoryOptions {
        name,
        version: flags.version,
        max_batch_size: flags.max_batch_size,
        instance_kind: if flags.instance_kind == "gpu" {
            InstanceKind::Gpu
        } else {
            InstanceKind::Cpu
        },
        instance_count: flags.instances,
    };
    let written = cardet_model::write_model_repository(&flags.repo, &model, &repository)
        .with_context(|| format!("writing into {}", flags.repo.display()))?;
    let anchors = cardet_model::export::anchor_count(options.height, options.width);
    let summary = serde_json::json!({
        "onnx": written.onnx_path.display().to_string(),
        "config": written.config_path.display().to_string(),
        "input": ["batch", 3, options.height, options.width],
        "output": ["batch", 4 + detector.names.len(), anchors],
        "classes": detector.names.len(),
        "opset": cardet_model::export::OPSET,
    });
    let mut stdout = std::io::stdout().lock();
    if flags.json {
        writeln!(stdout, "{summary}")?;
    } else {
        writeln!(stdout, "wrote {}", written.onnx_path.display())?;
        writeln!(stdout, "wrote {}", written.config_path.display())?;
        writeln!(
            stdout,
            "images [batch, 3, {}, {}] -> output0 [batch, {}, {anchors}]",
            options.height,
            options.width,
            4 + detector.names.len()
        )?;
    }
    Ok(())
}
