//! The training loop, Ultralytics' `BaseTrainer._do_train` step for step: per-epoch
//! learning-rate factor, warm-up by iteration, gradient accumulation to the nominal
//! batch, clipping at norm 10, EMA after every optimiser step, validation of the EMA
//! each epoch, `results.csv`, plots and checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cardet_augment::{Loader, LoaderConfig};
use cardet_detect::dataset::read_dataset;
use cardet_model::{Detector, Scale};
use tch::{Device, Tensor};

use crate::amp::{Bf16Shadow, GradScaler, head_to_float};
use crate::checkpoint::{self, GRAD_PREFIX, OPTIMIZER_PREFIX, TRAIN_PREFIX, TrainState};
use crate::config::TrainConfig;
use crate::ema::ModelEma;
use crate::hooks::{GradientSync, TrainObserver, TrainSummary};
use crate::loss::{DetectionLoss, LOSS_NAMES};
use crate::optim::{GroupKind, Optimizer, OptimizerName, choose_optimizer};
use crate::schedule::{LrSchedule, Warmup, nominal_accumulate, scaled_weight_decay};
use crate::validate::{ValOutput, validate};
use crate::{Error, plots};

/// Ultralytics' `clip_grad_norm_(max_norm=10.0)`.
pub const MAX_GRAD_NORM: f64 = 10.0;
/// Validation images drawn with their boxes at the end of a run.
const SAMPLE_IMAGES: usize = 3;
/// Test hook: a folder where every rank writes its trainable weights after every
/// optimiser step (`rank<R>_step<N>.safetensors`), so multi-process tests can compare
/// the replicas with each other and with a single process.
pub const DEBUG_STEP_WEIGHTS_ENV: &str = "CARDET_DEBUG_STEP_WEIGHTS";
/// Test hook: when set, the training forward runs BatchNorm on its running statistics
/// (eval mode), so an update does not depend on how images are grouped into batches:
/// the accumulation check compares 4 batches of 2 with one batch of 8 this way.
pub const DEBUG_BN_EVAL_ENV: &str = "CARDET_DEBUG_BN_EVAL";

/// What plugs into a run.
pub struct Hooks<'a> {
    pub sync: &'a dyn GradientSync,
    pub observer: &'a mut dyn TrainObserver,
    /// Raised (by a signal handler) to stop after the current batch; the last
    /// completed epoch's checkpoint stays resumable.
    pub stop: Option<Arc<AtomicBool>>,
}

/// `cpu`, `cuda`, `cuda:N` or a bare GPU index, as Ultralytics' `device`.
pub fn parse_device(text: &str) -> Result<Device, Error> {
    let text = text.trim().to_ascii_lowercase();
    let device = match text.as_str() {
        "cpu" | "" => return Ok(Device::Cpu),
        "cuda" => Device::Cuda(0),
        other => {
            let index = other.strip_prefix("cuda:").unwrap_or(other);
            Device::Cuda(index.parse().map_err(|_| {
                Error::Config(format!("device {text:?}: expected cpu, cuda or cuda:N"))
            })?)
        }
    };
    if let Device::Cuda(index) = device
        && (!cardet_model::libtorch::load_cuda_backend()
            || index >= tch::Cuda::device_count() as usize)
    {
        return Err(Error::Config(format!(
            "device {text:?}: this libtorch sees {} CUDA devices",
            tch::Cuda::device_count()
        )));
    }
    Ok(device)
}

/// Ultralytics' `Detect.bias_init`: box biases 2.0 and class biases for about 5
/// objects per 640 px image, so a fresh head starts near the data's prior instead of
/// at 50 % confidence everywhere.
pub fn init_detect_biases(detector: &Detector) {
    let num_classes = detector.names.len() as f64;
    let head = &detector.net.detect;
    tch::no_grad(|| {
        for (level, stride) in cardet_model::yolov8::STRIDES.iter().enumerate() {
            if let Some(bias) = &head.cv2[level].conv2.bs {
                let _ = bias.shallow_clone().fill_(2.0);
            }
            if let Some(bias) = &head.cv3[level].conv2.bs {
                let prior = (5.0 / num_classes / (640.0 / *stride as f64).powi(2)).ln();
                let _ = bias.shallow_clone().fill_(prior);
            }
        }
    });
}

/// Builds the model a fresh run starts from: a scale letter trains from scratch, a
/// checkpoint is loaded (tensors whose shape does not fit the dataset's class count,
/// the class heads, keep their fresh initialisation, as Ultralytics transfers weights).
pub fn initial_model(model: &str, names: &[String], device: Device) -> Result<Detector, Error> {
    if let Some(scale) = Scale::from_letter(model) {
        let detector = Detector::new(scale, names.to_vec(), device);
        init_detect_biases(&detector);
        return Ok(detector);
    }
    let path = Path::new(model);
    let source = checkpoint::load_detector(path, device)?;
    if source.names.len() == names.len() {
        let mut detector = source;
        detector.names = names.to_vec();
        return Ok(detector);
    }
    let detector = Detector::new(source.net.config.scale, names.to_vec(), device);
    init_detect_biases(&detector);
    let sources = source.vs.variables();
    tch::no_grad(|| {
        for (name, variable) in detector.vs.variables() {
            if let Some(tensor) = sources.get(&name)
                && tensor.size() == variable.size()
            {
                variable.shallow_clone().f_copy_(tensor)?;
            }
        }
        Ok::<(), Error>(())
    })?;
    Ok(detector)
}

/// `<project>/<name>`, or `<name>2`, `<name>3`, ... when it exists (Ultralytics'
/// `increment_path`).
pub fn unique_run_dir(config: &TrainConfig) -> PathBuf {
    let base = config.run_dir();
    if !base.exists() {
        return base;
    }
    (2..)
        .map(|n| config.project.join(format!("{}{n}", config.name)))
        .find(|candidate| !candidate.exists())
        .unwrap_or(base)
}

/// The `results.csv` columns, Ultralytics' names and order.
pub fn result_columns() -> Vec<String> {
    let mut columns = vec!["epoch".to_string(), "time".to_string()];
    columns.extend(LOSS_NAMES.iter().map(|n| format!("train/{n}")));
    columns.extend(
        ["precision(B)", "recall(B)", "mAP50(B)", "mAP50-95(B)"]
            .iter()
            .map(|n| format!("metrics/{n}")),
    );
    columns.extend(LOSS_NAMES.iter().map(|n| format!("val/{n}")));
    columns.extend((0..3).map(|i| format!("lr/pg{i}")));
    columns
}

/// Trains; `resume` is a `last.safetensors` to continue exactly where it stopped (its
/// saved settings win over `config`, except `device` and `workers`).
pub fn train(
    config: TrainConfig,
    resume: Option<&Path>,
    hooks: Hooks<'_>,
) -> Result<TrainSummary, Error> {
    let Hooks {
        sync,
        observer,
        stop,
    } = hooks;
    let resumed = match resume {
        Some(path) => Some((path.to_path_buf(), checkpoint::read_state(path)?)),
        None => None,
    };
    let config = match &resumed {
        Some((_, state)) => TrainConfig {
            device: config.device.clone(),
            workers: config.workers,
            ..state.args.clone()
        },
        None => config,
    };
    config.validate()?;
    let device = parse_device(&config.device)?;
    let (rank, world) = (sync.rank(), sync.world_size().max(1));
    let lead = rank == 0;

    let (dataset, _diagnostics) = read_dataset(&config.data)?;
    let names = dataset.data.names.clone();
    if dataset.train.is_empty() {
        return Err(Error::Config(format!(
            "{}: the train split has no images",
            config.data.display()
        )));
    }
    tch::manual_seed(config.seed as i64);
    if config.deterministic {
        tch::Cuda::cudnn_set_benchmark(false);
    }

    // Model, EMA, optimiser.
    let model = match &resumed {
        Some((path, _)) => {
            let metadata = cardet_model::weights::read_metadata(path)?;
            let scale = metadata.scale.ok_or_else(|| Error::Checkpoint {
                path: path.clone(),
                reason: "no scale in the metadata".into(),
            })?;
            Detector::new(scale, names.clone(), device)
        }
        None => initial_model(&config.model, &names, device)?,
    };
    let per_rank_batch = (config.batch / world).max(1);
    let train_loader = Loader::new(
        dataset.train.clone(),
        LoaderConfig {
            imgsz: config.imgsz,
            batch_size: per_rank_batch,
            workers: config.workers,
            prefetch_batches: 4,
            seed: config.seed,
            shuffle: true,
            augment: Some(config.augment.clone()),
            rect: false,
            rank,
            world_size: world,
            drop_last: false,
        },
    )?;
    let val_loader = if lead && !dataset.val.is_empty() {
        Some(Loader::new(
            dataset.val.clone(),
            LoaderConfig {
                workers: config.workers,
                ..LoaderConfig::val(config.imgsz, per_rank_batch * 2)
            },
        )?)
    } else {
        None
    };
    let batches_per_epoch = train_loader.batches_per_epoch().max(1);
    let mut epochs = config.epochs.max(1);
    let mut target_accumulate = config
        .accumulate
        .unwrap_or_else(|| nominal_accumulate(config.batch));
    if config.accumulate.is_none() && config.time.is_none() {
        target_accumulate = target_accumulate.min(batches_per_epoch * epochs);
    }
    let weight_decay = scaled_weight_decay(config.weight_decay, config.batch, target_accumulate);
    let iterations =
        (dataset.train.len() as f64 / config.batch.max(64) as f64).ceil() * epochs as f64;
    let choice = choose_optimizer(
        config.optimizer,
        config.lr0,
        config.momentum,
        names.len(),
        iterations,
    );
    let mut optimizer = Optimizer::new(&choice, model.vs.variables(), weight_decay)?;
    if lead {
        // What `auto` chose matters (AdamW's fitted rate falls with the class count).
        let groups: Vec<String> = optimizer
            .groups
            .iter()
            .map(|group| {
                format!(
                    "{} {:?}(decay={})",
                    group.params.len(),
                    group.kind,
                    group.weight_decay
                )
            })
            .collect();
        tracing::info!(
            "optimizer: {}(lr={}, momentum={}) with parameter groups {}; accumulate {}",
            choice.name,
            choice.lr0,
            choice.momentum,
            groups.join(", "),
            target_accumulate
        );
    }
    let mut ema = ModelEma::new(&model)?;
    let criterion = DetectionLoss::new(names.len() as i64, config.gains);
    let amp_cuda = config.amp && device.is_cuda();
    let mut scaler = GradScaler::new(amp_cuda);
    let bf16_shadow = if config.amp && !device.is_cuda() {
        Some(Bf16Shadow::new(&model)?)
    } else {
        None
    };
    let debug_weights_dir = std::env::var_os(DEBUG_STEP_WEIGHTS_ENV).map(PathBuf::from);
    let batch_statistics = std::env::var_os(DEBUG_BN_EVAL_ENV).is_none();

    let mut start_epoch = 0;
    let mut last_opt_step: i64 = -1;
    let mut best_fitness: Option<f64> = None;
    let mut best_epoch = 0;
    let mut seconds_before = 0.0;
    let run_dir = match &resumed {
        Some((path, state)) => {
            let tensors = checkpoint::read_tensors(path)?;
            checkpoint::copy_into(&model, &tensors, TRAIN_PREFIX, path)?;
            checkpoint::copy_into(&ema.model, &tensors, "", path)?;
            optimizer.load_state_tensors(tensors.iter().filter_map(|(key, tensor)| {
                key.strip_prefix(OPTIMIZER_PREFIX)
                    .map(|name| (name.to_string(), tensor.shallow_clone()))
            }))?;
            restore_pending_grads(&optimizer, &tensors)?;
            optimizer.steps = state.optimizer_steps;
            ema.updates = state.ema_updates;
            if let Some(loss_scale) = state.loss_scale {
                scaler.restore(loss_scale);
            }
            start_epoch = state.epoch;
            last_opt_step = state.last_opt_step;
            best_fitness = state.best_fitness;
            best_epoch = state.best_epoch;
            epochs = state.epochs;
            seconds_before = state.train_seconds;
            path.parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .ok_or_else(|| Error::Checkpoint {
                    path: path.clone(),
                    reason: "expected <run>/weights/last.safetensors".into(),
                })?
        }
        None => unique_run_dir(&config),
    };
    // Rank 0's weights and BatchNorm buffers, in name order (the same on every rank);
    // rank 0's EMA was made from exactly these.
    let mut variables: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let variables: Vec<Tensor> = variables.into_iter().map(|(_, t)| t).collect();
    sync.broadcast_parameters(&variables)?;

    let weights_dir = run_dir.join("weights");
    let last_path = weights_dir.join("last.safetensors");
    let best_path = weights_dir.join("best.safetensors");
    let csv_path = run_dir.join("results.csv");
    let mut rows: Vec<Vec<(String, f64)>> = Vec::new();
    if lead {
        create_dir(&weights_dir)?;
        write_file(&run_dir.join("args.yaml"), config.to_yaml().as_bytes())?;
        if resumed.is_some() {
            rows = read_results_csv(&csv_path)?;
        } else {
            write_file(
                &csv_path,
                format!("{}\n", result_columns().join(",")).as_bytes(),
            )?;
        }
        let mut params = config.to_params();
        params.insert("save_dir".into(), run_dir.display().to_string());
        observer.on_start(&params);
    }

    let mut schedule = LrSchedule {
        epochs,
        lrf: config.lrf,
        cosine: config.cos_lr,
    };
    let warmup = Warmup {
        iterations: Warmup::iterations(config.warmup_epochs, batches_per_epoch),
        bias_lr: if choice.zero_bias_warmup {
            0.0
        } else {
            config.warmup_bias_lr
        },
        momentum_start: config.warmup_momentum,
        momentum_end: choice.momentum,
    };
    let started = Instant::now();
    let elapsed = |started: &Instant| seconds_before + started.elapsed().as_secs_f64();
    let budget = config.time.map(|hours| hours * 3600.0);
    let mut accumulate = target_accumulate;
    let mut last_metrics: Vec<(String, f64)> = Vec::new();
    let mut val_losses = [0.0; 3];
    let mut stop_reason = "epochs".to_string();
    let mut images_seen = 0usize;
    let mut epochs_completed = start_epoch;
    let mut epoch = start_epoch;

    while epoch < epochs {
        let epoch_started = Instant::now();
        let factor = schedule.factor(epoch);
        for group in &mut optimizer.groups {
            group.lr = group.initial_lr * factor;
        }
        let mosaic = !(config.close_mosaic > 0 && epoch + config.close_mosaic >= epochs);
        let mut running = [0.0f64; 3];
        let mut epoch_images = 0usize;
        let mut interrupted = false;
        let mut out_of_time = false;
        for (i, batch) in train_loader.epoch(epoch as u64, mosaic).enumerate() {
            let batch = batch?;
            let ni = i + batches_per_epoch * epoch;
            if warmup.active(ni) {
                accumulate = warmup.accumulate(ni, target_accumulate);
                for group in &mut optimizer.groups {
                    let start = if group.kind == GroupKind::Bias {
                        warmup.bias_lr
                    } else {
                        0.0
                    };
                    group.lr = warmup.interpolate(ni, start, group.initial_lr * factor);
                    if optimizer.name == OptimizerName::Sgd {
                        group.momentum =
                            warmup.interpolate(ni, warmup.momentum_start, warmup.momentum_end);
                    }
                }
            }
            let images = crate::validate::images_to_tensor(&batch.images, batch.shape, device)?;
            let head = match &bf16_shadow {
                Some(shadow) => shadow.forward(&images)?,
                None if amp_cuda => head_to_float(&tch::autocast(true, || {
                    model.net.forward_t(&images, batch_statistics)
                }))?,
                None => model.net.forward_t(&images, batch_statistics),
            };
            let loss = criterion.compute(&head, &batch.targets)?;
            scaler.scale_loss(&(&loss.total * world as f64)).backward();
            if let Some(shadow) = &bf16_shadow {
                shadow.accumulate_into_master()?;
            }
            let parts = loss.parts();
            for (mean, part) in running.iter_mut().zip(parts) {
                *mean = (*mean * i as f64 + part) / (i + 1) as f64;
            }
            epoch_images += batch.shape[0];

            if ni as i64 - last_opt_step >= accumulate as i64 {
                let grads: Vec<Tensor> = optimizer
                    .parameters()
                    .map(|(_, t)| t.grad())
                    .filter(Tensor::defined)
                    .collect();
                sync.all_reduce_gradients(&grads)?;
                // Every rank unscales the same reduced gradients, so all skip together.
                let finite = scaler.unscale(&grads)?;
                if finite {
                    optimizer.clip_and_step(MAX_GRAD_NORM);
                }
                scaler.update(!finite);
                optimizer.zero_grad();
                ema.update(&model)?;
                if let Some(dir) = &debug_weights_dir {
                    dump_step_weights(dir, rank, optimizer.steps, &optimizer)?;
                }
                last_opt_step = ni as i64;
                if budget.is_some_and(|limit| elapsed(&started) > limit) {
                    out_of_time = true;
                }
            }
            if lead {
                let seconds = epoch_started.elapsed().as_secs_f64().max(1e-9);
                let mut metrics: Vec<(String, f64)> = LOSS_NAMES
                    .iter()
                    .zip(running)
                    .map(|(name, value)| (format!("train/{name}"), value))
                    .collect();
                metrics.extend(learning_rates(&optimizer));
                metrics.push(("epoch".into(), (epoch + 1) as f64));
                metrics.push(("epochs".into(), epochs as f64));
                metrics.push(("batch".into(), (i + 1) as f64));
                metrics.push(("batches".into(), batches_per_epoch as f64));
                metrics.push((
                    "images_per_second".into(),
                    (epoch_images * world) as f64 / seconds,
                ));
                observer.on_step(ni as u64, &metrics);
            }
            if stop
                .as_ref()
                .is_some_and(|flag| flag.load(Ordering::Relaxed))
            {
                interrupted = true;
                break;
            }
            if out_of_time {
                break;
            }
        }
        images_seen += epoch_images;
        if interrupted {
            stop_reason = "stopped".into();
            break;
        }
        epochs_completed = epoch + 1;
        let final_epoch = epoch + 1 >= epochs || out_of_time;
        if lead {
            if let Some(val_loader) = &val_loader
                && (config.val || final_epoch)
            {
                let output = validate(
                    &ema.model.net,
                    &names,
                    &dataset.val,
                    val_loader,
                    device,
                    Some(&criterion),
                    0,
                )?;
                val_losses = output.losses.unwrap_or([f64::NAN; 3]);
                last_metrics = metric_columns(&output);
                let fitness = output.fitness();
                if best_fitness.is_none_or(|best| fitness > best) {
                    best_fitness = Some(fitness);
                    best_epoch = epoch + 1;
                }
            } else if val_loader.is_none() {
                // No val split: Ultralytics' fallback fitness is the negative train loss.
                let fitness = -running.iter().sum::<f64>();
                if best_fitness.is_none_or(|best| fitness > best) {
                    best_fitness = Some(fitness);
                    best_epoch = epoch + 1;
                }
            }
            let mut row: Vec<(String, f64)> = vec![
                ("epoch".into(), (epoch + 1) as f64),
                ("time".into(), elapsed(&started)),
            ];
            row.extend(
                LOSS_NAMES
                    .iter()
                    .zip(running)
                    .map(|(name, value)| (format!("train/{name}"), value)),
            );
            row.extend(last_metrics.iter().cloned());
            row.extend(
                LOSS_NAMES
                    .iter()
                    .zip(val_losses)
                    .map(|(name, value)| (format!("val/{name}"), value)),
            );
            row.extend(learning_rates(&optimizer));
            append_csv_row(&csv_path, &row)?;
            rows.push(row.clone());

            let state = TrainState {
                epoch: epoch + 1,
                step: ((epoch + 1) * batches_per_epoch) as u64,
                last_opt_step,
                optimizer_steps: optimizer.steps,
                ema_updates: ema.updates,
                best_fitness,
                best_epoch,
                epochs,
                train_seconds: elapsed(&started),
                seed: config.seed,
                optimizer: choice.name.to_string(),
                lr0: choice.lr0,
                momentum: choice.momentum,
                zero_bias_warmup: choice.zero_bias_warmup,
                args: config.clone(),
                loss_scale: scaler.state(),
            };
            let pending: Vec<(String, Tensor)> = optimizer
                .parameters()
                .filter(|(_, t)| t.grad().defined())
                .map(|(name, t)| (name.clone(), t.grad()))
                .collect();
            checkpoint::save(
                &last_path,
                &ema.model,
                &model,
                &optimizer.state_tensors(),
                &pending,
                &state,
            )?;
            write_json(&weights_dir.join("last.json"), &state)?;
            if best_epoch == epoch + 1 {
                std::fs::copy(&last_path, &best_path).map_err(|source| Error::Write {
                    path: best_path.clone(),
                    source,
                })?;
                write_json(&weights_dir.join("best.json"), &state)?;
            }
            if config.plots {
                plots::results_png(&rows, &run_dir.join("results.png"))?;
            }
            observer.on_epoch_end((epoch + 1) as u64, &row);
            observer.on_artifact(&last_path);
            observer.on_artifact(&csv_path);
        }
        sync.barrier()?;

        if let Some(limit) = budget {
            // Ultralytics' time mode: re-plan the epochs from the mean epoch time.
            let done = epoch + 1 - start_epoch;
            let mean_epoch = started.elapsed().as_secs_f64() / done.max(1) as f64;
            epochs = ((limit / mean_epoch.max(1e-9)).ceil() as usize).max(1);
            schedule.epochs = epochs;
            if out_of_time || elapsed(&started) > limit {
                stop_reason = "time".into();
                break;
            }
        }
        epoch += 1;
    }

    let train_seconds = elapsed(&started);
    let mut metrics: BTreeMap<String, f64> = last_metrics.iter().cloned().collect();
    if lead && stop_reason != "stopped" && best_path.exists() {
        // The final evaluation of `best` with the pictures, then strip both checkpoints
        // to EMA weights as Ultralytics' `strip_optimizer` does.
        let best = checkpoint::load_detector(&best_path, device)?;
        if let Some(val_loader) = &val_loader {
            let output = validate(
                &best.net,
                &names,
                &dataset.val,
                val_loader,
                device,
                None,
                SAMPLE_IMAGES,
            )?;
            metrics = metric_columns(&output).into_iter().collect();
            if config.plots {
                write_val_plots(&run_dir, &output, &names, observer)?;
            }
        }
        checkpoint::strip(&last_path)?;
        checkpoint::strip(&best_path)?;
        observer.on_artifact(&best_path);
    }
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        epochs_completed,
        best_epoch,
        best_fitness: best_fitness.unwrap_or(0.0),
        metrics,
        last: last_path,
        best: best_path,
        train_seconds,
        images_per_second: (images_seen * world) as f64 / started.elapsed().as_secs_f64().max(1e-9),
        stop_reason,
    };
    if lead {
        write_json(&run_dir.join("summary.json"), &summary)?;
        observer.on_end(&summary);
    }
    Ok(summary)
}

/// `metrics/precision(B)`, `metrics/recall(B)`, `metrics/mAP50(B)`, `metrics/mAP50-95(B)`.
pub fn metric_columns(output: &ValOutput) -> Vec<(String, f64)> {
    let report = &output.report;
    vec![
        ("metrics/precision(B)".into(), report.precision),
        ("metrics/recall(B)".into(), report.recall),
        ("metrics/mAP50(B)".into(), report.map50),
        ("metrics/mAP50-95(B)".into(), report.map50_95),
    ]
}

fn learning_rates(optimizer: &Optimizer) -> Vec<(String, f64)> {
    optimizer
        .groups
        .iter()
        .enumerate()
        .map(|(i, group)| (format!("lr/pg{i}"), group.lr))
        .collect()
}

fn write_val_plots(
    run_dir: &Path,
    output: &ValOutput,
    names: &[String],
    observer: &mut dyn TrainObserver,
) -> Result<(), Error> {
    let confusion = run_dir.join("confusion_matrix.png");
    plots::confusion_png(&output.confusion, names, &confusion)?;
    observer.on_artifact(&confusion);
    for (i, sample) in output.samples.iter().enumerate() {
        let path = run_dir.join(format!("val_pred_{i}.jpg"));
        plots::val_sample_png(sample, names, &path)?;
        observer.on_artifact(&path);
    }
    let results = run_dir.join("results.png");
    if results.exists() {
        observer.on_artifact(&results);
    }
    Ok(())
}

/// Gradients accumulated before the checkpoint, so a resumed run adds to them exactly
/// as the uninterrupted run does.
fn restore_pending_grads(
    optimizer: &Optimizer,
    tensors: &HashMap<String, Tensor>,
) -> Result<(), Error> {
    let params: Vec<&(String, Tensor)> = optimizer.parameters().collect();
    if !params
        .iter()
        .any(|(name, _)| tensors.contains_key(&format!("{GRAD_PREFIX}{name}")))
    {
        return Ok(());
    }
    // A zero backward makes every gradient a defined tensor to copy into.
    let zero = params
        .iter()
        .map(|(_, t)| (t * 0.0).sum(tch::Kind::Float))
        .fold(Tensor::zeros([], tch::kind::FLOAT_CPU), |acc, t| {
            acc + t.to_device(tch::Device::Cpu)
        });
    zero.backward();
    tch::no_grad(|| {
        for (name, variable) in params {
            if let Some(saved) = tensors.get(&format!("{GRAD_PREFIX}{name}")) {
                variable.grad().f_copy_(saved)?;
            }
        }
        Ok(())
    })
}

fn dump_step_weights(
    dir: &Path,
    rank: usize,
    step: impl std::fmt::Display,
    optimizer: &Optimizer,
) -> Result<(), Error> {
    create_dir(dir)?;
    let path = dir.join(format!("rank{rank}_step{step}.safetensors"));
    let named: Vec<(&str, &Tensor)> = optimizer
        .parameters()
        .map(|(name, tensor)| (name.as_str(), tensor))
        .collect();
    Tensor::write_safetensors(&named, &path).map_err(|source| Error::Checkpoint {
        path,
        reason: source.to_string(),
    })
}

fn append_csv_row(path: &Path, row: &[(String, f64)]) -> Result<(), Error> {
    use std::io::Write;
    let columns = result_columns();
    let values: Vec<String> = columns
        .iter()
        .map(|column| {
            row.iter()
                .find(|(name, _)| name == column)
                .map(|(name, value)| {
                    if name == "epoch" {
                        format!("{value}")
                    } else {
                        format!("{value:.6}")
                    }
                })
                .unwrap_or_default()
        })
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })?;
    writeln!(file, "{}", values.join(",")).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The rows of an existing `results.csv`, as `(column, value)` pairs.
pub fn read_results_csv(path: &Path) -> Result<Vec<Vec<(String, f64)>>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    Ok(lines
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            header
                .iter()
                .zip(line.split(','))
                .filter_map(|(name, value)| Some((name.clone(), value.trim().parse().ok()?)))
                .collect()
        })
        .collect())
}

fn create_dir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    write_file(path, text.as_bytes())
}
