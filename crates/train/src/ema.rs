//! Ultralytics' `ModelEMA`: an exponential moving average of every floating-point
//! tensor of the model (weights and BatchNorm running statistics), with the decay
//! ramping up as `decay * (1 - exp(-updates / tau))` so early epochs are not frozen to
//! the random initialisation. The EMA is what validation runs and what `best` holds.

use std::collections::HashMap;

use cardet_model::Detector;
use tch::Tensor;

use crate::Error;

/// The averaged copy of a [`Detector`].
#[derive(Debug)]
pub struct ModelEma {
    pub model: Detector,
    pub updates: u64,
    pub decay: f64,
    pub tau: f64,
}

impl ModelEma {
    pub const DECAY: f64 = 0.9999;
    pub const TAU: f64 = 2000.0;

    /// A copy of `source`'s variables, frozen, in evaluation use.
    pub fn new(source: &Detector) -> Result<ModelEma, Error> {
        let mut model = Detector::new(
            source.net.config.scale,
            source.names.clone(),
            source.vs.device(),
        );
        model.vs.copy(&source.vs)?;
        model.vs.freeze();
        Ok(ModelEma {
            model,
            updates: 0,
            decay: Self::DECAY,
            tau: Self::TAU,
        })
    }

    /// The decay of the `updates`-th update.
    pub fn decay_at(&self, updates: u64) -> f64 {
        self.decay * (1.0 - (-(updates as f64) / self.tau).exp())
    }

    /// `ema = d * ema + (1 - d) * model` for floating tensors; integer buffers
    /// (`num_batches_tracked`) are left as they are, as in Ultralytics.
    pub fn update(&mut self, source: &Detector) -> Result<(), Error> {
        self.updates += 1;
        let d = self.decay_at(self.updates);
        let sources: HashMap<String, Tensor> = source.vs.variables();
        tch::no_grad(|| -> Result<(), Error> {
            for (name, ema) in self.model.vs.variables() {
                if !ema.is_floating_point() {
                    continue;
                }
                let model = sources
                    .get(&name)
                    .ok_or_else(|| Error::Config(format!("EMA: the model has no tensor {name}")))?;
                let _ = ema.shallow_clone().lerp_(model, 1.0 - d);
            }
            Ok(())
        })
    }
}
