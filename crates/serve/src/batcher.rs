//! Dynamic batching: each model version's queue, drained by its instances.
//!
//! [`Batcher::append`] takes a permit from a semaphore sized to the queue and permits
//! for the request's input bytes from a second one sized to `queue_bytes` (no permit:
//! the queue is full and the caller is told to come back; neither the number of
//! requests nor the memory they hold grows without bound) and puts the request in
//! the queue. Each instance is an OS thread owning one [`Backend`]. As soon as it is
//! free it takes its next batch from the queue itself ([`Queue::next_batch`]): the
//! oldest request plus whatever compatible requests are waiting or arrive until
//! `max_batch_size` rows or the oldest has waited `max_queue_delay`. It merges the
//! inputs along the batch dimension (into buffers it keeps for the next batch), runs
//! them as one call, splits the outputs back by rows (zero-copy slices) and answers
//! each request over its oneshot.
//!
//! The instance pulls rather than being handed batches by a scheduler task: on two
//! cores, ONNX Runtime's spinning threads made the hop through the async runtime
//! cost about 5 ms between the end of one batch and the start of the next.
//!
//! A [`SplitInstance`] is one CPU instance drained by two lanes (OS threads). A lone
//! request runs on all of the instance's threads (the lowest latency); while other
//! requests wait, the lanes run two batches at once on half of the threads each,
//! never more threads than the instance has. On two cores, two one-threaded runs
//! side by side do a third more images per second than one two-threaded run, whose
//! threads wait on each other at the end of every parallel section whenever the
//! HTTP side takes one of the cores.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::allocator::release_free_memory;
use crate::backend::{Backend, BackendError, Batch, HostPinning};
use crate::metrics::ModelStats;
use crate::model_config::PadBatch;
use crate::tensor::Tensor;

/// An instance idle this long drops its merge buffers and hands the memory its
/// batches freed back to the system ([`release_free_memory`]). Not sooner: the next
/// burst faults all of it in again (up to about 200 MB for batches of 1 to 8 on
/// YOLOv8n, some 100 ms of two cores), so a load that pauses for a few seconds
/// would pay that on every resumption. `serve_bench pair --clients 8`, whose `serve`
/// side pauses 8-19 s between turns, ran 5-9% slower with a 1 s wait and still
/// released in about half its pauses with a 10 s one (0.81-0.91x against 0.89-0.90x
/// with none).
pub const RELEASE_MEMORY_WHEN_IDLE_FOR: Duration = Duration::from_secs(30);

/// How a model version's requests are batched and queued.
#[derive(Clone, Debug, PartialEq)]
pub struct BatcherConfig {
    /// Rows per backend call; 0 or 1 turns merging off.
    pub max_batch_size: usize,
    /// How long the oldest request may wait for others (`None`: no dynamic batching).
    pub max_queue_delay: Option<Duration>,
    /// Requests waiting or running at once; more are refused.
    pub queue_capacity: usize,
    /// Input bytes of the requests waiting or running at once; more are refused.
    pub queue_bytes: usize,
    /// Whether inputs carry a batch dimension (`max_batch_size > 0` in the config).
    pub batched_model: bool,
    /// Zero rows added to each batch before it runs (outputs of those rows dropped).
    pub pad: PadBatch,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("the queue is full ({0} requests waiting or running)")]
    QueueFull(usize),
    #[error(
        "the queue is full (its requests hold {held_mib} MiB of inputs; the limit is {limit_mib} MiB)"
    )]
    QueueBytesFull { held_mib: usize, limit_mib: usize },
    #[error("the request's {bytes} bytes of inputs exceed the queue's limit of {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
    #[error("the model is shutting down")]
    Closed,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// One request's outputs (every output of the model).
#[derive(Debug)]
pub struct Executed {
    pub outputs: Vec<Tensor>,
}

/// The handle requests are appended through; cloning shares the queue. When the
/// last clone is dropped the queue closes: the instances answer what is still
/// queued, then stop.
#[derive(Clone)]
pub struct Batcher {
    queue: Arc<QueueHandle>,
    capacity: Arc<Semaphore>,
    queue_capacity: usize,
    /// Permits are KiB of input data (tokio takes at most `u32::MAX` permits at once).
    bytes: Arc<Semaphore>,
    queue_kib: usize,
    stats: Arc<ModelStats>,
    /// The instance threads, for whoever must wait until they have dropped their
    /// sessions ([`Batcher::take_instances`]).
    instances: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

/// Counts a request in [`ModelStats::pending`] from its queueing until it is answered.
struct PendingCount(Arc<ModelStats>);

impl PendingCount {
    fn new(stats: &Arc<ModelStats>) -> PendingCount {
        stats
            .pending
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PendingCount(stats.clone())
    }
}

impl Drop for PendingCount {
    fn drop(&mut self) {
        self.0
            .pending
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

struct Pending {
    inputs: Vec<Tensor>,
    rows: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Executed, BackendError>>,
    _permit: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    _counted: PendingCount,
}

/// The backends a model version's requests run on.
pub enum Instances {
    /// One OS thread per backend, each taking its own batches (Triton's instances).
    Separate(Vec<Box<dyn Backend>>),
    /// One CPU instance whose threads are split in two while requests wait.
    Split(SplitInstance),
}

/// One CPU instance as three sessions of the same model: `whole` has all of its
/// intra-op threads, each of `halves` half of them. Only `whole` runs, or any of
/// `halves`, never both (see [`Lanes`]).
pub struct SplitInstance {
    pub whole: Box<dyn Backend>,
    pub halves: [Box<dyn Backend>; 2],
}

/// Which thread of a model version takes a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    /// A [`Instances::Separate`] instance: takes any batch, runs it on its backend.
    Alone,
    /// A split instance's first lane: takes any batch; runs it on all of the threads
    /// when it is the only request and the second lane is idle, else on half.
    First,
    /// A split instance's second lane: takes a batch only while the first runs on half
    /// of the threads, and runs it on the other half.
    Second,
}

/// Which session a batch runs on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Width {
    /// The instance's own threads (a split instance's `whole`).
    Whole,
    /// Half of a split instance's threads.
    Half,
}

/// What a split instance's lanes are running, read and set under the queue's lock.
#[derive(Default)]
struct Lanes {
    first: Option<Width>,
    second_running: bool,
}

/// The requests waiting for an instance, shared by the handles and the instances.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a request arrives or the queue closes.
    changed: Condvar,
    /// Wake every waiting thread on a push: a split instance's second lane may not
    /// take the request, and must not be the only one woken.
    wake_all: bool,
}

#[derive(Default)]
struct QueueState {
    waiting: VecDeque<Pending>,
    closed: bool,
    lanes: Lanes,
}

/// What an instance gets from [`Queue::next_batch`].
enum Next {
    Batch(Vec<Pending>, Width),
    /// Nothing arrived within the idle timeout.
    Idle,
    /// The queue is closed and empty.
    Closed,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding the lock leaves the queue itself consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a request and wakes an instance; gives it back if the queue is closed.
    fn push(&self, pending: Pending) -> Result<(), Pending> {
        let mut state = self.lock();
        if state.closed {
            return Err(pending);
        }
        state.waiting.push_back(pending);
        drop(state);
        if self.wake_all {
            self.changed.notify_all();
        } else {
            self.changed.notify_one();
        }
        Ok(())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// The next batch for a thread in `role`: the oldest request, plus compatible ones
    /// up to the row limit or delay, and the width it runs at. Waits at most
    /// `idle_timeout` for a request the role may take.
    fn next_batch(&self, config: &BatcherConfig, idle_timeout: Duration, role: Role) -> Next {
        let mut state = self.lock();
        let idle_deadline = Instant::now() + idle_timeout;
        loop {
            let may_take = role != Role::Second || state.lanes.first == Some(Width::Half);
            if may_take && !state.waiting.is_empty() {
                break;
            }
            // What is still queued at close is the first lane's to answer.
            if state.closed && (state.waiting.is_empty() || role == Role::Second) {
                return Next::Closed;
            }
            let now = Instant::now();
            if now >= idle_deadline {
                return Next::Idle;
            }
            state = self.wait(state, idle_deadline - now);
        }
        // A half merges at most half of `max_batch_size`: on half the threads, that
        // takes about as long as a full batch on all of them, so splitting does not
        // lengthen the wait of the requests in a batch.
        let half_limit = config.max_batch_size.div_ceil(2);
        let (width, row_limit) = match role {
            Role::Alone => (Width::Whole, config.max_batch_size),
            Role::Second => (Width::Half, half_limit),
            Role::First if state.lanes.second_running || state.waiting.len() > 1 => {
                // Leave half of what waits to the second lane when it is idle.
                let rows_waiting: usize = state.waiting.iter().map(|pending| pending.rows).sum();
                let limit = if state.lanes.second_running {
                    half_limit
                } else {
                    rows_waiting.div_ceil(2).min(half_limit)
                };
                (Width::Half, limit)
            }
            Role::First => (Width::Whole, config.max_batch_size),
        };
        let Some(first) = state.waiting.pop_front() else {
            return Next::Idle;
        };
        match role {
            Role::Alone => {}
            Role::First => state.lanes.first = Some(width),
            Role::Second => state.lanes.second_running = true,
        }
        if role == Role::First && width == Width::Half {
            self.changed.notify_all();
        }
        let batching = config.batched_model && config.max_batch_size > 1;
        let Some(delay) = config.max_queue_delay.filter(|_| batching) else {
            return Next::Batch(vec![first], width);
        };
        let deadline = first.enqueued + delay;
        let mut rows = first.rows;
        let mut batch = vec![first];
        while rows < row_limit {
            if let Some(next) = state.waiting.front() {
                if rows + next.rows > row_limit || !compatible(&batch[0], next) {
                    break;
                }
                rows += next.rows;
                batch.extend(state.waiting.pop_front());
                continue;
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                break;
            }
            state = self.wait(state, deadline - now);
        }
        Next::Batch(batch, width)
    }

    /// A lane's batch has been answered: it runs nothing now.
    fn finished(&self, role: Role) {
        let mut state = self.lock();
        match role {
            Role::Alone => {}
            Role::First => state.lanes.first = None,
            Role::Second => state.lanes.second_running = false,
        }
    }

    fn wait<'a>(
        &self,
        state: MutexGuard<'a, QueueState>,
        timeout: Duration,
    ) -> MutexGuard<'a, QueueState> {
        match self.changed.wait_timeout(state, timeout) {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
}

/// Closes the queue when the last [`Batcher`] clone goes.
struct QueueHandle(Arc<Queue>);

impl Drop for QueueHandle {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Batcher {
    /// Starts the threads that drain the queue: one per separate instance, two for a
    /// split one.
    pub fn start(
        name: &str,
        instances: Instances,
        config: BatcherConfig,
        stats: Arc<ModelStats>,
    ) -> Batcher {
        let queue_capacity = config.queue_capacity.max(1);
        let lanes = match instances {
            Instances::Separate(backends) => backends
                .into_iter()
                .enumerate()
                .map(|(index, backend)| (index.to_string(), Lane::alone(backend)))
                .collect(),
            Instances::Split(SplitInstance {
                whole,
                halves: [first, second],
            }) => vec![
                (
                    "0".to_string(),
                    Lane {
                        role: Role::First,
                        backend: first,
                        whole: Some(whole),
                    },
                ),
                (
                    "0-half".to_string(),
                    Lane {
                        role: Role::Second,
                        backend: second,
                        whole: None,
                    },
                ),
            ],
        };
        let queue = Arc::new(Queue {
            wake_all: lanes.iter().any(|(_, lane)| lane.role != Role::Alone),
            ..Queue::default()
        });
        let mut instances = Vec::new();
        for (suffix, lane) in lanes {
            let queue = queue.clone();
            let stats = stats.clone();
            let config = config.clone();
            let spawned = std::thread::Builder::new()
                .name(thread_name(format!("{name}-{suffix}")))
                .spawn(move || serve_lane(lane, &queue, &config, &stats));
            match spawned {
                Ok(handle) => instances.push(handle),
                Err(error) => tracing::error!(%error, "starting an instance thread"),
            }
        }
        let queue_kib = config
            .queue_bytes
            .div_ceil(1024)
            .clamp(1, Semaphore::MAX_PERMITS);
        Batcher {
            queue: Arc::new(QueueHandle(queue)),
            capacity: Arc::new(Semaphore::new(queue_capacity)),
            queue_capacity,
            bytes: Arc::new(Semaphore::new(queue_kib)),
            queue_kib,
            stats,
            instances: Arc::new(Mutex::new(instances)),
        }
    }

    /// The instance threads (once; later calls get none). Each ends, dropping its
    /// backend, after the last handle is gone and what was queued is answered.
    pub fn take_instances(&self) -> Vec<std::thread::JoinHandle<()>> {
        let mut instances = self
            .instances
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::take(&mut *instances)
    }

    /// Queues one request (inputs in the model's order, validated) and waits for its outputs.
    pub async fn append(&self, inputs: Vec<Tensor>, rows: usize) -> Result<Executed, BatchError> {
        let permit = self
            .capacity
            .clone()
            .try_acquire_owned()
            .map_err(|_| BatchError::QueueFull(self.queue_capacity))?;
        let bytes: usize = inputs.iter().map(|input| input.data.len()).sum();
        let kib = bytes.div_ceil(1024);
        let too_large = || BatchError::TooLarge {
            bytes,
            limit: self.queue_kib * 1024,
        };
        if kib > self.queue_kib {
            return Err(too_large());
        }
        let byte_permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(u32::try_from(kib).map_err(|_| too_large())?)
            .map_err(|_| BatchError::QueueBytesFull {
                held_mib: (self.queue_kib - self.bytes.available_permits()) / 1024,
                limit_mib: self.queue_kib / 1024,
            })?;
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            inputs,
            rows,
            enqueued: Instant::now(),
            reply,
            _permit: permit,
            _bytes: byte_permit,
            _counted: PendingCount::new(&self.stats),
        };
        self.queue.0.push(pending).map_err(|_| BatchError::Closed)?;
        Ok(answer.await.map_err(|_| BatchError::Closed)??)
    }
}

/// A thread draining the queue and what it runs batches on.
struct Lane {
    role: Role,
    /// A separate instance's backend, or the lane's half of a split instance.
    backend: Box<dyn Backend>,
    /// A split instance's session with all of its threads (the first lane's).
    whole: Option<Box<dyn Backend>>,
}

impl Lane {
    fn alone(backend: Box<dyn Backend>) -> Lane {
        Lane {
            role: Role::Alone,
            backend,
            whole: None,
        }
    }
}

/// Tells the queue a lane's batch is done, even if running it panicked.
struct Finished<'a>(&'a Queue, Role);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.finished(self.1);
    }
}

/// An instance's thread: takes batches from the queue and runs them until it closes.
fn serve_lane(lane: Lane, queue: &Queue, config: &BatcherConfig, stats: &ModelStats) {
    let pinning = lane.backend.host_pinning();
    let mut buffers = MergeBuffers::new(pinning.clone());
    // The first idle spell also returns what loading the session freed.
    let mut trimmed = false;
    loop {
        let (batch, width) = match queue.next_batch(config, RELEASE_MEMORY_WHEN_IDLE_FOR, lane.role)
        {
            Next::Batch(batch, width) => (batch, width),
            Next::Idle => {
                if !trimmed {
                    buffers = MergeBuffers::new(pinning.clone());
                    // A split instance's second lane idles whenever the first runs
                    // alone; the first releases, once both are idle.
                    if lane.role != Role::Second {
                        release_free_memory();
                    }
                    trimmed = true;
                }
                continue;
            }
            Next::Closed => return,
        };
        let _finished = Finished(queue, lane.role);
        let now = Instant::now();
        for pending in &batch {
            stats.queue.add(now.duration_since(pending.enqueued));
        }
        let backend = match (width, &lane.whole) {
            (Width::Whole, Some(whole)) => whole.as_ref(),
            _ => lane.backend.as_ref(),
        };
        if width == Width::Half {
            stats
                .half_width_executions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        run_batch(backend, batch, config, stats, &mut buffers);
        trimmed = false;
    }
}

/// Same inputs with the same shapes apart from the batch dimension.
fn compatible(first: &Pending, other: &Pending) -> bool {
    first.inputs.len() == other.inputs.len()
        && first.inputs.iter().zip(&other.inputs).all(|(a, b)| {
            a.name == b.name
                && a.datatype == b.datatype
                && a.shape.len() == b.shape.len()
                && a.shape.get(1..) == b.shape.get(1..)
        })
}

/// Runs on an instance thread: merge, infer, split, answer.
fn run_batch(
    backend: &dyn Backend,
    batch: Vec<Pending>,
    config: &BatcherConfig,
    stats: &ModelStats,
    buffers: &mut MergeBuffers,
) {
    let batched_model = config.batched_model;
    let rows: usize = batch.iter().map(|pending| pending.rows).sum();
    // Padding belongs to dynamic batching: without it every request runs as sent.
    let run_rows = if batched_model && config.max_queue_delay.is_some() {
        config.pad.rows(rows, config.max_batch_size)
    } else {
        rows
    };
    // One request that needs no padding runs on its own buffers, copied nowhere.
    let as_sent = batch.len() == 1 && run_rows == rows;
    let started = Instant::now();
    let merged = if as_sent {
        batch[0].inputs.clone()
    } else {
        buffers.merge(&batch, rows, run_rows)
    };
    stats.compute_input.add(started.elapsed());
    let started = Instant::now();
    let result = backend.infer(Batch { inputs: merged });
    stats.record_batch(if batched_model { rows } else { 1 }, started.elapsed());
    buffers.recycle();
    let outputs = match result {
        Ok(outputs) => outputs.tensors,
        Err(error) => {
            let message = error.to_string();
            let is_input = matches!(error, BackendError::Input(_));
            for pending in batch {
                let error = if is_input {
                    BackendError::Input(message.clone())
                } else {
                    BackendError::Runtime(message.clone())
                };
                let _ = pending.reply.send(Err(error));
            }
            return;
        }
    };
    let started = Instant::now();
    if as_sent {
        if let Some(pending) = batch.into_iter().next() {
            let _ = pending.reply.send(Ok(Executed { outputs }));
        }
    } else {
        let mut offset = 0;
        for pending in batch {
            let reply =
                split(&outputs, offset, pending.rows, run_rows).map(|outputs| Executed { outputs });
            offset += pending.rows;
            let _ = pending.reply.send(reply);
        }
    }
    stats.compute_output.add(started.elapsed());
}

/// An instance's buffers for merged inputs, kept from one batch to the next.
///
/// A merged batch of YOLOv8n images is 5 MB a row; glibc maps buffers that large
/// afresh each time, so the kernel zeroed every page of every merge again (about
/// 15 ms of a 3-image batch's merge on two cores). Dropped when the instance idles.
/// For a CUDA instance the buffers are also page-locked (see
/// [`crate::backend::cuda_host`]), which is only worth it because they are kept.
struct MergeBuffers {
    spare: Vec<HostBuffer>,
    /// Buffers lent to the batch running now, taken back by [`MergeBuffers::recycle`].
    lent: Vec<Arc<HostBuffer>>,
    pinning: Option<Arc<dyn HostPinning>>,
}

/// One merge buffer, page-locked while `pinned_by` is set.
struct HostBuffer {
    bytes: Box<[u8]>,
    pinned_by: Option<Arc<dyn HostPinning>>,
}

impl HostBuffer {
    fn new(len: usize, pinning: Option<&Arc<dyn HostPinning>>) -> HostBuffer {
        let mut bytes = vec![0u8; len].into_boxed_slice();
        let pinned_by = pinning.filter(|pinning| pinning.pin(&mut bytes)).cloned();
        HostBuffer { bytes, pinned_by }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        if let Some(pinning) = self.pinned_by.take() {
            pinning.unpin(&mut self.bytes);
        }
    }
}

/// A merge buffer seen as the bytes of a tensor; the buffer lives while any view does.
struct SharedBuffer(Arc<HostBuffer>);

impl AsRef<[u8]> for SharedBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes
    }
}

impl MergeBuffers {
    fn new(pinning: Option<Arc<dyn HostPinning>>) -> MergeBuffers {
        MergeBuffers {
            spare: Vec::new(),
            lent: Vec::new(),
            pinning,
        }
    }

    /// Concatenates each input along the batch dimension, then zero rows up to `run_rows`.
    fn merge(&mut self, batch: &[Pending], rows: usize, run_rows: usize) -> Vec<Tensor> {
        let first = &batch[0];
        first
            .inputs
            .iter()
            .enumerate()
            .map(|(index, template)| {
                let total: usize = batch.iter().map(|p| p.inputs[index].data.len()).sum();
                let padding = total / rows.max(1) * (run_rows - rows);
                let len = total + padding;
                let mut buffer = self.buffer(len);
                let (requests, pad) = buffer.bytes[..len].split_at_mut(total);
                let parts: Vec<&[u8]> = batch.iter().map(|p| &p.inputs[index].data[..]).collect();
                concatenate(&parts, requests);
                pad.fill(0);
                let buffer = Arc::new(buffer);
                self.lent.push(buffer.clone());
                let mut shape = template.shape.clone();
                if let Some(first_dim) = shape.first_mut() {
                    *first_dim = run_rows as i64;
                }
                Tensor {
                    name: template.name.clone(),
                    datatype: template.datatype,
                    shape,
                    data: Bytes::from_owner(SharedBuffer(buffer)).slice(..len),
                }
            })
            .collect()
    }

    /// A spare buffer of at least `len` bytes, or a new one (a smaller spare is freed).
    fn buffer(&mut self, len: usize) -> HostBuffer {
        match self.spare.iter().position(|spare| spare.bytes.len() >= len) {
            Some(index) => self.spare.swap_remove(index),
            None => {
                self.spare.pop();
                HostBuffer::new(len, self.pinning.as_ref())
            }
        }
    }

    /// Takes back the buffers of the last merge that nothing else holds any more
    /// (one still held is freed by its last holder).
    fn recycle(&mut self) {
        for buffer in self.lent.drain(..) {
            if let Ok(buffer) = Arc::try_unwrap(buffer) {
                self.spare.push(buffer);
            }
        }
    }
}

/// `name` fit to name a thread: a NUL byte (which a ModelMesh model id may hold)
/// would make `std::thread::Builder::spawn` panic, so it becomes `?`.
pub(crate) fn thread_name(name: String) -> String {
    name.replace('\0', "?")
}

/// Batches at least this large are copied by several threads at once.
const PARALLEL_COPY_BYTES: usize = 8 << 20;

/// Copies `parts` one after the other into `into` (exactly their total length).
///
/// A large batch is split between threads, a run of whole parts each: one core copies
/// 5-10 GB/s, so merging eight 640x640 images (39 MB) alone took milliseconds of
/// every batch while the model's device sat idle.
fn concatenate(parts: &[&[u8]], into: &mut [u8]) {
    // Asked once: `available_parallelism` reads the cgroup's CPU quota from files.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if into.len() < PARALLEL_COPY_BYTES || parts.len() < 2 {
        copy_in_order(parts, into);
        return;
    }
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from));
    let threads = cores.min(parts.len());
    if threads < 2 {
        copy_in_order(parts, into);
        return;
    }
    std::thread::scope(|scope| {
        let mut rest = into;
        for group in parts.chunks(parts.len().div_ceil(threads)) {
            let bytes: usize = group.iter().map(|part| part.len()).sum();
            let (to, after) = rest.split_at_mut(bytes);
            rest = after;
            scope.spawn(move || copy_in_order(group, to));
        }
    });
}

fn copy_in_order(parts: &[&[u8]], into: &mut [u8]) {
    let mut rest = into;
    for part in parts {
        let (to, after) = rest.split_at_mut(part.len());
        to.copy_from_slice(part);
        rest = after;
    }
}

/// The rows `offset..offset + rows` of every output.
fn split(
    outputs: &[Tensor],
    offset: usize,
    rows: usize,
    total_rows: usize,
) -> Result<Vec<Tensor>, BackendError> {
    outputs
        .iter()
        .map(|output| {
            if output.shape.first() != Some(&(total_rows as i64)) || total_rows == 0 {
                return Err(BackendError::Runtime(format!(
                    "output {} has shape {:?}, not {total_rows} rows: the model cannot be batched",
                    output.name, output.shape
                )));
            }
            let row_bytes = output.data.len() / total_rows;
            let mut shape = output.shape.clone();
            shape[0] = rows as i64;
            let data: Bytes = output
                .data
                .slice(offset * row_bytes..(offset + rows) * row_bytes);
            Ok(Tensor {
                name: output.name.clone(),
                datatype: output.datatype,
                shape,
                data,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::backend::Outputs;

    /// Doubles every FP32 value and records the batch sizes it saw.
    struct Doubler {
        seen: Arc<Mutex<Vec<i64>>>,
        delay: Duration,
    }

    impl Backend for Doubler {
        fn infer(&self, batch: Batch) -> Result<Outputs, BackendError> {
            std::thread::sleep(self.delay);
            if let Ok(mut seen) = self.seen.lock() {
                seen.push(batch.inputs[0].shape[0]);
            }
            Ok(doubled(&batch))
        }
    }

    fn doubled(batch: &Batch) -> Outputs {
        let input = &batch.inputs[0];
        let values: Vec<f32> = input.to_f32().unwrap_or_default();
        let doubled: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
        Outputs {
            tensors: vec![Tensor::from_f32("y", input.shape.clone(), &doubled)],
        }
    }

    /// One call of a [`Traced`] backend: which session, and when it ran.
    #[derive(Clone, Debug)]
    struct Call {
        session: &'static str,
        rows: i64,
        began: Instant,
        ended: Instant,
    }

    /// Doubles like [`Doubler`], taking `delay`, and logs its calls.
    struct Traced {
        session: &'static str,
        delay: Duration,
        calls: Arc<Mutex<Vec<Call>>>,
    }

    impl Backend for Traced {
        fn infer(&self, batch: Batch) -> Result<Outputs, BackendError> {
            let began = Instant::now();
            std::thread::sleep(self.delay);
            if let Ok(mut calls) = self.calls.lock() {
                calls.push(Call {
                    session: self.session,
                    rows: batch.inputs[0].shape[0],
                    began,
                    ended: Instant::now(),
                });
            }
            Ok(doubled(&batch))
        }
    }

    /// A split instance of [`Traced`] sessions ("whole", "half 0", "half 1").
    fn start_split(config: BatcherConfig, delay: Duration) -> (Batcher, Arc<Mutex<Vec<Call>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let traced = |session| -> Box<dyn Backend> {
            Box::new(Traced {
                session,
                delay,
                calls: calls.clone(),
            })
        };
        let instance = SplitInstance {
            whole: traced("whole"),
            halves: [traced("half 0"), traced("half 1")],
        };
        let batcher = Batcher::start(
            "test",
            Instances::Split(instance),
            config,
            Arc::new(ModelStats::default()),
        );
        (batcher, calls)
    }

    fn start(config: BatcherConfig, delay: Duration) -> (Batcher, Arc<Mutex<Vec<i64>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let backend = Doubler {
            seen: seen.clone(),
            delay,
        };
        let batcher = Batcher::start(
            "test",
            Instances::Separate(vec![Box::new(backend)]),
            config,
            Arc::new(ModelStats::default()),
        );
        (batcher, seen)
    }

    fn config(max_batch_size: usize, delay_ms: Option<u64>, capacity: usize) -> BatcherConfig {
        BatcherConfig {
            max_batch_size,
            max_queue_delay: delay_ms.map(Duration::from_millis),
            queue_capacity: capacity,
            queue_bytes: 1 << 20,
            batched_model: true,
            pad: PadBatch::None,
        }
    }

    /// Sends requests of `rows` rows each at once; checks every answer and the batch sizes.
    async fn check(batcher: &Batcher, rows: &[usize]) {
        let mut tasks = Vec::new();
        for (request, &n) in rows.iter().enumerate() {
            let batcher = batcher.clone();
            let values: Vec<f32> = (0..n * 2).map(|i| (request * 100 + i) as f32).collect();
            tasks.push(tokio::spawn(async move {
                let input = Tensor::from_f32("x", vec![n as i64, 2], &values);
                let executed = batcher.append(vec![input], n).await;
                (values, executed)
            }));
        }
        for task in tasks {
            let (values, executed) = task.await.expect("task");
            let executed = executed.expect("executed");
            let doubled: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
            assert_eq!(executed.outputs[0].to_f32(), Some(doubled));
            assert_eq!(executed.outputs[0].shape, vec![values.len() as i64 / 2, 2]);
        }
    }

    #[tokio::test]
    async fn concurrent_requests_are_merged_and_split_back() {
        let (batcher, seen) = start(config(8, Some(200), 64), Duration::from_millis(0));
        check(&batcher, &[1, 2, 1, 3, 1]).await;
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.iter().sum::<i64>(), 8, "{seen:?}");
        assert!(seen.len() < 5, "some requests share a call: {seen:?}");
    }

    #[tokio::test]
    async fn batches_never_exceed_the_maximum() {
        let (batcher, seen) = start(config(4, Some(100), 64), Duration::from_millis(0));
        check(&batcher, &[3, 3, 2, 1, 4]).await;
        let seen = seen.lock().expect("lock").clone();
        assert!(seen.iter().all(|&rows| rows <= 4), "{seen:?}");
        assert_eq!(seen.iter().sum::<i64>(), 13);
    }

    #[tokio::test]
    async fn padded_batches_run_padded_and_answer_only_their_rows() {
        let mut padded = config(8, Some(200), 64);
        padded.pad = PadBatch::PowerOfTwo;
        let (batcher, seen) = start(padded, Duration::from_millis(0));
        check(&batcher, &[1, 2]).await;
        check(&batcher, &[3]).await;
        let seen = seen.lock().expect("lock").clone();
        assert!(
            seen.iter().all(|rows| [1, 2, 4].contains(rows)),
            "every run is a power of two: {seen:?}"
        );
        assert_eq!(seen.last(), Some(&4), "3 rows alone run as 4: {seen:?}");
    }

    #[tokio::test]
    async fn without_dynamic_batching_each_request_runs_alone() {
        let (batcher, seen) = start(config(8, None, 64), Duration::from_millis(0));
        check(&batcher, &[1, 2, 1]).await;
        let mut seen = seen.lock().expect("lock").clone();
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 1, 2]);
    }

    #[tokio::test]
    async fn a_split_instance_runs_a_lone_request_on_all_of_its_threads() {
        let (batcher, calls) = start_split(config(8, Some(0), 64), Duration::from_millis(5));
        for _ in 0..3 {
            check(&batcher, &[1]).await;
        }
        let sessions: Vec<_> = calls
            .lock()
            .expect("lock")
            .iter()
            .map(|c| c.session)
            .collect();
        assert_eq!(sessions, vec!["whole"; 3]);
    }

    #[tokio::test]
    async fn a_split_instance_runs_two_halves_at_once_while_requests_wait_and_never_with_the_whole()
    {
        // No merging, so that eight requests make eight calls.
        let (batcher, calls) = start_split(config(8, None, 64), Duration::from_millis(30));
        check(&batcher, &[1, 2, 1, 1, 3, 1, 1, 2]).await;
        let calls = calls.lock().expect("lock").clone();
        assert_eq!(calls.len(), 8, "{calls:?}");
        let overlap = |a: &Call, b: &Call| a.began < b.ended && b.began < a.ended;
        let mut halves_together = 0;
        for (i, a) in calls.iter().enumerate() {
            for b in &calls[i + 1..] {
                if overlap(a, b) {
                    assert!(
                        a.session != "whole" && b.session != "whole" && a.session != b.session,
                        "only the two halves run at once: {a:?} {b:?}"
                    );
                    halves_together += 1;
                }
            }
        }
        assert!(
            halves_together >= 2,
            "the halves shared the waiting requests: {calls:?}"
        );
    }

    #[tokio::test]
    async fn a_half_merges_at_most_half_of_the_batch_limit() {
        let (batcher, calls) = start_split(config(8, Some(50), 64), Duration::from_millis(20));
        check(&batcher, &[1; 12]).await;
        let calls = calls.lock().expect("lock").clone();
        assert_eq!(calls.iter().map(|c| c.rows).sum::<i64>(), 12, "{calls:?}");
        for call in &calls {
            let limit = if call.session == "whole" { 8 } else { 4 };
            assert!(call.rows <= limit, "{call:?}");
        }
    }

    /// Requests of one row with one input `x` of `values`, sharing their permits.
    fn one_row_requests(values: &[&[f32]]) -> Vec<Pending> {
        let permits = Arc::new(Semaphore::new(2 * values.len()));
        let stats = Arc::new(ModelStats::default());
        values
            .iter()
            .map(|values| Pending {
                inputs: vec![Tensor::from_f32("x", vec![1, values.len() as i64], values)],
                rows: 1,
                enqueued: Instant::now(),
                reply: oneshot::channel::<Result<Executed, BackendError>>().0,
                _permit: permits.clone().try_acquire_owned().expect("permit"),
                _bytes: permits.clone().try_acquire_owned().expect("permit"),
                _counted: PendingCount::new(&stats),
            })
            .collect()
    }

    #[test]
    fn merged_inputs_reuse_their_buffer_once_the_run_lets_go() {
        let mut buffers = MergeBuffers::new(None);
        let batch = one_row_requests(&[&[1.0, 1.0], &[2.0, 2.0]]);
        let merged = buffers.merge(&batch, 2, 2);
        assert_eq!(merged[0].shape, vec![2, 2]);
        assert_eq!(merged[0].to_f32(), Some(vec![1.0, 1.0, 2.0, 2.0]));
        let first_buffer = merged[0].data.as_ptr();
        drop(merged);
        buffers.recycle();
        assert_eq!(buffers.spare.len(), 1);
        let merged = buffers.merge(&batch, 2, 2);
        assert_eq!(merged[0].data.as_ptr(), first_buffer);
        assert_eq!(merged[0].to_f32(), Some(vec![1.0, 1.0, 2.0, 2.0]));
        // Still held elsewhere when the run ends: left to its holder.
        let held = merged[0].data.clone();
        drop(merged);
        buffers.recycle();
        assert!(buffers.spare.is_empty());
        assert_eq!(held.len(), 16);
    }

    #[test]
    fn a_recycled_buffer_is_overwritten_and_its_padding_zeroed() {
        let mut buffers = MergeBuffers::new(None);
        let three = one_row_requests(&[&[1.0], &[2.0], &[3.0]]);
        let merged = buffers.merge(&three, 3, 3);
        assert_eq!(merged[0].to_f32(), Some(vec![1.0, 2.0, 3.0]));
        drop(merged);
        buffers.recycle();
        // Shorter, then padded past the old length: no byte of the last batch remains.
        let one = one_row_requests(&[&[7.0]]);
        let merged = buffers.merge(&one, 1, 2);
        assert_eq!(merged[0].shape, vec![2, 1]);
        assert_eq!(merged[0].to_f32(), Some(vec![7.0, 0.0]));
        drop(merged);
        buffers.recycle();
        let merged = buffers.merge(&one, 1, 4);
        assert_eq!(merged[0].to_f32(), Some(vec![7.0, 0.0, 0.0, 0.0]));
    }

    /// Counts what is pinned; stands in for CUDA's page-locking, which needs a GPU.
    #[derive(Default)]
    struct CountingPinning {
        pinned_bytes: std::sync::atomic::AtomicUsize,
        pins: std::sync::atomic::AtomicUsize,
    }

    impl HostPinning for CountingPinning {
        fn pin(&self, data: &mut [u8]) -> bool {
            self.pinned_bytes
                .fetch_add(data.len(), std::sync::atomic::Ordering::SeqCst);
            self.pins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            true
        }

        fn unpin(&self, data: &mut [u8]) {
            self.pinned_bytes
                .fetch_sub(data.len(), std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn pinned_buffers_are_pinned_once_and_unpinned_before_they_are_freed() {
        use std::sync::atomic::Ordering::SeqCst;
        let counting = Arc::new(CountingPinning::default());
        let mut buffers = MergeBuffers::new(Some(counting.clone() as Arc<dyn HostPinning>));
        let batch = one_row_requests(&[&[1.0, 2.0], &[3.0, 4.0]]);
        for _ in 0..3 {
            let merged = buffers.merge(&batch, 2, 2);
            assert_eq!(merged[0].to_f32(), Some(vec![1.0, 2.0, 3.0, 4.0]));
            drop(merged);
            buffers.recycle();
        }
        assert_eq!(
            counting.pins.load(SeqCst),
            1,
            "kept buffers are pinned once"
        );
        assert_eq!(counting.pinned_bytes.load(SeqCst), 16);
        // A bigger batch replaces the buffer: the old one is unpinned as it goes.
        let merged = buffers.merge(&batch, 2, 4);
        assert_eq!(counting.pinned_bytes.load(SeqCst), 32);
        // A buffer still held when the run ends is unpinned by its last holder.
        let held = merged[0].data.clone();
        drop(merged);
        buffers.recycle();
        assert_eq!(counting.pinned_bytes.load(SeqCst), 32);
        drop(held);
        assert_eq!(counting.pinned_bytes.load(SeqCst), 0);
        let merged = buffers.merge(&batch, 2, 2);
        drop(merged);
        buffers.recycle();
        assert_eq!(counting.pinned_bytes.load(SeqCst), 16);
        drop(buffers);
        assert_eq!(
            counting.pinned_bytes.load(SeqCst),
            0,
            "an idle instance unpins all"
        );
    }

    #[test]
    fn large_batches_are_copied_in_order_by_several_threads() {
        // Parts of uneven size whose bytes say where they belong, over the threshold.
        let sizes = [3 << 20, 1, 5 << 20, 2 << 20, 7];
        let parts: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| vec![index as u8 + 1; size])
            .collect();
        let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let total: usize = sizes.iter().sum();
        assert!(total >= PARALLEL_COPY_BYTES);
        let mut into = vec![0u8; total];
        concatenate(&slices, &mut into);
        assert_eq!(into, parts.concat());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_growing() {
        let (batcher, _) = start(config(1, None, 2), Duration::from_millis(300));
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let batcher = batcher.clone();
            tasks.push(tokio::spawn(async move {
                let input = Tensor::from_f32("x", vec![1, 2], &[1.0, 2.0]);
                batcher.append(vec![input], 1).await.map(|_| ())
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let input = Tensor::from_f32("x", vec![1, 2], &[1.0, 2.0]);
        let refused = batcher.append(vec![input], 1).await;
        assert!(
            matches!(refused, Err(BatchError::QueueFull(2))),
            "{refused:?}"
        );
        for task in tasks {
            task.await.expect("task").expect("the first two run");
        }
    }

    #[tokio::test]
    async fn queued_bytes_are_bounded() {
        let mut small = config(1, None, 64);
        // Room for two requests of 3 KiB, not three.
        small.queue_bytes = 7 * 1024;
        let (batcher, _) = start(small, Duration::from_millis(300));
        let request = || Tensor::from_f32("x", vec![1, 768], &[1.0; 768]);
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (batcher, input) = (batcher.clone(), request());
            tasks.push(tokio::spawn(async move {
                batcher.append(vec![input], 1).await.map(|_| ())
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = batcher.append(vec![request()], 1).await;
        assert!(
            matches!(
                refused,
                Err(BatchError::QueueBytesFull {
                    held_mib: 0,
                    limit_mib: 0
                })
            ),
            "{refused:?}"
        );
        let huge = Tensor::from_f32("x", vec![1, 4096], &[1.0; 4096]);
        let refused = batcher.append(vec![huge], 1).await;
        assert!(
            matches!(refused, Err(BatchError::TooLarge { bytes: 16384, .. })),
            "{refused:?}"
        );
        for task in tasks {
            task.await.expect("task").expect("the first two run");
        }
        // Answered requests give their bytes back.
        batcher
            .append(vec![request()], 1)
            .await
            .expect("room again");
    }
}
