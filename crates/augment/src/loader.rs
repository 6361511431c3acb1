//! The loader: batches of one epoch built on worker threads, ahead of the consumer,
//! identical whatever the number of workers.
//!
//! Workers claim batch numbers in order from a shared counter, never more than
//! `prefetch_batches` ahead of the consumer, and send finished batches over a
//! channel; the consumer puts them back in order. Every random draw of a sample
//! comes from a generator seeded by `(seed, epoch, the sample's position in the
//! padded epoch)`, so which thread built a batch, and when, changes nothing.
//!
//! Mosaic partners are drawn from the sample's group of 8 consecutive batches of
//! this rank, at most 1000 images (Ultralytics draws them from a buffer of about
//! that many recently loaded images). A group's images are decoded once, by
//! whichever worker needs them first, and dropped when its last batch is built.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use cardet_detect::TransformInfo;
use cardet_detect::dataset::DatasetItem;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{AugmentConfig, LoaderConfig};
use crate::error::Error;
use crate::sampler;
use crate::transforms::{self, LabeledImage, LoadedImage, PerspectiveParams};

/// Consecutive batches whose images form one mosaic group, at most.
pub const MOSAIC_GROUP_BATCHES: usize = 8;
/// Images of one mosaic group, at most (Ultralytics caps its buffer at 1000 too),
/// which bounds the decoded images held at once for large batches.
pub const MOSAIC_GROUP_MAX_IMAGES: usize = 1000;

/// Batches per mosaic group for this batch size: 8, fewer when 8 batches would
/// exceed [`MOSAIC_GROUP_MAX_IMAGES`], at least 1.
pub fn mosaic_group_batches(batch_size: usize) -> usize {
    (MOSAIC_GROUP_MAX_IMAGES / batch_size.max(1)).clamp(1, MOSAIC_GROUP_BATCHES)
}

/// One image of a batch and how to map its boxes back.
#[derive(Clone, Debug)]
pub struct BatchItem {
    pub image_path: PathBuf,
    /// `(w, h)` of the file.
    pub original_size: (u32, u32),
    /// Maps boxes in the batch image back to the original (exact for validation;
    /// for an augmented training sample it describes the un-augmented letterbox).
    pub transform: TransformInfo,
}

/// One batch, ready for the network.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[n, 3, h, w]` RGB, contiguous, `0..=255` (the trainer divides by 255).
    pub images: Vec<u8>,
    /// `[n, 3, h, w]`.
    pub shape: [usize; 4],
    /// `[index in batch, class, cx, cy, w, h]`, normalised to the batch image's
    /// `(w, h)`: Ultralytics' `batch_idx, cls, bboxes`.
    pub targets: Vec<[f32; 6]>,
    pub items: Vec<BatchItem>,
}

/// Batches a split for one rank; [`Loader::epoch`] starts the workers of an epoch.
pub struct Loader {
    plan: Arc<Plan>,
}

/// What every epoch shares.
struct Plan {
    items: Vec<DatasetItem>,
    config: LoaderConfig,
    /// The order before the epoch's shuffle: aspect-ratio order for rect batches.
    base_order: Vec<usize>,
    n_rank_items: usize,
    n_batches: usize,
}

impl Loader {
    pub fn new(items: Vec<DatasetItem>, config: LoaderConfig) -> Result<Loader, Error> {
        config.validate()?;
        if items.is_empty() {
            return Err(Error::InvalidConfig(
                "the dataset has no images".to_string(),
            ));
        }
        let base_order = if config.rect {
            let sizes: Vec<(u32, u32)> = items.iter().map(|item| item.image_size).collect();
            sampler::aspect_ratio_order(&sizes)
        } else {
            (0..items.len()).collect()
        };
        let (n_rank_items, n_batches) = sampler::rank_counts(items.len(), &config);
        Ok(Loader {
            plan: Arc::new(Plan {
                items,
                config,
                base_order,
                n_rank_items,
                n_batches,
            }),
        })
    }

    /// Batches per epoch, for this rank.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan.n_batches
    }

    /// Items this rank sees per epoch.
    pub fn len_items(&self) -> usize {
        self.plan.n_rank_items
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.plan.config
    }

    /// The dataset indices this rank's batches of `epoch` hold, in order.
    pub fn epoch_item_indices(&self, epoch: u64) -> Vec<usize> {
        self.plan.rank_order(epoch)
    }

    /// Batches of one epoch, produced on worker threads ahead of the consumer; the
    /// content depends only on `(seed, epoch, rank, world_size)`, never on `workers`.
    /// `mosaic` false turns mosaic off (Ultralytics' `close_mosaic`). Dropping the
    /// iterator stops the workers. After an error the iterator ends.
    pub fn epoch(&self, epoch: u64, mosaic: bool) -> EpochBatches {
        let order = self.plan.rank_order(epoch);
        let batch_shapes = self.plan.batch_shapes(&order);
        let group_batches = mosaic_group_batches(self.plan.config.batch_size);
        let n_groups = self.plan.n_batches.div_ceil(group_batches);
        let shared = Arc::new(EpochShared {
            plan: Arc::clone(&self.plan),
            epoch,
            mosaic,
            order,
            batch_shapes,
            claims: Mutex::new(Claims {
                next_to_claim: 0,
                consumed: 0,
                stop: false,
            }),
            claims_changed: Condvar::new(),
            groups: Mutex::new(HashMap::new()),
            group_batches_left: (0..n_groups)
                .map(|group_idx| {
                    let first = group_idx * group_batches;
                    AtomicUsize::new((self.plan.n_batches - first).min(group_batches))
                })
                .collect(),
        });
        let (sender, receiver) = mpsc::channel();
        let mut workers = Vec::new();
        let mut spawn_error = None;
        for worker_idx in 0..self.plan.config.workers {
            let shared = Arc::clone(&shared);
            let sender = sender.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("cardet-loader-{worker_idx}"))
                .spawn(move || worker_loop(&shared, &sender));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(error) => {
                    spawn_error = Some(Error::Spawn(error));
                    break;
                }
            }
        }
        // With no thread at all, a configured pool that failed to start is an error;
        // `workers: 0` builds batches on the consumer's thread.
        let spawn_error = if workers.is_empty() {
            spawn_error
        } else {
            None
        };
        EpochBatches {
            shared,
            receiver,
            pending: BTreeMap::new(),
            next_batch: 0,
            workers,
            spawn_error,
            finished: false,
        }
    }
}

impl Plan {
    fn rank_order(&self, epoch: u64) -> Vec<usize> {
        let order = sampler::epoch_order(self.items.len(), epoch, &self.config, &self.base_order);
        let mut rank_order = sampler::shard(&order, self.config.rank, self.config.world_size);
        rank_order.truncate(self.n_rank_items);
        rank_order
    }

    /// `(width, height)` of each batch.
    fn batch_shapes(&self, order: &[usize]) -> Vec<(u32, u32)> {
        let batch_size = self.config.batch_size;
        let imgsz = self.config.imgsz;
        (0..self.n_batches)
            .map(|batch_idx| {
                if !self.config.rect {
                    return (imgsz, imgsz);
                }
                let end = ((batch_idx + 1) * batch_size).min(order.len());
                let sizes: Vec<(u32, u32)> = order[batch_idx * batch_size..end]
                    .iter()
                    .map(|&item_idx| self.items[item_idx].image_size)
                    .collect();
                sampler::rect_batch_shape(&sizes, imgsz)
            })
            .collect()
    }
}

/// The batches of one epoch, in order: `Iterator<Item = Result<Batch, Error>>`.
pub struct EpochBatches {
    shared: Arc<EpochShared>,
    receiver: mpsc::Receiver<(usize, Result<Batch, Error>)>,
    pending: BTreeMap<usize, Result<Batch, Error>>,
    next_batch: usize,
    workers: Vec<JoinHandle<()>>,
    spawn_error: Option<Error>,
    finished: bool,
}

impl Iterator for EpochBatches {
    type Item = Result<Batch, Error>;

    fn next(&mut self) -> Option<Result<Batch, Error>> {
        if self.finished || self.next_batch >= self.shared.plan.n_batches {
            self.stop_workers();
            return None;
        }
        if let Some(error) = self.spawn_error.take() {
            self.finished = true;
            return Some(Err(error));
        }
        let batch_idx = self.next_batch;
        let result = if self.workers.is_empty() {
            build_batch_catching_panics(&self.shared, batch_idx)
        } else {
            self.receive(batch_idx)
        };
        self.next_batch += 1;
        {
            let mut claims = self.shared.lock_claims();
            claims.consumed = self.next_batch;
        }
        self.shared.claims_changed.notify_all();
        if result.is_err() {
            self.finished = true;
            self.stop_workers();
        }
        Some(result)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.finished {
            0
        } else {
            self.shared.plan.n_batches - self.next_batch
        };
        (left, Some(left))
    }
}

impl EpochBatches {
    fn receive(&mut self, batch_idx: usize) -> Result<Batch, Error> {
        loop {
            if let Some(result) = self.pending.remove(&batch_idx) {
                return result;
            }
            match self.receiver.recv() {
                Ok((received_idx, result)) => {
                    self.pending.insert(received_idx, result);
                }
                // Every worker is gone without sending this batch: only a panic
                // outside `catch_unwind` gets here.
                Err(_) => return Err(Error::WorkerPanicked { batch_idx }),
            }
        }
    }

    fn stop_workers(&mut self) {
        {
            let mut claims = self.shared.lock_claims();
            claims.stop = true;
        }
        self.shared.claims_changed.notify_all();
        for worker in self.workers.drain(..) {
            // A worker's panic was already reported as its batch's error.
            let _ = worker.join();
        }
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// What the workers and the consumer of one epoch share.
struct EpochShared {
    plan: Arc<Plan>,
    epoch: u64,
    mosaic: bool,
    /// This rank's dataset indices, in order.
    order: Vec<usize>,
    batch_shapes: Vec<(u32, u32)>,
    claims: Mutex<Claims>,
    claims_changed: Condvar,
    /// Decoded images of the mosaic groups being built.
    groups: Mutex<HashMap<usize, Arc<GroupImages>>>,
    group_batches_left: Vec<AtomicUsize>,
}

struct Claims {
    next_to_claim: usize,
    consumed: usize,
    stop: bool,
}

/// One decode per position of a mosaic group, shared by whichever samples need it.
struct GroupImages {
    first_position: usize,
    slots: Vec<OnceLock<Result<Arc<LoadedImage>, Arc<cardet_detect::Error>>>>,
}

impl EpochShared {
    fn lock_claims(&self) -> MutexGuard<'_, Claims> {
        // A poisoned lock only means a thread panicked while holding it; the
        // counters themselves are always consistent.
        self.claims
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Blocks until a batch may be built (or the epoch is over), and claims it.
    fn claim(&self) -> Option<usize> {
        let window = self.plan.config.prefetch_batches.max(1);
        let mut claims = self.lock_claims();
        loop {
            if claims.stop || claims.next_to_claim >= self.plan.n_batches {
                return None;
            }
            if claims.next_to_claim < claims.consumed + window {
                let batch_idx = claims.next_to_claim;
                claims.next_to_claim += 1;
                return Some(batch_idx);
            }
            claims = self
                .claims_changed
                .wait(claims)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn group_images(&self, group_idx: usize) -> Arc<GroupImages> {
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(groups.entry(group_idx).or_insert_with(|| {
            let positions = group_positions(group_idx, &self.plan.config, self.order.len());
            Arc::new(GroupImages {
                first_position: positions.start,
                slots: positions.map(|_| OnceLock::new()).collect(),
            })
        }))
    }

    fn finish_group_batch(&self, group_idx: usize) {
        let Some(left) = self.group_batches_left.get(group_idx) else {
            return;
        };
        if left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut groups = self
                .groups
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            groups.remove(&group_idx);
        }
    }
}

fn worker_loop(shared: &EpochShared, sender: &mpsc::Sender<(usize, Result<Batch, Error>)>) {
    while let Some(batch_idx) = shared.claim() {
        let result = build_batch_catching_panics(shared, batch_idx);
        if sender.send((batch_idx, result)).is_err() {
            return;
        }
    }
}

fn build_batch_catching_panics(shared: &EpochShared, batch_idx: usize) -> Result<Batch, Error> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        build_batch(shared, batch_idx)
    }))
    .unwrap_or(Err(Error::WorkerPanicked { batch_idx }));
    shared.finish_group_batch(batch_idx / mosaic_group_batches(shared.plan.config.batch_size));
    result
}

fn build_batch(shared: &EpochShared, batch_idx: usize) -> Result<Batch, Error> {
    let config = &shared.plan.config;
    let batch_size = config.batch_size;
    let first = batch_idx * batch_size;
    let positions = first..(first + batch_size).min(shared.order.len());
    let (width, height) = shared.batch_shapes[batch_idx];
    let plane = width as usize * height as usize;
    let n_images = positions.len();
    // Filled plane by plane in order, so never zeroed first.
    let mut images = Vec::with_capacity(n_images * 3 * plane);
    let mut targets = Vec::new();
    let mut items = Vec::with_capacity(n_images);
    for (image_idx, position) in positions.enumerate() {
        let item = &shared.plan.items[shared.order[position]];
        let (sample, original_size, transform) = match &config.augment {
            Some(augment) => {
                let (sample, original_size) =
                    augmented_sample(shared, augment, batch_idx, position)?;
                let transform = TransformInfo::new(original_size, (width, height))?;
                (sample, original_size, transform)
            }
            None => {
                let loaded = transforms::load_resized(item, config.imgsz)?;
                let (sample, transform) = transforms::letterbox_loaded(&loaded, (width, height));
                (sample, loaded.original_size, transform)
            }
        };
        append_chw(&sample.image, &mut images);
        let (w, h) = (width as f32, height as f32);
        for labeled in &sample.boxes {
            let bbox = labeled.bbox;
            targets.push([
                image_idx as f32,
                labeled.class_id as f32,
                (bbox.x1 + bbox.x2) / 2.0 / w,
                (bbox.y1 + bbox.y2) / 2.0 / h,
                bbox.width() / w,
                bbox.height() / h,
            ]);
        }
        items.push(BatchItem {
            image_path: item.image_path.clone(),
            original_size,
            transform,
        });
        give_back_scratch(&WARP_BUFFER, sample.image.into_raw());
    }
    Ok(Batch {
        images,
        shape: [n_images, 3, height as usize, width as usize],
        targets,
        items,
    })
}

/// Ultralytics' training pipeline for one sample: mosaic (with probability
/// `mosaic`) or the loaded image alone, the random perspective into
/// `imgsz x imgsz`, HSV, vertical and horizontal flips.
fn augmented_sample(
    shared: &EpochShared,
    augment: &AugmentConfig,
    batch_idx: usize,
    position: usize,
) -> Result<(LabeledImage, (u32, u32)), Error> {
    let config = &shared.plan.config;
    let imgsz = config.imgsz;
    let mut rng = sample_rng(config, shared.epoch, position);
    let group_idx = batch_idx / mosaic_group_batches(config.batch_size);
    let group = shared.group_images(group_idx);
    let primary = load_cached(shared, &group, position)?;
    let use_mosaic = shared.mosaic && rng.random::<f32>() < augment.mosaic;
    let mut mosaic_image = None;
    let warp_input: &LabeledImage = if use_mosaic {
        let group_len = group.slots.len();
        let mut partners = Vec::with_capacity(3);
        for _ in 0..3 {
            let partner_position = group.first_position + rng.random_range(0..group_len);
            partners.push(load_cached(shared, &group, partner_position)?);
        }
        mosaic_image = Some(transforms::random_mosaic_into(
            [
                &primary.labeled,
                &partners[0].labeled,
                &partners[1].labeled,
                &partners[2].labeled,
            ],
            imgsz,
            &mut rng,
            take_scratch(&CANVAS_BUFFER),
        ));
        mosaic_image.as_ref().unwrap_or(&primary.labeled)
    } else {
        &primary.labeled
    };
    let params = PerspectiveParams::random(augment, &mut rng);
    let mut sample = transforms::perspective_into(
        warp_input,
        &params,
        (imgsz, imgsz),
        take_scratch(&WARP_BUFFER),
    );
    if let Some(mosaic) = mosaic_image {
        give_back_scratch(&CANVAS_BUFFER, mosaic.image.into_raw());
    }
    transforms::random_colour_and_flips(&mut sample, augment, &mut rng);
    Ok((sample, primary.original_size))
}

fn load_cached(
    shared: &EpochShared,
    group: &GroupImages,
    position: usize,
) -> Result<Arc<LoadedImage>, Error> {
    let slot = position
        .checked_sub(group.first_position)
        .and_then(|offset| group.slots.get(offset));
    let item = &shared.plan.items[shared.order[position]];
    let imgsz = shared.plan.config.imgsz;
    match slot {
        Some(slot) => slot
            .get_or_init(|| {
                transforms::load_resized(item, imgsz)
                    .map(Arc::new)
                    .map_err(Arc::new)
            })
            .clone()
            .map_err(Error::Image),
        None => Ok(Arc::new(transforms::load_resized(item, imgsz)?)),
    }
}

/// This rank's positions in mosaic group `group_idx`.
fn group_positions(
    group_idx: usize,
    config: &LoaderConfig,
    n_positions: usize,
) -> std::ops::Range<usize> {
    let group_len = mosaic_group_batches(config.batch_size) * config.batch_size;
    let start = (group_idx * group_len).min(n_positions);
    start..(start + group_len).min(n_positions)
}

/// The generator of one sample: seeded by the seed, the epoch and the sample's
/// position in the padded epoch order across all ranks.
fn sample_rng(config: &LoaderConfig, epoch: u64, rank_position: usize) -> ChaCha8Rng {
    let global_position = (rank_position * config.world_size + config.rank) as u64;
    let mut key = [0_u8; 32];
    key[..8].copy_from_slice(&config.seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..24].copy_from_slice(&global_position.to_le_bytes());
    key[24..].copy_from_slice(b"augment\0");
    ChaCha8Rng::from_seed(key)
}

/// HWC RGB appended to the batch as its `[3, h, w]` planes.
fn append_chw(image: &image::RgbImage, images: &mut Vec<u8>) {
    for channel in 0..3 {
        images.extend(image.as_raw().chunks_exact(3).map(|pixel| pixel[channel]));
    }
}

thread_local! {
    /// Each worker's mosaic canvas and warp output, reused from sample to sample:
    /// allocations of a megabyte are mapped and zeroed by the kernel each time.
    static CANVAS_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static WARP_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

fn take_scratch(slot: &'static std::thread::LocalKey<Cell<Vec<u8>>>) -> Vec<u8> {
    slot.with(Cell::take)
}

fn give_back_scratch(slot: &'static std::thread::LocalKey<Cell<Vec<u8>>>, buffer: Vec<u8>) {
    slot.with(|cell| cell.set(buffer));
}
