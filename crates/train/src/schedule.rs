//! Ultralytics' learning-rate schedule, warm-up and nominal-batch accumulation.

/// Ultralytics' nominal batch size (`nbs`): gradients accumulate until about this many
/// images went through, and weight decay scales with it.
pub const NOMINAL_BATCH: usize = 64;

/// The per-epoch learning-rate factor `lf(epoch)`, from 1 down to `lrf`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub epochs: usize,
    pub lrf: f64,
    /// Ultralytics' `cos_lr`: a half cosine (`one_cycle`) instead of a straight line.
    pub cosine: bool,
}

impl LrSchedule {
    /// `lf(epoch)`: the factor applied to each group's initial learning rate in `epoch`
    /// (0-based; Ultralytics steps its `LambdaLR` at the start of each epoch).
    pub fn factor(&self, epoch: usize) -> f64 {
        let x = epoch as f64;
        let epochs = self.epochs.max(1) as f64;
        if self.cosine {
            ((1.0 - (x * std::f64::consts::PI / epochs).cos()) / 2.0).max(0.0) * (self.lrf - 1.0)
                + 1.0
        } else {
            (1.0 - x / epochs).max(0.0) * (1.0 - self.lrf) + self.lrf
        }
    }
}

/// `accumulate = max(round(nbs / batch), 1)`: optimiser steps every this many batches.
pub fn nominal_accumulate(batch: usize) -> usize {
    ((NOMINAL_BATCH as f64 / batch.max(1) as f64).round() as usize).max(1)
}

/// Weight decay scaled to the images per optimiser step: `wd * batch * accumulate / nbs`.
pub fn scaled_weight_decay(weight_decay: f64, batch: usize, accumulate: usize) -> f64 {
    weight_decay * (batch * accumulate) as f64 / NOMINAL_BATCH as f64
}

/// The warm-up: over the first `iterations` batches the learning rates rise linearly
/// from 0 (biases fall from `bias_lr`) to their scheduled value, momentum rises from
/// `momentum_start` to `momentum_end` and the accumulation from 1 to its nominal value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Warmup {
    pub iterations: usize,
    pub bias_lr: f64,
    pub momentum_start: f64,
    pub momentum_end: f64,
}

impl Warmup {
    /// `max(round(warmup_epochs * batches_per_epoch), 100)` iterations, none when
    /// `warmup_epochs` is 0 (the rule of Ultralytics 8.0 to 8.3).
    pub fn iterations(warmup_epochs: f64, batches_per_epoch: usize) -> usize {
        if warmup_epochs > 0.0 {
            ((warmup_epochs * batches_per_epoch as f64).round() as usize).max(100)
        } else {
            0
        }
    }

    /// Whether iteration `ni` (batches since the start of training) is still warming up.
    pub fn active(&self, ni: usize) -> bool {
        self.iterations > 0 && ni <= self.iterations
    }

    /// `np.interp(ni, [0, iterations], [start, end])`.
    pub fn interpolate(&self, ni: usize, start: f64, end: f64) -> f64 {
        if self.iterations == 0 {
            return end;
        }
        let t = (ni as f64 / self.iterations as f64).clamp(0.0, 1.0);
        start + (end - start) * t
    }

    /// The accumulation during warm-up, from 1 to `target`.
    pub fn accumulate(&self, ni: usize, target: usize) -> usize {
        (self.interpolate(ni, 1.0, target as f64).round() as usize).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_cosine_run_from_one_to_lrf() {
        for cosine in [false, true] {
            let schedule = LrSchedule {
                epochs: 10,
                lrf: 0.01,
                cosine,
            };
            assert!((schedule.factor(0) - 1.0).abs() < 1e-12);
            assert!((schedule.factor(10) - 0.01).abs() < 1e-12);
            assert!(schedule.factor(3) > schedule.factor(4));
        }
        let linear = LrSchedule {
            epochs: 10,
            lrf: 0.01,
            cosine: false,
        };
        assert!((linear.factor(5) - (0.5 * 0.99 + 0.01)).abs() < 1e-12);
    }

    #[test]
    fn nominal_batch_rules() {
        assert_eq!(nominal_accumulate(16), 4);
        assert_eq!(nominal_accumulate(64), 1);
        assert_eq!(nominal_accumulate(128), 1);
        assert_eq!(nominal_accumulate(24), 3);
        assert!((scaled_weight_decay(0.0005, 16, 4) - 0.0005).abs() < 1e-15);
        assert!((scaled_weight_decay(0.0005, 24, 3) - 0.0005 * 72.0 / 64.0).abs() < 1e-15);
        assert_eq!(Warmup::iterations(3.0, 10), 100);
        assert_eq!(Warmup::iterations(3.0, 100), 300);
        assert_eq!(Warmup::iterations(0.0, 100), 0);
    }
}
