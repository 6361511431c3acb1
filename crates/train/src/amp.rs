//! Mixed precision for `--amp`, keeping fp32 master weights in the trainer's model.
//!
//! - CUDA: the forward runs under tch's autocast (fp16) and the loss is multiplied by a
//!   dynamic [`GradScaler`] (PyTorch's `torch.amp.GradScaler` rules) so small fp16
//!   gradients do not flush to zero; a step whose unscaled gradients hold an inf or
//!   NaN is skipped and the scale halves.
//! - CPU: tch's autocast only switches CUDA autocast on (DESIGN.md), and libtorch's
//!   CPU autocast is not reachable through tch. So [`Bf16Shadow`] keeps a bf16 copy
//!   of the model, refreshed from the fp32 weights before every forward; the forward
//!   and backward run in bf16 and the gradients are added, as fp32, to the master
//!   weights' gradients. bf16 has fp32's exponent range, so no loss scale is needed
//!   (as with PyTorch's CPU autocast).

use cardet_model::Detector;
use cardet_model::yolov8::HeadOutput;
use tch::{Kind, Tensor};

use crate::Error;

/// `GradScaler`'s defaults: initial scale 2^16.
pub const INIT_SCALE: f64 = 65536.0;
/// The scale is multiplied by this after `GROWTH_INTERVAL` steps without an inf/NaN.
pub const GROWTH_FACTOR: f64 = 2.0;
/// The scale is multiplied by this after a step with an inf/NaN gradient.
pub const BACKOFF_FACTOR: f64 = 0.5;
pub const GROWTH_INTERVAL: usize = 2000;

/// What a checkpoint keeps of an enabled [`GradScaler`], so that a resumed run goes
/// on with the scale it had reached instead of 2^16 (which would overflow, skip
/// steps and back off all over again).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScale {
    pub scale: f64,
    /// Consecutive finite steps since the last change of scale.
    pub good_steps: usize,
}

/// PyTorch's dynamic loss scaler. Disabled, it leaves losses and gradients alone and
/// never skips a step.
#[derive(Clone, Debug, PartialEq)]
pub struct GradScaler {
    enabled: bool,
    scale: f64,
    /// Consecutive steps with finite gradients since the last change of scale.
    good_steps: usize,
}

impl GradScaler {
    pub fn new(enabled: bool) -> GradScaler {
        GradScaler {
            enabled,
            scale: INIT_SCALE,
            good_steps: 0,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The current loss scale (1 when disabled).
    pub fn scale(&self) -> f64 {
        if self.enabled { self.scale } else { 1.0 }
    }

    /// The state to checkpoint; `None` when disabled.
    pub fn state(&self) -> Option<LossScale> {
        self.enabled.then_some(LossScale {
            scale: self.scale,
            good_steps: self.good_steps,
        })
    }

    /// Continues from a checkpointed state (nothing to do when disabled).
    pub fn restore(&mut self, state: LossScale) {
        if self.enabled {
            self.scale = state.scale;
            self.good_steps = state.good_steps;
        }
    }

    /// The loss to back-propagate.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        if self.enabled {
            loss * self.scale
        } else {
            loss.shallow_clone()
        }
    }

    /// Divides the gradients by the scale, in place, and says whether all of them are
    /// finite (the step may be taken). Always `true` when disabled.
    pub fn unscale(&self, grads: &[Tensor]) -> Result<bool, Error> {
        if !self.enabled {
            return Ok(true);
        }
        let _no_grad = tch::no_grad_guard();
        let inverse = 1.0 / self.scale;
        let mut all_finite = Vec::with_capacity(grads.len());
        for grad in grads.iter().filter(|grad| grad.defined()) {
            let _ = grad.shallow_clone().f_mul_scalar_(inverse)?;
            all_finite.push(grad.f_isfinite()?.f_all()?);
        }
        if all_finite.is_empty() {
            return Ok(true);
        }
        // One read of the device for the whole step: a single inf or NaN anywhere
        // poisons it.
        let finite = Tensor::f_stack(&all_finite, 0)?
            .f_all()?
            .f_int64_value(&[])?;
        Ok(finite != 0)
    }

    /// After each optimiser step (taken or skipped): back off on an inf/NaN, grow after
    /// `GROWTH_INTERVAL` good steps in a row.
    pub fn update(&mut self, found_non_finite: bool) {
        if !self.enabled {
            return;
        }
        if found_non_finite {
            self.scale *= BACKOFF_FACTOR;
            self.good_steps = 0;
        } else {
            self.good_steps += 1;
            if self.good_steps == GROWTH_INTERVAL {
                self.scale *= GROWTH_FACTOR;
                self.good_steps = 0;
            }
        }
    }
}

/// The head's outputs as fp32 (from an fp16 autocast or bf16 forward), so the loss is
/// computed at full precision; gradients flow back through the casts.
pub fn head_to_float(head: &HeadOutput) -> Result<HeadOutput, Error> {
    Ok(HeadOutput {
        pred: head
            .pred
            .iter()
            .map(|level| level.f_to_kind(Kind::Float))
            .collect::<Result<_, _>>()?,
        anchors: head.anchors.f_to_kind(Kind::Float)?,
        strides: head.strides.f_to_kind(Kind::Float)?,
    })
}

/// A bf16 copy of a CPU model for `--amp` on CPU (see the module docs).
pub struct Bf16Shadow {
    shadow: Detector,
    /// `(master, shadow)` pairs of every variable, trainable or buffer, by name.
    pairs: Vec<(Tensor, Tensor)>,
}

impl Bf16Shadow {
    /// A bf16 replica of `master` (same scale, class names and device).
    pub fn new(master: &Detector) -> Result<Bf16Shadow, Error> {
        let mut shadow = Detector::new(
            master.net.config.scale,
            master.names.clone(),
            master.vs.device(),
        );
        shadow.vs.bfloat16();
        let shadows = shadow.vs.variables();
        let mut names: Vec<(String, Tensor)> = master.vs.variables().into_iter().collect();
        // A fixed order, so nothing depends on the HashMap's.
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let mut pairs = Vec::with_capacity(names.len());
        for (name, variable) in names {
            let twin = shadows.get(&name).ok_or_else(|| Error::Shape {
                what: "bf16 model copy",
                reason: format!("variable {name} has no twin"),
            })?;
            pairs.push((variable, twin.shallow_clone()));
        }
        Ok(Bf16Shadow { shadow, pairs })
    }

    /// Copies the fp32 weights and buffers into the bf16 copy and clears its gradients.
    fn refresh(&self) -> Result<(), Error> {
        let _no_grad = tch::no_grad_guard();
        for (master, twin) in &self.pairs {
            twin.shallow_clone().f_copy_(master)?;
            let mut grad = twin.grad();
            if grad.defined() {
                let _ = grad.f_detach_()?.f_zero_()?;
            }
        }
        Ok(())
    }

    /// The training forward in bf16; the head's outputs come back as fp32 so the loss
    /// is computed at full precision.
    pub fn forward(&self, images: &Tensor) -> Result<HeadOutput, Error> {
        self.refresh()?;
        let head = self
            .shadow
            .net
            .forward_t(&images.f_to_kind(Kind::BFloat16)?, true);
        head_to_float(&head)
    }

    /// After the backward of a loss computed from [`Bf16Shadow::forward`]: adds the bf16
    /// gradients to the master weights' (fp32) gradients and takes over the batch's
    /// BatchNorm statistics.
    pub fn accumulate_into_master(&self) -> Result<(), Error> {
        let _no_grad = tch::no_grad_guard();
        let mut undefined = Vec::new();
        for (index, (master, twin)) in self.pairs.iter().enumerate() {
            if master.requires_grad() {
                if twin.grad().defined() && !master.grad().defined() {
                    undefined.push(index);
                }
            } else {
                // BatchNorm running statistics and counters: the bf16 forward moved them.
                master.shallow_clone().f_copy_(twin)?;
            }
        }
        if !undefined.is_empty() {
            // A zero backward gives the master weights defined gradients to add to.
            tch::with_grad(|| {
                let zero = undefined
                    .iter()
                    .map(|&index| (&self.pairs[index].0 * 0.0).sum(Kind::Float))
                    .fold(
                        Tensor::zeros([], (Kind::Float, self.shadow.vs.device())),
                        |a, b| a + b,
                    );
                zero.backward();
            });
        }
        for (master, twin) in &self.pairs {
            let grad = twin.grad();
            if master.requires_grad() && grad.defined() {
                let _ = master.grad().f_add_(&grad.f_to_kind(Kind::Float)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grads() -> Vec<Tensor> {
        vec![
            Tensor::from_slice(&[65536.0_f32, -131072.0]),
            Tensor::from_slice(&[32768.0_f32]),
        ]
    }

    #[test]
    fn a_finite_step_is_unscaled_and_kept() {
        let mut scaler = GradScaler::new(true);
        let grads = grads();
        assert!(scaler.unscale(&grads).expect("unscale"));
        assert_eq!(Vec::<f32>::try_from(&grads[0]).expect("f32"), [1.0, -2.0]);
        assert_eq!(Vec::<f32>::try_from(&grads[1]).expect("f32"), [0.5]);
        scaler.update(false);
        assert_eq!(scaler.scale(), INIT_SCALE);
    }

    #[test]
    fn an_injected_inf_or_nan_skips_the_step_and_halves_the_scale() {
        let mut scaler = GradScaler::new(true);
        for poison in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            let before = scaler.scale();
            let grads = grads();
            let _ = grads[1].shallow_clone().fill_(f64::from(poison));
            assert!(!scaler.unscale(&grads).expect("unscale"), "{poison}");
            scaler.update(true);
            assert_eq!(scaler.scale(), before * BACKOFF_FACTOR);
        }
    }

    #[test]
    fn the_scale_grows_after_the_interval_of_good_steps() {
        let mut scaler = GradScaler::new(true);
        for _ in 0..GROWTH_INTERVAL - 1 {
            scaler.update(false);
        }
        assert_eq!(scaler.scale(), INIT_SCALE);
        scaler.update(false);
        assert_eq!(scaler.scale(), INIT_SCALE * GROWTH_FACTOR);
        // A bad step restarts the count.
        scaler.update(true);
        for _ in 0..GROWTH_INTERVAL - 1 {
            scaler.update(false);
        }
        assert_eq!(scaler.scale(), INIT_SCALE);
    }

    /// A resumed run goes on from the checkpointed scale and count of good steps,
    /// not from 2^16, and checkpoints without the field still load.
    #[test]
    fn the_scale_survives_a_checkpoint() {
        let mut scaler = GradScaler::new(true);
        scaler.update(true);
        scaler.update(true);
        for _ in 0..5 {
            scaler.update(false);
        }
        let saved = serde_json::to_string(&scaler.state()).expect("serialises");
        let mut resumed = GradScaler::new(true);
        let state: Option<LossScale> = serde_json::from_str(&saved).expect("parses");
        resumed.restore(state.expect("an enabled scaler has a state"));
        assert_eq!(resumed, scaler);
        assert_eq!(resumed.scale(), INIT_SCALE / 4.0);
        for _ in 0..GROWTH_INTERVAL - 5 {
            resumed.update(false);
        }
        assert_eq!(
            resumed.scale(),
            INIT_SCALE / 2.0,
            "the count of good steps carried over"
        );
        assert_eq!(GradScaler::new(false).state(), None);
    }

    #[test]
    fn disabled_it_changes_nothing() {
        let mut scaler = GradScaler::new(false);
        let grads = grads();
        let _ = grads[1].shallow_clone().fill_(f64::INFINITY);
        assert!(scaler.unscale(&grads).expect("unscale"));
        assert_eq!(
            Vec::<f32>::try_from(&grads[0]).expect("f32"),
            [65536.0, -131072.0]
        );
        scaler.update(true);
        assert_eq!(scaler.scale(), 1.0);
    }
}
