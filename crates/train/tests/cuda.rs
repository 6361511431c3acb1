//! The CUDA paths of the trainer: fp16 autocast with the dynamic loss scaler, and a
//! CUDA training step against the same step on the CPU.
//!
//! These need a CUDA device and a CUDA libtorch, which CI's machines do not have, so
//! they are `#[ignore]`d there. Where a GPU is present run them with
//! `cargo test -p cardet-train --test cuda -- --ignored`; each fails (rather than
//! passing vacuously) when libtorch sees no CUDA device.

use cardet_model::{Detector, Scale};
use cardet_train::amp::{BACKOFF_FACTOR, INIT_SCALE, head_to_float};
use cardet_train::optim::{Optimizer, OptimizerChoice, OptimizerName};
use cardet_train::{DetectionLoss, GradScaler, LossGains};
use tch::{Device, Kind, Tensor};

fn cuda() -> Device {
    assert!(
        cardet_model::libtorch::load_cuda_backend(),
        "libtorch sees no CUDA device: run these only where one is present"
    );
    Device::Cuda(0)
}

fn names() -> Vec<String> {
    ["car", "bus", "truck"].map(String::from).to_vec()
}

/// Four 320 px images of noise, with three boxes spread over them (one image has none).
fn batch(device: Device) -> (Tensor, Vec<[f32; 6]>) {
    tch::manual_seed(7);
    let images = Tensor::rand([4, 3, 320, 320], (Kind::Float, Device::Cpu)).to_device(device);
    let targets = vec![
        [0.0, 0.0, 0.30, 0.40, 0.20, 0.25],
        [0.0, 2.0, 0.70, 0.60, 0.35, 0.30],
        [2.0, 1.0, 0.50, 0.50, 0.60, 0.45],
    ];
    (images, targets)
}

fn sgd(detector: &Detector) -> Optimizer {
    let choice = OptimizerChoice {
        name: OptimizerName::Sgd,
        lr0: 0.01,
        momentum: 0.937,
        zero_bias_warmup: false,
    };
    Optimizer::new(&choice, detector.vs.variables(), 0.0005).expect("optimizer")
}

fn snapshot(optimizer: &Optimizer) -> Vec<Tensor> {
    optimizer
        .parameters()
        .map(|(_, t)| t.detach().to_device(Device::Cpu).copy())
        .collect()
}

fn max_change(before: &[Tensor], optimizer: &Optimizer) -> f64 {
    before
        .iter()
        .zip(optimizer.parameters())
        .map(|(old, (_, new))| {
            (new.detach().to_device(Device::Cpu) - old)
                .abs()
                .max()
                .double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn grads(optimizer: &Optimizer) -> Vec<Tensor> {
    optimizer
        .parameters()
        .map(|(_, t)| t.grad())
        .filter(Tensor::defined)
        .collect()
}

/// One optimiser step as `mwt train --amp` takes it on CUDA, with an inf written into
/// one gradient when `inject_inf`; says whether the step was taken.
fn amp_step(
    detector: &Detector,
    optimizer: &mut Optimizer,
    scaler: &mut GradScaler,
    images: &Tensor,
    targets: &[[f32; 6]],
    inject_inf: bool,
) -> bool {
    let criterion = DetectionLoss::new(3, LossGains::default());
    optimizer.zero_grad();
    let raw = tch::autocast(true, || detector.net.forward_t(images, true));
    assert_eq!(
        raw.pred[0].kind(),
        Kind::Half,
        "autocast did not run in fp16"
    );
    let head = head_to_float(&raw).expect("fp32 head");
    let loss = criterion.compute(&head, targets).expect("loss");
    assert!(loss.total.double_value(&[]).is_finite());
    scaler.scale_loss(&loss.total).backward();
    let grads = grads(optimizer);
    assert!(!grads.is_empty());
    if inject_inf {
        let _ = grads[grads.len() / 2].shallow_clone().fill_(f64::INFINITY);
    }
    let finite = scaler.unscale(&grads).expect("unscale");
    if finite {
        optimizer.step();
    }
    scaler.update(!finite);
    finite
}

/// The trainer's `--amp` step on CUDA: the forward really runs in fp16; the scaler
/// backs off from 2^16 until the fp16 gradients stop overflowing (an untrained
/// network's loss times 2^16 overflows at first, as in PyTorch); then a step whose
/// gradients hold an injected inf is skipped (weights untouched, scale halved) while
/// the next, finite one is taken.
#[test]
#[ignore = "needs a CUDA device (run with --ignored where one is present)"]
fn amp_on_cuda_skips_the_step_with_an_infinite_gradient() {
    let device = cuda();
    let detector = Detector::new(Scale::N, names(), device);
    let mut optimizer = sgd(&detector);
    let mut scaler = GradScaler::new(true);
    let (images, targets) = batch(device);
    let step = |optimizer: &mut Optimizer, scaler: &mut GradScaler, inject_inf: bool| {
        amp_step(&detector, optimizer, scaler, &images, &targets, inject_inf)
    };

    let mut expected_scale = INIT_SCALE;
    let mut skipped = 0;
    while !step(&mut optimizer, &mut scaler, false) {
        expected_scale *= BACKOFF_FACTOR;
        assert_eq!(
            scaler.scale(),
            expected_scale,
            "each overflow halves the scale"
        );
        skipped += 1;
        assert!(
            skipped < 24,
            "the scale fell to {} and still overflows",
            scaler.scale()
        );
    }
    assert_eq!(
        scaler.scale(),
        expected_scale,
        "a finite step keeps the scale"
    );

    let before = snapshot(&optimizer);
    assert!(
        !step(&mut optimizer, &mut scaler, true),
        "an inf gradient must skip the step"
    );
    assert_eq!(scaler.scale(), expected_scale * BACKOFF_FACTOR);
    assert_eq!(
        max_change(&before, &optimizer),
        0.0,
        "a skipped step moved weights"
    );

    assert!(
        step(&mut optimizer, &mut scaler, false),
        "a finite step must be taken at the halved scale"
    );
    assert_eq!(scaler.scale(), expected_scale * BACKOFF_FACTOR);
    let moved = max_change(&before, &optimizer);
    assert!(
        moved > 0.0 && moved.is_finite(),
        "the finite step moved {moved}"
    );
}

/// One fp32 training step on CUDA gives the CPU's loss and gradients, from the same
/// weights and batch. cuDNN is switched off for it: its convolutions run in TF32 by
/// default (10-bit mantissas), which would hide a real difference in our code under
/// rounding; without it the bounds are those of fp32 sums in another order.
#[test]
#[ignore = "needs a CUDA device (run with --ignored where one is present)"]
fn a_cuda_step_matches_the_cpu_step() {
    let device = cuda();
    tch::Cuda::set_user_enabled_cudnn(false);
    let cpu = Detector::new(Scale::N, names(), Device::Cpu);
    let mut gpu = Detector::new(Scale::N, names(), device);
    gpu.vs.copy(&cpu.vs).expect("copy weights to the GPU");
    let criterion = DetectionLoss::new(3, LossGains::default());

    let run = |detector: &Detector, device: Device| -> (f64, [f64; 3], Vec<(String, Tensor)>) {
        let (images, targets) = batch(device);
        let head = detector.net.forward_t(&images, true);
        let loss = criterion.compute(&head, &targets).expect("loss");
        loss.total.backward();
        let mut grads: Vec<(String, Tensor)> = detector
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, t)| (name, t.grad().to_device(Device::Cpu)))
            .collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        (loss.total.double_value(&[]), loss.parts(), grads)
    };
    let (cpu_total, cpu_parts, cpu_grads) = run(&cpu, Device::Cpu);
    let (gpu_total, gpu_parts, gpu_grads) = run(&gpu, device);

    let relative = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-12);
    assert!(
        relative(cpu_total, gpu_total) < 1e-4,
        "loss {cpu_total} on CPU, {gpu_total} on CUDA"
    );
    for (part, (c, g)) in cpu_parts.iter().zip(gpu_parts).enumerate() {
        assert!(
            relative(*c, g) < 1e-4,
            "loss part {part}: {c} on CPU, {g} on CUDA"
        );
    }
    assert_eq!(cpu_grads.len(), gpu_grads.len());
    for ((name, c), (_, g)) in cpu_grads.iter().zip(&gpu_grads) {
        let norm = c.norm().double_value(&[]);
        let diff = (c - g).norm().double_value(&[]);
        assert!(
            diff <= 1e-3 * norm.max(1e-6),
            "{name}: |cpu - cuda| = {diff}, |cpu| = {norm}"
        );
    }
}
