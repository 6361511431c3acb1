//! The image pipeline: read, decode and letterbox, batch, infer with several requests
//! in flight, decode and NMS, write one JSON line per image and the annotated image,
//! and sum it up (throughput, latency percentiles, mAP against labels).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cardet_detect::dataset::YoloLabel;
use cardet_detect::eval::{EvalImage, EvalReport, GroundTruth, GroundTruthBox, PredictedBox};
use cardet_detect::{Detection, PostprocessConfig, YoloV8Layout};
use image::RgbImage;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::error::Error;
use crate::inputs::{self, InputImage, InputSpec};
use crate::kserve::{KserveClient, Protocol, TensorF32};

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub url: String,
    pub protocol: Protocol,
    pub model: String,
    /// `None`: the server's choice.
    pub version: Option<String>,
    pub input: InputSpec,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Images per request.
    pub batch: usize,
    /// Where annotated images go; `None` draws nothing.
    pub out: Option<PathBuf>,
    pub postprocess: PostprocessConfig,
    /// The network input size when the model's metadata leaves it variable.
    pub default_image_size: (u32, u32),
    /// Class names; `None`: the dataset's, else COCO's.
    pub names: Option<Vec<String>>,
    /// Retries of a request that failed for a transient reason (server down or
    /// overloaded), with exponential back-off from 100 ms.
    pub retries: u32,
    pub timeout: Duration,
    pub progress_bar: bool,
    /// Where the mAP report goes (JSON), for a dataset split.
    pub metrics_out: Option<PathBuf>,
}

impl RunConfig {
    pub fn new(url: &str, protocol: Protocol, model: &str) -> RunConfig {
        RunConfig {
            url: url.to_string(),
            protocol,
            model: model.to_string(),
            version: None,
            input: InputSpec::Paths(Vec::new()),
            concurrency: 4,
            batch: 1,
            out: None,
            postprocess: PostprocessConfig::default(),
            default_image_size: (640, 640),
            names: None,
            retries: 0,
            timeout: Duration::from_secs(120),
            progress_bar: false,
            metrics_out: None,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub n_images: usize,
    pub n_detections: usize,
    pub elapsed_s: f64,
    pub images_per_s: f64,
    /// From reading an image to its detections, per image.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// With labels (a dataset split).
    pub eval: Option<EvalSummary>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EvalSummary {
    pub map50: f64,
    pub map50_95: f64,
    pub report: EvalReport,
}

impl Summary {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "images": self.n_images,
            "detections": self.n_detections,
            "elapsed_s": self.elapsed_s,
            "images_per_s": self.images_per_s,
            "latency_ms": { "p50": self.latency_p50_ms, "p99": self.latency_p99_ms },
            "map50": self.eval.as_ref().map(|eval| eval.map50),
            "map50_95": self.eval.as_ref().map(|eval| eval.map50_95),
        })
    }
}

/// What the server's model takes and gives.
#[derive(Clone, Debug)]
struct ModelIo {
    input_name: String,
    output_name: String,
    /// `(width, height)`.
    image_size: (u32, u32),
}

/// One image's result.
struct ImageResult {
    name: String,
    size: (u32, u32),
    detections: Vec<Detection>,
    labels: Option<Vec<YoloLabel>>,
    timings: Timings,
    batch_size: usize,
}

#[derive(Clone, Copy, Debug, Default)]
struct Timings {
    decode_ms: f64,
    preprocess_ms: f64,
    infer_ms: f64,
    postprocess_ms: f64,
    draw_ms: f64,
    total_ms: f64,
}

/// Runs every image of `config.input` through the server, writing one JSON line
/// per image to `lines`. Fails fast when the server is down or the model not
/// ready; the first request that fails (after retries) ends the run with the
/// server's message.
pub async fn run(config: &RunConfig, lines: &mut (dyn Write + Send)) -> Result<Summary, Error> {
    if config.concurrency == 0 || config.batch == 0 {
        return Err(Error::InvalidArgument(
            "--concurrency and --batch must be at least 1".to_string(),
        ));
    }
    let client = KserveClient::new(&config.url, config.protocol, config.timeout)?;
    let version = config.version.as_deref();
    with_retries(config.retries, || {
        client.check_ready(&config.model, version)
    })
    .await?;
    let model_io = read_model_io(&client, config).await?;
    let planned = inputs::plan(&config.input)?;
    let names = Arc::new(
        config
            .names
            .clone()
            .or(planned.names)
            .unwrap_or_else(cardet_detect::classes::coco_names),
    );
    if let Some(out) = &config.out {
        std::fs::create_dir_all(out).map_err(|source| Error::Io {
            path: out.clone(),
            source,
        })?;
    }
    let progress = progress_bar(config.progress_bar, planned.items.len());
    let (sender, mut receiver) = mpsc::channel(config.batch * (config.concurrency + 1));
    let reader = inputs::spawn_reader(planned.items, sender);

    let started = Instant::now();
    let shared = Arc::new(Shared {
        client,
        config: config.clone(),
        model_io,
        names: names.clone(),
    });
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut in_flight: JoinSet<Result<Vec<ImageResult>, Error>> = JoinSet::new();
    let mut collected = Collected::default();
    let mut input_done = false;
    while !input_done || !in_flight.is_empty() {
        // Finished batches first, so output streams while later batches run.
        while let Some(finished) = in_flight.try_join_next() {
            collected.take(finished, lines, &names, &progress)?;
        }
        if input_done {
            if let Some(finished) = in_flight.join_next().await {
                collected.take(finished, lines, &names, &progress)?;
            }
            continue;
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                collected.take(finished, lines, &names, &progress)?;
                continue;
            }
        };
        let Ok(slot) = slot else { break };
        let mut batch = Vec::with_capacity(config.batch);
        while batch.len() < config.batch {
            match receiver.recv().await {
                Some(image) => batch.push(image?),
                None => {
                    input_done = true;
                    break;
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let shared = shared.clone();
        in_flight.spawn(async move {
            let result = process_batch(&shared, batch).await;
            drop(slot);
            result
        });
    }
    reader.abort();
    progress.finish_and_clear();
    let elapsed_s = started.elapsed().as_secs_f64();
    lines.flush().map_err(|source| Error::Io {
        path: PathBuf::from("<output>"),
        source,
    })?;
    collected.summary(elapsed_s, &names, config.metrics_out.as_deref())
}

struct Shared {
    client: KserveClient,
    config: RunConfig,
    model_io: ModelIo,
    names: Arc<Vec<String>>,
}

/// Reads the input's name and size and the output's name from the model metadata.
async fn read_model_io(client: &KserveClient, config: &RunConfig) -> Result<ModelIo, Error> {
    let metadata = with_retries(config.retries, || {
        client.model_metadata(&config.model, config.version.as_deref())
    })
    .await?;
    let model_error = |message: String| Error::Model {
        model: config.model.clone(),
        message,
    };
    let input = match metadata.inputs.as_slice() {
        [input] => input,
        inputs => {
            return Err(model_error(format!(
                "needs exactly one image input, the metadata lists {}",
                inputs.len()
            )));
        }
    };
    if input.datatype != "FP32" {
        return Err(model_error(format!(
            "input {} is {}, this client sends FP32",
            input.name, input.datatype
        )));
    }
    // [N, 3, H, W] or, without a batch axis in the metadata, [3, H, W].
    let chw = match input.shape.as_slice() {
        [_, channels, height, width] | [channels, height, width] => [*channels, *height, *width],
        shape => {
            return Err(model_error(format!(
                "input {} has shape {shape:?}, not [N, 3, H, W]",
                input.name
            )));
        }
    };
    if chw[0] != 3 && chw[0] != -1 {
        return Err(model_error(format!(
            "input {} has {} channels, not 3",
            input.name, chw[0]
        )));
    }
    let side = |value: i64, default: u32| {
        u32::try_from(value)
            .ok()
            .filter(|v| *v > 0)
            .unwrap_or(default)
    };
    let output = metadata
        .outputs
        .first()
        .ok_or_else(|| model_error("the metadata lists no output".to_string()))?;
    Ok(ModelIo {
        input_name: input.name.clone(),
        output_name: output.name.clone(),
        image_size: (
            side(chw[2], config.default_image_size.0),
            side(chw[1], config.default_image_size.1),
        ),
    })
}

async fn with_retries<T, F, Fut>(retries: u32, mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut n_failed = 0;
    loop {
        match attempt().await {
            Err(error) if error.is_transient() && n_failed < retries => {
                let wait = Duration::from_millis(100 << n_failed.min(6));
                tracing::warn!("{error}; retrying in {} ms", wait.as_millis());
                tokio::time::sleep(wait).await;
                n_failed += 1;
            }
            other => return other,
        }
    }
}

async fn process_batch(
    shared: &Shared,
    images: Vec<InputImage>,
) -> Result<Vec<ImageResult>, Error> {
    let started = Instant::now();
    let image_size = shared.model_io.image_size;
    let keep_images = shared.config.out.is_some();
    let prepared = tokio::task::spawn_blocking(move || prepare(images, image_size, keep_images))
        .await
        .map_err(|error| Error::InvalidArgument(format!("a decode task failed: {error}")))??;
    let infer_started = Instant::now();
    let batch_size = prepared.names.len();
    let input = TensorF32 {
        name: shared.model_io.input_name.clone(),
        shape: prepared
            .batch
            .shape
            .iter()
            .map(|&side| side as i64)
            .collect(),
        data: prepared.batch.data,
    };
    let input = &input;
    let output = with_retries(shared.config.retries, || {
        shared.client.infer(
            &shared.config.model,
            shared.config.version.as_deref(),
            input,
            &shared.model_io.output_name,
        )
    })
    .await?;
    let infer_ms = infer_started.elapsed().as_secs_f64() * 1e3;
    let shape: Vec<usize> = output
        .shape
        .iter()
        .map(|&side| usize::try_from(side).unwrap_or(0))
        .collect();
    let (n_images, layout) = YoloV8Layout::from_shape(&shape)?;
    if n_images != batch_size {
        return Err(Error::Protocol {
            url: shared.client.url().to_string(),
            message: format!("{batch_size} images sent, {n_images} answered"),
        });
    }
    let postprocess_config = shared.config.postprocess;
    let out = shared.config.out.clone();
    let names = shared.names.clone();
    let Prepared {
        names: image_names,
        infos,
        sizes,
        labels,
        decoded,
        decode_ms,
        preprocess_ms,
        ..
    } = prepared;
    tokio::task::spawn_blocking(move || {
        let postprocess_started = Instant::now();
        let detections =
            cardet_detect::postprocess(&output.data, layout, &infos, &postprocess_config)?;
        let postprocess_ms = postprocess_started.elapsed().as_secs_f64() * 1e3;
        let mut results = Vec::with_capacity(batch_size);
        let mut decoded = decoded.into_iter();
        for (image_idx, ((name, detections), labels)) in image_names
            .into_iter()
            .zip(detections)
            .zip(labels)
            .enumerate()
        {
            let draw_started = Instant::now();
            if let (Some(out), Some(mut image)) = (&out, decoded.next()) {
                cardet_detect::draw::draw_detections(&mut image, &detections, &names);
                let file_name = format!("{}.jpg", name.replace(['/', '\\'], "__"));
                cardet_detect::image_io::save(&image, &out.join(file_name))?;
            }
            let draw_ms = draw_started.elapsed().as_secs_f64() * 1e3;
            results.push(ImageResult {
                name,
                size: sizes[image_idx],
                detections,
                labels,
                timings: Timings {
                    decode_ms: decode_ms[image_idx],
                    preprocess_ms,
                    infer_ms,
                    postprocess_ms,
                    draw_ms,
                    total_ms: started.elapsed().as_secs_f64() * 1e3,
                },
                batch_size,
            });
        }
        Ok(results)
    })
    .await
    .map_err(|error| Error::InvalidArgument(format!("a post-processing task failed: {error}")))?
}

struct Prepared {
    names: Vec<String>,
    batch: cardet_detect::Batch,
    infos: Vec<cardet_detect::TransformInfo>,
    sizes: Vec<(u32, u32)>,
    labels: Vec<Option<Vec<YoloLabel>>>,
    /// Kept for drawing only.
    decoded: Vec<RgbImage>,
    decode_ms: Vec<f64>,
    preprocess_ms: f64,
}

fn prepare(
    images: Vec<InputImage>,
    image_size: (u32, u32),
    keep_images: bool,
) -> Result<Prepared, Error> {
    let mut names = Vec::with_capacity(images.len());
    let mut labels = Vec::with_capacity(images.len());
    let mut decoded = Vec::with_capacity(images.len());
    let mut decode_ms = Vec::with_capacity(images.len());
    for image in images {
        let decode_started = Instant::now();
        let rgb = cardet_detect::image_io::decode_rgb(&image.bytes, image.name.as_ref())?;
        decode_ms.push(decode_started.elapsed().as_secs_f64() * 1e3);
        names.push(image.name);
        labels.push(image.labels);
        decoded.push(rgb);
    }
    let preprocess_started = Instant::now();
    let batch = cardet_detect::letterbox::letterbox_batch(&decoded, image_size)?;
    let preprocess_ms = preprocess_started.elapsed().as_secs_f64() * 1e3;
    let sizes = decoded.iter().map(RgbImage::dimensions).collect();
    if !keep_images {
        decoded.clear();
    }
    Ok(Prepared {
        names,
        infos: batch.infos.clone(),
        batch,
        sizes,
        labels,
        decoded,
        decode_ms,
        preprocess_ms,
    })
}

/// A labelled image's `(name, size, labels, detections)`, kept for the mAP.
type LabelledImage = (String, (u32, u32), Vec<YoloLabel>, Vec<Detection>);

/// Results as they arrive: written out, and kept for the summary.
#[derive(Default)]
struct Collected {
    latencies_ms: Vec<f64>,
    n_detections: usize,
    labelled: Vec<LabelledImage>,
}

impl Collected {
    fn take(
        &mut self,
        finished: Result<Result<Vec<ImageResult>, Error>, tokio::task::JoinError>,
        lines: &mut (dyn Write + Send),
        names: &[String],
        progress: &indicatif::ProgressBar,
    ) -> Result<(), Error> {
        let results = finished
            .map_err(|error| Error::InvalidArgument(format!("a request task failed: {error}")))??;
        for result in results {
            let line = json!({
                "image": result.name,
                "width": result.size.0,
                "height": result.size.1,
                "detections": cardet_detect::geometry::detections_to_json(&result.detections, names),
                "batch_size": result.batch_size,
                "timings_ms": {
                    "decode": result.timings.decode_ms,
                    "preprocess": result.timings.preprocess_ms,
                    "infer": result.timings.infer_ms,
                    "postprocess": result.timings.postprocess_ms,
                    "draw": result.timings.draw_ms,
                    "total": result.timings.total_ms,
                },
            });
            writeln!(lines, "{line}").map_err(|source| Error::Io {
                path: PathBuf::from("<output>"),
                source,
            })?;
            self.latencies_ms.push(result.timings.total_ms);
            self.n_detections += result.detections.len();
            progress.inc(1);
            if let Some(labels) = result.labels {
                self.labelled
                    .push((result.name, result.size, labels, result.detections));
            }
        }
        Ok(())
    }

    fn summary(
        mut self,
        elapsed_s: f64,
        names: &[String],
        metrics_out: Option<&std::path::Path>,
    ) -> Result<Summary, Error> {
        let n_images = self.latencies_ms.len();
        self.latencies_ms.sort_by(f64::total_cmp);
        let eval = if !self.labelled.is_empty() {
            // Image ids in name order, not arrival order: COCO's accumulation breaks
            // score ties by image order, and arrival order varies between runs.
            self.labelled.sort_by(|a, b| a.0.cmp(&b.0));
            let mut ground_truth = GroundTruth::default();
            let mut predictions = Vec::new();
            for (index, (name, size, labels, detections)) in self.labelled.iter().enumerate() {
                let image_id = index as u64 + 1;
                ground_truth
                    .images
                    .push(eval_image(image_id, name, *size, labels));
                predictions.extend(
                    detections
                        .iter()
                        .map(|detection| predicted_box(image_id, detection)),
                );
            }
            let mut category_ids: Vec<usize> = ground_truth
                .images
                .iter()
                .flat_map(|image| image.objects.iter().map(|object| object.category_id))
                .collect();
            category_ids.sort_unstable();
            category_ids.dedup();
            ground_truth.categories = category_ids
                .into_iter()
                .map(|id| (id, cardet_detect::classes::class_name(names, id)))
                .collect();
            let report = cardet_detect::eval::evaluate(&ground_truth, &predictions);
            if let Some(path) = metrics_out {
                let text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
                std::fs::write(path, text).map_err(|source| Error::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
            Some(EvalSummary {
                map50: report.map50,
                map50_95: report.map50_95,
                report,
            })
        } else {
            None
        };
        Ok(Summary {
            n_images,
            n_detections: self.n_detections,
            elapsed_s,
            images_per_s: if elapsed_s > 0.0 {
                n_images as f64 / elapsed_s
            } else {
                0.0
            },
            latency_p50_ms: percentile(&self.latencies_ms, 0.50),
            latency_p99_ms: percentile(&self.latencies_ms, 0.99),
            eval,
        })
    }
}

/// Ground truth in pixels of the original image, as COCO's `[x, y, w, h]`.
pub fn eval_image(id: u64, name: &str, size: (u32, u32), labels: &[YoloLabel]) -> EvalImage {
    EvalImage {
        id,
        name: name.to_string(),
        size: Some(size),
        objects: labels
            .iter()
            .map(|label| GroundTruthBox {
                category_id: label.class_id,
                bbox: cardet_detect::eval::xyxy_to_xywh(&label.to_box(size)),
                iscrowd: false,
            })
            .collect(),
    }
}

pub fn predicted_box(image_id: u64, detection: &Detection) -> PredictedBox {
    PredictedBox {
        image_id,
        category_id: detection.class_id,
        bbox: cardet_detect::eval::xyxy_to_xywh(&detection.bbox),
        score: f64::from(detection.confidence),
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn progress_bar(visible: bool, n_images: usize) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n_images as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(values: &[f64], quantile: f64, expected: f64) {
        assert_eq!(
            percentile(values, quantile),
            expected,
            "{values:?} {quantile}"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        check(&hundred, 0.5, 50.0);
        check(&hundred, 0.99, 99.0);
        check(&[7.0], 0.99, 7.0);
        check(&[], 0.5, 0.0);
        check(&[1.0, 2.0, 3.0], 0.5, 2.0);
    }
}
