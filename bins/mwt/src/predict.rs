//! `mwt predict`: a checkpoint (tch, CPU or CUDA) or an ONNX model (ONNX Runtime) on
//! images or folders; detections as JSON and annotated images out. Glue only: the
//! network is `cardet_model`, letterbox, decode, NMS and drawing are `cardet_detect`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cardet_detect::letterbox::InputSize;
use cardet_detect::{PostprocessConfig, YoloV8Layout, draw, image_io, letterbox, postprocess};
use cardet_model::{Detector, Scale};

/// The flags of `mwt predict`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  mwt predict --model yolov8n.safetensors --source street.jpg\n  mwt predict --model model_repo/yolov8n_car/1/model.onnx --source data/images/val --out runs/predict\n  mwt predict --model best.safetensors --source imgs/ --device cuda --conf 0.4 --json\n  mwt predict --model model_repo/cars/1/model.onnx --source frames/   # a --dynamic-size export: 1280x720 runs at 640x384"
)]
pub struct PredictFlags {
    /// A safetensors checkpoint (run with tch) or an `.onnx` model (run with ONNX Runtime).
    #[arg(long)]
    model: PathBuf,
    /// Images or folders of images.
    #[arg(long, required = true, num_args = 1..)]
    source: Vec<PathBuf>,
    /// Where annotated images and `predictions.json` go.
    #[arg(long, default_value = "runs/predict")]
    out: PathBuf,
    /// Network input size for checkpoints, and the most an ONNX model's variable
    /// side gets (a fixed side keeps the model's own).
    #[arg(long, default_value_t = 640)]
    imgsz: u32,
    /// Letterbox to the `--imgsz` square even when the ONNX model takes any size
    /// (by default each batch gets the smallest multiple of 32 that holds its images,
    /// as Ultralytics' predict does).
    #[arg(long)]
    no_rect: bool,
    /// Confidence threshold.
    #[arg(long, default_value_t = 0.25)]
    conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.45)]
    iou: f32,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// cpu, cuda or cuda:N (checkpoints only).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Model scale when a checkpoint's metadata does not say.
    #[arg(long)]
    scale: Option<String>,
    /// Class names, comma separated, when the model's metadata does not say.
    #[arg(long, value_delimiter = ',')]
    names: Option<Vec<String>>,
    /// Only the JSON, no annotated images.
    #[arg(long)]
    no_draw: bool,
    /// Print the detections as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(flags: &PredictFlags) -> anyhow::Result<()> {
    let images = collect_images(&flags.source)?;
    if images.is_empty() {
        bail!("no images under {:?}", flags.source);
    }
    let mut backend = Backend::open(flags)?;
    let config = PostprocessConfig {
        confidence_threshold: flags.conf,
        iou_threshold: flags.iou,
        ..PostprocessConfig::default()
    };
    std::fs::create_dir_all(&flags.out)
        .with_context(|| format!("creating {}", flags.out.display()))?;
    let names = backend.names().to_vec();
    let mut results = Vec::new();
    for chunk in images.chunks(flags.batch.max(1)) {
        let decoded = chunk
            .iter()
            .map(|path| image_io::load_rgb(path))
            .collect::<Result<Vec<_>, _>>()?;
        let size = backend
            .input_size()
            .for_images(decoded.iter().map(|image| image.dimensions()))?;
        let batch = letterbox::letterbox_batch(&decoded, size)?;
        let (output, shape) = backend.run(&batch.data, batch.shape)?;
        let (_, layout) = YoloV8Layout::from_shape(&shape)?;
        let detections = postprocess(&output, layout, &batch.infos, &config)?;
        for ((path, mut image), found) in chunk.iter().zip(decoded).zip(detections) {
            let annotated = if flags.no_draw {
                None
            } else {
                draw::draw_detections(&mut image, &found, &names);
                let file_name = path.file_stem().map_or_else(
                    || "image".to_string(),
                    |stem| stem.to_string_lossy().into_owned(),
                );
                let target = flags.out.join(format!("{file_name}.jpg"));
                image_io::save(&image, &target)?;
                Some(target.display().to_string())
            };
            results.push(serde_json::json!({
                "image": path.display().to_string(),
                "input_size": [size.0, size.1],
                "annotated": annotated,
                "detections": cardet_detect::geometry::detections_to_json(&found, &names),
            }));
        }
    }
    let report = serde_json::json!({
        "model": flags.model.display().to_string(),
        "backend": backend.describe(),
        "images": results,
    });
    let json_path = flags.out.join("predictions.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let mut stdout = std::io::stdout().lock();
    if flags.json {
        writeln!(stdout, "{report}")?;
    } else {
        for result in &results {
            let count = result["detections"].as_array().map_or(0, Vec::len);
            writeln!(
                stdout,
                "{}: {count} objects",
                result["image"].as_str().unwrap_or("")
            )?;
        }
        writeln!(stdout, "wrote {}", json_path.display())?;
    }
    Ok(())
}

/// The model, run either with tch or with ONNX Runtime.
enum Backend {
    Torch {
        detector: Box<Detector>,
        device: tch::Device,
        size: InputSize,
    },
    Onnx {
        session: Box<cardet_onnx::ort::session::Session>,
        names: Vec<String>,
        size: InputSize,
        provider: String,
    },
}

impl Backend {
    fn open(flags: &PredictFlags) -> anyhow::Result<Backend> {
        let is_onnx = flags
            .model
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("onnx"));
        if is_onnx {
            return Backend::open_onnx(flags);
        }
        // `cuda` with no CUDA device is an error, not a silent fall back to the CPU.
        let device = cardet_train::trainer::parse_device(&flags.device)?;
        let metadata = cardet_model::weights::read_metadata(&flags.model)
            .with_context(|| format!("reading {}", flags.model.display()))?;
        let scale = match &flags.scale {
            Some(letter) => Scale::from_letter(letter)
                .with_context(|| format!("--scale {letter:?} is none of n, s, m, l, x"))?,
            None => metadata
                .scale
                .context("the checkpoint's metadata has no scale: pass --scale")?,
        };
        let names = match (&flags.names, metadata.names) {
            (Some(names), _) => names.clone(),
            (None, Some(names)) => names,
            (None, None) => bail!("the checkpoint's metadata has no class names: pass --names"),
        };
        let detector = Detector::load_as(&flags.model, scale, names, device)
            .with_context(|| format!("loading {}", flags.model.display()))?;
        if !flags.imgsz.is_multiple_of(InputSize::STRIDE) {
            bail!("--imgsz {} is not a multiple of 32", flags.imgsz);
        }
        Ok(Backend::Torch {
            detector: Box::new(detector),
            device,
            size: InputSize {
                max: (flags.imgsz, flags.imgsz),
                shrink: (false, false),
            },
        })
    }

    fn open_onnx(flags: &PredictFlags) -> anyhow::Result<Backend> {
        let bytes = std::fs::read(&flags.model)
            .with_context(|| format!("reading {}", flags.model.display()))?;
        let model = cardet_onnx_export::decode(&bytes)
            .with_context(|| format!("reading {}", flags.model.display()))?;
        let names = match &flags.names {
            Some(names) => names.clone(),
            None => model
                .metadata_props
                .iter()
                .find(|entry| entry.key.as_deref() == Some("names"))
                .and_then(|entry| entry.value.as_deref())
                .and_then(cardet_model::export::parse_python_names)
                .context("the ONNX metadata has no `names`: pass --names")?,
        };
        let size = onnx_input_size(&model, flags.imgsz, !flags.no_rect)?;
        let runtime = cardet_onnx::load()?;
        let session = cardet_onnx::ort::session::Session::builder(&runtime.environment)?
            .commit_from_memory(&bytes)?;
        Ok(Backend::Onnx {
            session: Box::new(session),
            names,
            size,
            provider: format!("onnxruntime {} (CPU)", runtime.version),
        })
    }

    fn names(&self) -> &[String] {
        match self {
            Backend::Torch { detector, .. } => &detector.names,
            Backend::Onnx { names, .. } => names,
        }
    }

    /// The network input: fixed, or shrinking to each batch.
    fn input_size(&self) -> InputSize {
        match self {
            Backend::Torch { size, .. } | Backend::Onnx { size, .. } => *size,
        }
    }

    fn describe(&self) -> String {
        match self {
            Backend::Torch { device, .. } => format!("tch on {device:?}"),
            Backend::Onnx { provider, .. } => provider.clone(),
        }
    }

    /// Runs a `[n, 3, h, w]` batch; returns the output values and their shape.
    fn run(&mut self, data: &[f32], shape: [usize; 4]) -> anyhow::Result<(Vec<f32>, Vec<usize>)> {
        match self {
            Backend::Torch {
                detector, device, ..
            } => {
                let dims: Vec<i64> = shape.iter().map(|d| *d as i64).collect();
                let images = tch::Tensor::from_slice(data)
                    .view(dims.as_slice())
                    .to_device(*device);
                let output = tch::no_grad(|| detector.net.predict(&images))
                    .to_device(tch::Device::Cpu)
                    .contiguous();
                let out_shape: Vec<usize> = output.size().iter().map(|d| *d as usize).collect();
                let values = Vec::<f32>::try_from(&output.view([-1]))?;
                Ok((values, out_shape))
            }
            Backend::Onnx { session, .. } => {
                let input = cardet_onnx::ort::value::Tensor::from_array((shape, data.to_vec()))?;
                let outputs = session.run(cardet_onnx::ort::inputs!["images" => input])?;
                let (out_shape, values) = outputs["output0"].try_extract_tensor::<f32>()?;
                let out_shape: Vec<usize> = out_shape.iter().map(|d| *d as usize).collect();
                Ok((values.to_vec(), out_shape))
            }
        }
    }
}

/// The ONNX input `images`' spatial sides: a fixed one as the model says, a variable
/// one (a symbol or -1) at most `imgsz`, shrunk to each batch when `rect`.
fn onnx_input_size(
    model: &cardet_onnx_export::proto::ModelProto,
    imgsz: u32,
    rect: bool,
) -> anyhow::Result<InputSize> {
    use cardet_onnx_export::proto::{tensor_shape_proto::dimension::Value, type_proto};
    let dims = model
        .graph
        .as_ref()
        .and_then(|graph| graph.input.first())
        .and_then(|input| input.r#type.as_ref()?.value.as_ref())
        .and_then(|value| match value {
            type_proto::Value::TensorType(tensor) => tensor.shape.as_ref(),
            _ => None,
        })
        .map(|shape| shape.dim.as_slice())
        .unwrap_or_default();
    let fixed = |index: usize| match dims.get(index)?.value {
        Some(Value::DimValue(value)) if value > 0 => u32::try_from(value).ok(),
        _ => None,
    };
    let (width, height) = (fixed(3), fixed(2));
    if (width.is_none() || height.is_none()) && !imgsz.is_multiple_of(InputSize::STRIDE) {
        bail!("--imgsz {imgsz} is not a multiple of 32 (the model takes any size)");
    }
    Ok(InputSize {
        max: (width.unwrap_or(imgsz), height.unwrap_or(imgsz)),
        shrink: (rect && width.is_none(), rect && height.is_none()),
    })
}

fn collect_images(sources: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for source in sources {
        if source.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(source)
                .with_context(|| format!("listing {}", source.display()))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| image_io::is_image_path(path))
                .collect();
            found.sort();
            images.extend(found);
        } else if source.is_file() {
            images.push(source.clone());
        } else {
            bail!("{} is neither an image nor a folder", display(source));
        }
    }
    Ok(images)
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
