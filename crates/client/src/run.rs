//! The image pipeline: read, decode and letterbox, batch, infer with several requests
//! in flight, decode and NMS, write one JSON line per image and the annotated image,
//! and sum it up (throughput, latency percentiles, mAP against labels). Every input
//! kind (files, a dataset split, a Kafka topic) goes through the same loop; an input
//! that cannot be read or decoded is skipped with a warning and counted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use cardet_detect::dataset::YoloLabel;
use cardet_detect::eval::{EvalImage, EvalReport, GroundTruth, GroundTruthBox, PredictedBox};
use cardet_detect::letterbox::{InputSize, PaddingWritten, TransformInfo, letterbox_batch_reusing};
use cardet_detect::{Detection, PostprocessConfig, YoloV8Layout};
use image::RgbImage;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::Error;
use crate::inputs::{self, Input, InputImage, InputSpec, RecordPosition};
use crate::kserve::{InputTensor, KserveClient, Protocol};
use crate::recycle::{Recycled, Recycler, lock};
use crate::shared_memory::SharedRegion;

/// With a live input (a followed topic), how long a part-filled batch waits for
/// more images before it is sent: long enough to batch a burst, short enough that a
/// lone frame is answered at once.
const LIVE_BATCH_LINGER: Duration = Duration::from_millis(20);

/// How long unregistering a run's shared-memory regions may take in all, so that a
/// server that stopped answering does not hold up the exit.
const UNREGISTER_WITHIN: Duration = Duration::from_secs(10);

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
    /// The network input size when the model's metadata leaves it variable: the
    /// largest it gets, with [`RunConfig::rect`].
    pub default_image_size: (u32, u32),
    /// A model that takes any input size gets each batch at the smallest multiple
    /// of 32 that holds its images scaled to `default_image_size` (Ultralytics'
    /// rectangular letterbox); `false` always sends `default_image_size`.
    pub rect: bool,
    /// Class names; `None`: the dataset's, else COCO's.
    pub names: Option<Vec<String>>,
    /// Retries of a request that failed for a transient reason (server down or
    /// overloaded), with exponential back-off from 100 ms.
    pub retries: u32,
    pub timeout: Duration,
    pub progress_bar: bool,
    /// Where the mAP report goes (JSON), for a dataset split or labelled records.
    pub metrics_out: Option<PathBuf>,
    /// Raised (by a signal handler, say): read no more input, finish the batches in
    /// flight and sum up. The way to end a run that follows a topic.
    pub stop: Arc<AtomicBool>,
    /// Pass tensors through system shared-memory regions instead of the socket
    /// (HTTP binary or gRPC; the server must share this host's `/dev/shm`).
    pub shared_memory: bool,
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
            rect: true,
            names: None,
            retries: 0,
            timeout: Duration::from_secs(120),
            progress_bar: false,
            metrics_out: None,
            stop: Arc::new(AtomicBool::new(false)),
            shared_memory: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub n_images: usize,
    /// Inputs that could not be read or decoded (each named in a warning).
    pub n_skipped: usize,
    pub n_detections: usize,
    pub elapsed_s: f64,
    pub images_per_s: f64,
    /// From reading an image to its detections, per image.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// With labels (a dataset split, labelled records).
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
            "skipped": self.n_skipped,
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
    input_size: InputSize,
}

/// One image's result.
struct ImageResult {
    name: String,
    position: Option<RecordPosition>,
    size: (u32, u32),
    /// The network input it was letterboxed to, `(width, height)`.
    input_size: (u32, u32),
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
/// per image to `lines`. The input is opened first (a missing file or an
/// unreachable broker fails before the server is asked), then the run fails fast
/// when the server is down or the model not ready; the first request that fails
/// (after retries) ends the run with the server's message. An image that cannot be
/// read or decoded is skipped with a warning naming it and counted in the summary.
pub async fn run(config: &RunConfig, lines: &mut (dyn Write + Send)) -> Result<Summary, Error> {
    if config.concurrency == 0 || config.batch == 0 {
        return Err(Error::InvalidArgument(
            "--concurrency and --batch must be at least 1".to_string(),
        ));
    }
    if config.shared_memory && config.protocol == Protocol::HttpJson {
        return Err(Error::InvalidArgument(
            "--shared-memory needs binary tensors (HTTP without --json, or gRPC)".to_string(),
        ));
    }
    let input = config.input.clone();
    let source = tokio::task::spawn_blocking(move || inputs::open(&input))
        .await
        .map_err(|error| Error::InvalidArgument(format!("opening the input failed: {error}")))??;
    let client = KserveClient::new(&config.url, config.protocol, config.timeout)?;
    let version = config.version.as_deref();
    with_retries(config.retries, || {
        client.check_ready(&config.model, version)
    })
    .await?;
    let model_io = read_model_io(&client, config).await?;
    let names = Arc::new(
        config
            .names
            .clone()
            .or_else(|| source.names.clone())
            .unwrap_or_else(cardet_detect::classes::coco_names),
    );
    if let Some(out) = &config.out {
        std::fs::create_dir_all(out).map_err(|source| Error::Io {
            path: out.clone(),
            source,
        })?;
    }
    let progress = progress_bar(config.progress_bar, source.expected);
    let live = source.live;
    let (sender, mut receiver) = mpsc::channel(config.batch * (config.concurrency + 1));
    let reader = source.spawn_reader(sender, config.stop.clone());

    let started = Instant::now();
    let (width, height) = model_io.input_size.max;
    let shared = Arc::new(Shared {
        client,
        config: config.clone(),
        model_io,
        names: names.clone(),
        input_buffers: Recycler::new(config.concurrency + 1),
        image_buffers: Recycler::new(config.batch * (config.concurrency + 1)),
        region_slots: config
            .shared_memory
            .then(|| RegionSlots::new(config.batch * 3 * width as usize * height as usize * 4)),
    });
    let mut in_flight: JoinSet<Result<BatchOutcome, Error>> = JoinSet::new();
    let outcome = async {
        let mut collected = Collected::default();
        let mut pending: Vec<InputImage> = Vec::with_capacity(config.batch);
        // When a live input's part-filled batch goes out anyway.
        let mut linger_until: Option<tokio::time::Instant> = None;
        let mut input_done = false;
        loop {
            let batch_full = pending.len() >= config.batch;
            let lingering = linger_until.is_some_and(|until| tokio::time::Instant::now() < until);
            let send_now = batch_full
                || (!pending.is_empty() && (input_done || (linger_until.is_some() && !lingering)));
            if send_now && in_flight.len() < config.concurrency {
                let batch = std::mem::replace(&mut pending, Vec::with_capacity(config.batch));
                linger_until = None;
                let shared = shared.clone();
                in_flight.spawn(async move { process_batch(&shared, batch).await });
                continue;
            }
            if input_done && pending.is_empty() && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                // Finished batches first, so output streams while later batches run.
                biased;
                Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                    collected.take(finished, lines, &names, &progress)?;
                    if live {
                        flush(lines)?;
                    }
                }
                item = receiver.recv(), if !input_done && !batch_full => match item {
                    Some(Input::Image(image)) => {
                        if live && pending.is_empty() {
                            linger_until = Some(tokio::time::Instant::now() + LIVE_BATCH_LINGER);
                        }
                        pending.push(image);
                    }
                    Some(Input::Skipped) => {
                        collected.n_skipped += 1;
                        progress.inc(1);
                    }
                    None => input_done = true,
                },
                // Wakes the loop when a part-filled live batch has waited long enough.
                () = tokio::time::sleep_until(
                    linger_until.unwrap_or_else(tokio::time::Instant::now),
                ), if lingering && !batch_full => {}
            }
        }
        // The reader has sent everything (or was stopped); a reader that died early
        // would leave inputs unread, which the summary must not hide.
        reader
            .await
            .map_err(|error| Error::InvalidArgument(format!("the input reader failed: {error}")))?;
        Ok::<_, Error>((collected, started.elapsed().as_secs_f64()))
    }
    .await;
    // Whichever way the loop ended, the regions go: after a failed request the
    // others are stopped first, so none registers a region once they are unregistered.
    in_flight.shutdown().await;
    progress.finish_and_clear();
    if let Some(slots) = &shared.region_slots {
        slots.unregister_all(&shared.client).await;
    }
    let (collected, elapsed_s) = outcome?;
    flush(lines)?;
    collected.summary(elapsed_s, &names, config.metrics_out.as_deref())
}

fn flush(lines: &mut (dyn Write + Send)) -> Result<(), Error> {
    lines.flush().map_err(|source| Error::Io {
        path: PathBuf::from("<output>"),
        source,
    })
}

struct Shared {
    client: KserveClient,
    config: RunConfig,
    model_io: ModelIo,
    names: Arc<Vec<String>>,
    /// Letterboxed batches, one per request in flight (and one being prepared).
    input_buffers: Arc<Recycler<f32, PaddingWritten>>,
    /// Decoded frames.
    image_buffers: Arc<Recycler<u8>>,
    /// With `--shared-memory`: the regions of the requests in flight.
    region_slots: Option<RegionSlots>,
}

/// The shared-memory regions one request in flight uses.
struct RegionSlot {
    index: usize,
    input: SharedRegion,
    /// Made after the slot's first answer, once the output's size is known; until
    /// then the output comes back in the body.
    output: Option<SharedRegion>,
    /// The letterbox padding the input region already holds (only the client
    /// writes it; the server reads it).
    padding: PaddingWritten,
}

/// Region slots handed from request to request, made as concurrency needs them.
struct RegionSlots {
    free: std::sync::Mutex<Vec<RegionSlot>>,
    input_bytes: usize,
    /// Every region this run registered (or was registering), to unregister when
    /// the run ends, however it ends.
    registered: std::sync::Mutex<Vec<String>>,
}

/// Slot numbers, unique in the process: region names are global on the server,
/// and a run that could not unregister its regions (one killed, say) leaves them
/// registered.
static NEXT_SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl RegionSlots {
    fn new(input_bytes: usize) -> RegionSlots {
        RegionSlots {
            free: std::sync::Mutex::new(Vec::new()),
            input_bytes,
            registered: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn region_name(index: usize, role: &str) -> String {
        format!("cardet-{}-{index}-{role}", std::process::id())
    }

    async fn create(
        &self,
        client: &KserveClient,
        name: String,
        bytes: usize,
    ) -> Result<SharedRegion, Error> {
        // Recorded before asking: a run that ends while this request is out cannot
        // tell whether the server registered it, and unregistering a name that is
        // not registered succeeds.
        lock(&self.registered).push(name.clone());
        let created = client.create_region(&name, bytes).await;
        if let Err(Error::Server { .. } | Error::Io { .. }) = &created {
            // Refused, or never sent: nothing to unregister.
            lock(&self.registered).retain(|registered| *registered != name);
        }
        created
    }

    async fn take(&self, client: &KserveClient) -> Result<RegionSlot, Error> {
        if let Some(slot) = lock(&self.free).pop() {
            return Ok(slot);
        }
        let index = NEXT_SLOT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = Self::region_name(index, "in");
        let input = self.create(client, name, self.input_bytes).await?;
        Ok(RegionSlot {
            index,
            input,
            output: None,
            padding: PaddingWritten::default(),
        })
    }

    /// Gives `slot` an output region of `bytes` once it has learnt the size.
    async fn add_output(
        &self,
        client: &KserveClient,
        slot: &mut RegionSlot,
        bytes: usize,
    ) -> Result<(), Error> {
        if slot.output.is_none() && bytes > 0 {
            let name = Self::region_name(slot.index, "out");
            slot.output = Some(self.create(client, name, bytes).await?);
        }
        Ok(())
    }

    fn give(&self, slot: RegionSlot) {
        lock(&self.free).push(slot);
    }

    /// Unregisters every region this run registered, on every way a run ends. Best
    /// effort, within [`UNREGISTER_WITHIN`]: a region left registered costs the server
    /// its mapping only, so a failure is one warning naming the regions left, and
    /// never replaces the error that ended the run.
    async fn unregister_all(&self, client: &KserveClient) {
        let names = std::mem::take(&mut *lock(&self.registered));
        let mut left: Vec<&str> = Vec::new();
        let mut first_error: Option<String> = None;
        let mut n_tried = 0;
        let unregistering = async {
            for name in &names {
                if let Err(error) = client.unregister_region(name).await {
                    left.push(name);
                    first_error.get_or_insert_with(|| error.to_string());
                }
                n_tried += 1;
            }
        };
        if tokio::time::timeout(UNREGISTER_WITHIN, unregistering)
            .await
            .is_err()
        {
            left.extend(names[n_tried..].iter().map(String::as_str));
            first_error.get_or_insert_with(|| {
                format!(
                    "the server at {} did not answer within {} s",
                    client.url(),
                    UNREGISTER_WITHIN.as_secs()
                )
            });
        }
        if let Some(error) = first_error {
            tracing::warn!(
                "shared-memory regions left registered on the server ({}): {error}",
                left.join(", ")
            );
        }
    }
}

/// Where a batch is letterboxed into.
enum InputBuffer {
    Recycled(Recycled<f32, PaddingWritten>),
    Region(RegionSlot),
}

impl InputBuffer {
    /// Letterboxes `images` into the buffer, as a batch of `n_values` floats.
    fn letterbox(
        &mut self,
        images: &[RgbImage],
        image_size: (u32, u32),
        n_values: usize,
    ) -> Result<Vec<TransformInfo>, Error> {
        match self {
            InputBuffer::Recycled(buffer) => {
                // Same-sized batches, the usual case, leave the length as it is: no fill.
                if buffer.len() != n_values {
                    buffer.resize(n_values, 0.0);
                    buffer.memo.forget();
                }
                // A big-endian request body is byte-swapped in the buffer itself.
                #[cfg(not(target_endian = "little"))]
                buffer.memo.forget();
                let (values, padding) = buffer.with_memo();
                Ok(letterbox_batch_reusing(
                    images, image_size, values, padding,
                )?)
            }
            InputBuffer::Region(slot) => {
                let name = slot.input.name().to_string();
                let floats = slot.input.floats_mut().get_mut(..n_values).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "a batch of {n_values} floats does not fit shared-memory region {name}"
                    ))
                })?;
                Ok(letterbox_batch_reusing(
                    images,
                    image_size,
                    floats,
                    &mut slot.padding,
                )?)
            }
        }
    }
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
        input_size: InputSize {
            max: (
                side(chw[2], config.default_image_size.0),
                side(chw[1], config.default_image_size.1),
            ),
            shrink: (config.rect && chw[2] <= 0, config.rect && chw[1] <= 0),
        },
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

/// A batch's answers, and how many of its images did not decode.
struct BatchOutcome {
    results: Vec<ImageResult>,
    n_skipped: usize,
}

async fn process_batch(shared: &Shared, images: Vec<InputImage>) -> Result<BatchOutcome, Error> {
    let started = Instant::now();
    let input_size = shared.model_io.input_size;
    let keep_images = shared.config.out.is_some();
    let image_buffers = shared.image_buffers.clone();
    let input_buffer = match &shared.region_slots {
        Some(slots) => InputBuffer::Region(slots.take(&shared.client).await?),
        None => InputBuffer::Recycled(shared.input_buffers.take_guarded()),
    };
    let (prepared, n_skipped, input_buffer) = tokio::task::spawn_blocking(move || {
        let mut input_buffer = input_buffer;
        let (prepared, n_skipped) = prepare(
            images,
            input_size,
            keep_images,
            &mut input_buffer,
            &image_buffers,
        )?;
        Ok::<_, Error>((prepared, n_skipped, input_buffer))
    })
    .await
    .map_err(|error| Error::InvalidArgument(format!("a decode task failed: {error}")))??;
    let give_back = |input_buffer: InputBuffer| {
        if let (InputBuffer::Region(slot), Some(slots)) = (input_buffer, &shared.region_slots) {
            slots.give(slot);
        }
    };
    let Some(prepared) = prepared else {
        give_back(input_buffer);
        return Ok(BatchOutcome {
            results: Vec::new(),
            n_skipped,
        });
    };
    let infer_started = Instant::now();
    let batch_size = prepared.metas.len();
    let shape: Vec<i64> = prepared.shape.iter().map(|&side| side as i64).collect();
    let n_values = prepared.shape.iter().product();
    let (input, mut slot) = match input_buffer {
        InputBuffer::Recycled(buffer) => (
            InputTensor::new(&shared.model_io.input_name, shape, buffer),
            None,
        ),
        InputBuffer::Region(slot) => (
            InputTensor::in_region(&shared.model_io.input_name, shape, &slot.input, n_values),
            Some(slot),
        ),
    };
    let input = &input;
    let output_region = slot.as_ref().and_then(|slot| slot.output.as_ref());
    let output = with_retries(shared.config.retries, || {
        shared.client.infer(
            &shared.config.model,
            shared.config.version.as_deref(),
            input,
            &shared.model_io.output_name,
            output_region,
        )
    })
    .await?;
    let infer_ms = infer_started.elapsed().as_secs_f64() * 1e3;
    if let (Some(slot), Some(slots)) = (&mut slot, &shared.region_slots) {
        // Room for a full batch of what one image's output turned out to be.
        let bytes_per_image = output.values().len() * 4 / batch_size.max(1);
        slots
            .add_output(&shared.client, slot, bytes_per_image * shared.config.batch)
            .await?;
    }
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
    let image_buffers = shared.image_buffers.clone();
    let Prepared {
        metas,
        infos,
        sizes,
        decoded,
        decode_ms,
        preprocess_ms,
        ..
    } = prepared;
    let results = tokio::task::spawn_blocking(move || {
        let postprocess_started = Instant::now();
        let detections =
            cardet_detect::postprocess(output.values(), layout, &infos, &postprocess_config)?;
        let postprocess_ms = postprocess_started.elapsed().as_secs_f64() * 1e3;
        let mut results = Vec::with_capacity(batch_size);
        let mut decoded = decoded.into_iter();
        for (image_idx, (meta, detections)) in metas.into_iter().zip(detections).enumerate() {
            let draw_started = Instant::now();
            if let (Some(out), Some(mut image)) = (&out, decoded.next()) {
                cardet_detect::draw::draw_detections(&mut image, &detections, &names);
                cardet_detect::image_io::save(&image, &out.join(&meta.drawing_name))?;
                image_buffers.give(image.into_raw());
            }
            let draw_ms = draw_started.elapsed().as_secs_f64() * 1e3;
            results.push(ImageResult {
                name: meta.name,
                position: meta.position,
                size: sizes[image_idx],
                input_size: infos[image_idx].dst_size,
                detections,
                labels: meta.labels,
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
        Ok::<_, Error>(results)
    })
    .await
    .map_err(|error| Error::InvalidArgument(format!("a post-processing task failed: {error}")))??;
    // The output, read from the slot's region, was dropped with the task above.
    if let Some(slot) = slot {
        give_back(InputBuffer::Region(slot));
    }
    Ok(BatchOutcome { results, n_skipped })
}

/// What travels with an image from its input to its JSON line.
struct ImageMeta {
    name: String,
    position: Option<RecordPosition>,
    drawing_name: String,
    labels: Option<Vec<YoloLabel>>,
}

struct Prepared {
    metas: Vec<ImageMeta>,
    /// The letterboxed batch's shape, `[n, 3, height, width]` (its values are in the
    /// batch's [`InputBuffer`]).
    shape: [usize; 4],
    infos: Vec<cardet_detect::TransformInfo>,
    sizes: Vec<(u32, u32)>,
    /// Kept for drawing only.
    decoded: Vec<RgbImage>,
    decode_ms: Vec<f64>,
    preprocess_ms: f64,
}

/// Decodes and letterboxes a batch. An image that does not decode is left out with
/// a warning naming it (its file, or its record's topic, partition and offset) and
/// counted; `None` when no image of the batch decoded.
fn prepare(
    images: Vec<InputImage>,
    input_size: InputSize,
    keep_images: bool,
    input_buffer: &mut InputBuffer,
    image_buffers: &Recycler<u8>,
) -> Result<(Option<Prepared>, usize), Error> {
    let mut metas = Vec::with_capacity(images.len());
    let mut decoded = Vec::with_capacity(images.len());
    let mut decode_ms = Vec::with_capacity(images.len());
    let mut n_skipped = 0;
    for image in images {
        let decode_started = Instant::now();
        let origin = image.origin();
        let rgb = match cardet_detect::image_io::decode_rgb_reusing(
            &image.bytes,
            Path::new(&origin),
            image_buffers.take(),
        ) {
            Ok(rgb) => rgb,
            Err(error) => {
                tracing::warn!("skipping an image: {error}");
                n_skipped += 1;
                continue;
            }
        };
        decode_ms.push(decode_started.elapsed().as_secs_f64() * 1e3);
        metas.push(ImageMeta {
            drawing_name: image.drawing_name(),
            name: image.name,
            position: image.position,
            labels: image.labels,
        });
        decoded.push(rgb);
    }
    if decoded.is_empty() {
        return Ok((None, n_skipped));
    }
    let preprocess_started = Instant::now();
    let image_size = input_size.for_images(decoded.iter().map(RgbImage::dimensions))?;
    let shape = cardet_detect::letterbox::batch_shape(decoded.len(), image_size);
    let infos = input_buffer.letterbox(&decoded, image_size, shape.iter().product())?;
    let preprocess_ms = preprocess_started.elapsed().as_secs_f64() * 1e3;
    let sizes = decoded.iter().map(RgbImage::dimensions).collect();
    if !keep_images {
        for image in decoded.drain(..) {
            image_buffers.give(image.into_raw());
        }
    }
    let prepared = Prepared {
        metas,
        shape,
        infos,
        sizes,
        decoded,
        decode_ms,
        preprocess_ms,
    };
    Ok((Some(prepared), n_skipped))
}

/// A labelled image, kept for the mAP.
struct LabelledImage {
    name: String,
    /// Tells records of the same file name apart in a stable order.
    position: Option<RecordPosition>,
    size: (u32, u32),
    labels: Vec<YoloLabel>,
    detections: Vec<Detection>,
}

/// Results as they arrive: written out, and kept for the summary.
#[derive(Default)]
struct Collected {
    latencies_ms: Vec<f64>,
    n_detections: usize,
    n_skipped: usize,
    labelled: Vec<LabelledImage>,
}

impl Collected {
    fn take(
        &mut self,
        finished: Result<Result<BatchOutcome, Error>, tokio::task::JoinError>,
        lines: &mut (dyn Write + Send),
        names: &[String],
        progress: &indicatif::ProgressBar,
    ) -> Result<(), Error> {
        let outcome = finished
            .map_err(|error| Error::InvalidArgument(format!("a request task failed: {error}")))??;
        self.n_skipped += outcome.n_skipped;
        progress.inc(outcome.n_skipped as u64);
        for result in outcome.results {
            let mut line = json!({
                "image": result.name,
                "width": result.size.0,
                "height": result.size.1,
                "input_size": [result.input_size.0, result.input_size.1],
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
            if let Some(position) = &result.position {
                line["topic"] = position.topic.clone().into();
                line["partition"] = position.partition.into();
                line["offset"] = position.offset.into();
            }
            writeln!(lines, "{line}").map_err(|source| Error::Io {
                path: PathBuf::from("<output>"),
                source,
            })?;
            self.latencies_ms.push(result.timings.total_ms);
            self.n_detections += result.detections.len();
            progress.inc(1);
            if let Some(labels) = result.labels {
                self.labelled.push(LabelledImage {
                    name: result.name,
                    position: result.position,
                    size: result.size,
                    labels,
                    detections: result.detections,
                });
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
            // Image ids in name order (then a record's place), not arrival order:
            // COCO's accumulation breaks score ties by image order, and arrival order
            // varies between runs.
            self.labelled
                .sort_by(|a, b| (&a.name, &a.position).cmp(&(&b.name, &b.position)));
            let mut ground_truth = GroundTruth::default();
            let mut predictions = Vec::new();
            for (index, image) in self.labelled.iter().enumerate() {
                let image_id = index as u64 + 1;
                ground_truth.images.push(eval_image(
                    image_id,
                    &image.name,
                    image.size,
                    &image.labels,
                ));
                predictions.extend(
                    image
                        .detections
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
            n_skipped: self.n_skipped,
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

/// A bar over the inputs expected, or a counter when the input has no end.
fn progress_bar(visible: bool, n_expected: Option<u64>) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let (bar, template) = match n_expected {
        Some(n_expected) => (
            indicatif::ProgressBar::new(n_expected),
            "{bar:40} {pos}/{len} images {per_sec} eta {eta}",
        ),
        None => (
            indicatif::ProgressBar::no_length(),
            "{spinner} {pos} images {per_sec}",
        ),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
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
