//! `mwt val`: P, R, mAP@0.5, mAP@0.5:0.95 and per-class AP of a checkpoint (tch) or
//! an ONNX model (ONNX Runtime) on a dataset split, with Ultralytics' validation
//! settings. Glue only: batches are `cardet_augment`, the evaluation `cardet_train`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use cardet_augment::{Loader, LoaderConfig};
use cardet_detect::dataset::read_dataset;
use cardet_train::validate::{ValOutput, validate, validate_with};
use tch::Tensor;

/// The flags of `mwt val`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  mwt val --model runs/train/exp/weights/best.safetensors --data data.yaml\n  mwt val --model model_repo/yolov8n_car/1/model.onnx --data data.yaml --imgsz 640 --json\n  mwt val --model best.safetensors --data data.yaml --split train --device cuda --out runs/val"
)]
pub struct ValFlags {
    /// A safetensors checkpoint (tch) or an `.onnx` model (ONNX Runtime).
    #[arg(long)]
    model: PathBuf,
    /// The dataset's data.yaml.
    #[arg(long)]
    data: PathBuf,
    /// val or train.
    #[arg(long, default_value = "val")]
    split: String,
    /// Long side of the letterboxed batches (checkpoints: rectangular batches; ONNX:
    /// square, or the model's fixed input).
    #[arg(long, default_value_t = 640)]
    imgsz: u32,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// cpu, cuda or cuda:N (checkpoints only).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Also write metrics.json, confusion_matrix.png and a few annotated images here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(flags: &ValFlags) -> anyhow::Result<()> {
    let (dataset, diagnostics) =
        read_dataset(&flags.data).with_context(|| format!("reading {}", flags.data.display()))?;
    for diagnostic in &diagnostics {
        tracing::warn!("{diagnostic}");
    }
    let items = match flags.split.as_str() {
        "val" => dataset.val,
        "train" => dataset.train,
        other => bail!("--split {other:?}: expected val or train"),
    };
    anyhow::ensure!(
        !items.is_empty(),
        "{}: the {} split has no images",
        flags.data.display(),
        flags.split
    );
    let keep = if flags.out.is_some() { 3 } else { 0 };
    let is_onnx = flags
        .model
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("onnx"));
    let (output, names) = if is_onnx {
        run_onnx(flags, &items, keep)?
    } else {
        let device = cardet_train::trainer::parse_device(&flags.device)?;
        let detector = cardet_train::checkpoint::load_detector(&flags.model, device)
            .with_context(|| format!("loading {}", flags.model.display()))?;
        anyhow::ensure!(
            detector.names.len() == dataset.data.names.len(),
            "{} has {} classes, {} has {}",
            flags.model.display(),
            detector.names.len(),
            flags.data.display(),
            dataset.data.names.len()
        );
        let loader = Loader::new(
            items.clone(),
            LoaderConfig {
                workers: flags.workers,
                ..LoaderConfig::val(flags.imgsz, flags.batch)
            },
        )?;
        let output = validate(
            &detector.net,
            &detector.names,
            &items,
            &loader,
            device,
            None,
            keep,
        )?;
        (output, detector.names)
    };
    report(flags, &output, &names)
}

fn run_onnx(
    flags: &ValFlags,
    items: &[cardet_detect::dataset::DatasetItem],
    keep: usize,
) -> anyhow::Result<(ValOutput, Vec<String>)> {
    let bytes = std::fs::read(&flags.model)
        .with_context(|| format!("reading {}", flags.model.display()))?;
    let model = cardet_onnx_export::decode(&bytes)
        .with_context(|| format!("reading {}", flags.model.display()))?;
    let names = model
        .metadata_props
        .iter()
        .find(|entry| entry.key.as_deref() == Some("names"))
        .and_then(|entry| entry.value.as_deref())
        .and_then(cardet_model::export::parse_python_names)
        .context("the ONNX metadata has no `names`")?;
    let runtime = cardet_onnx::load()?;
    let mut session = cardet_onnx::ort::session::Session::builder(&runtime.environment)?
        .commit_from_memory(&bytes)?;
    // ONNX models are validated on square letterboxes, as Ultralytics does for
    // exported formats (their input may be fixed).
    let loader = Loader::new(
        items.to_vec(),
        LoaderConfig {
            workers: flags.workers,
            rect: false,
            ..LoaderConfig::val(flags.imgsz, flags.batch)
        },
    )?;
    let mut run = |input: &Tensor,
                   _targets: &[[f32; 6]]|
     -> Result<(Tensor, Option<[f64; 3]>), cardet_train::Error> {
        let shape: Vec<usize> = input.size().iter().map(|d| *d as usize).collect();
        let data = Vec::<f32>::try_from(&input.contiguous().view([-1]))?;
        let onnx_error =
            |e: cardet_onnx::ort::Error| cardet_train::Error::Config(format!("onnxruntime: {e}"));
        let tensor =
            cardet_onnx::ort::value::Tensor::from_array((shape, data)).map_err(onnx_error)?;
        let outputs = session
            .run(cardet_onnx::ort::inputs!["images" => tensor])
            .map_err(onnx_error)?;
        let (out_shape, values) = outputs["output0"]
            .try_extract_tensor::<f32>()
            .map_err(onnx_error)?;
        let dims: Vec<i64> = out_shape.iter().copied().collect();
        Ok((Tensor::from_slice(values).view(dims.as_slice()), None))
    };
    let output = validate_with(&mut run, &names, items, &loader, tch::Device::Cpu, keep)?;
    Ok((output, names))
}

fn report(flags: &ValFlags, output: &ValOutput, names: &[String]) -> anyhow::Result<()> {
    let json = serde_json::json!({
        "model": flags.model.display().to_string(),
        "data": flags.data.display().to_string(),
        "split": flags.split,
        "precision": output.report.precision,
        "recall": output.report.recall,
        "map50": output.report.map50,
        "map50_95": output.report.map50_95,
        "fitness": output.fitness(),
        "images_per_second": output.images_per_second,
        "evaluation": output.report.to_json(),
    });
    if let Some(out) = &flags.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let path = out.join("metrics.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        cardet_train::plots::confusion_png(
            &output.confusion,
            names,
            &out.join("confusion_matrix.png"),
        )?;
        for (i, sample) in output.samples.iter().enumerate() {
            cardet_train::plots::val_sample_png(
                sample,
                names,
                &out.join(format!("val_pred_{i}.jpg")),
            )?;
        }
    }
    let mut stdout = std::io::stdout().lock();
    if flags.json {
        writeln!(stdout, "{json}")?;
    } else {
        writeln!(
            stdout,
            "P {:.4}  R {:.4}  mAP50 {:.4}  mAP50-95 {:.4}  ({} images, {:.1} images/s)",
            output.report.precision,
            output.report.recall,
            output.report.map50,
            output.report.map50_95,
            output.report.n_images,
            output.images_per_second
        )?;
        write!(stdout, "{}", output.report.to_table())?;
    }
    Ok(())
}
