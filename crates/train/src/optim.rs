//! SGD (momentum, Nesterov) and AdamW over Ultralytics' three parameter groups, written
//! out on tensors so each group carries its own learning rate, momentum and decay and
//! the state is plain named tensors a checkpoint can hold.
//!
//! The update rules are PyTorch's `torch.optim.SGD` and `torch.optim.AdamW`.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use crate::Error;

/// Which optimiser, as Ultralytics' `optimizer` argument names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OptimizerName {
    #[serde(rename = "SGD")]
    Sgd,
    #[serde(rename = "AdamW")]
    AdamW,
    /// Ultralytics' `auto`: AdamW with a learning rate fitted to the class count for
    /// short runs, SGD at 0.01 for runs over 10 000 iterations.
    #[serde(rename = "auto")]
    Auto,
}

impl std::str::FromStr for OptimizerName {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        match text.to_ascii_lowercase().as_str() {
            "sgd" => Ok(OptimizerName::Sgd),
            "adamw" => Ok(OptimizerName::AdamW),
            "auto" => Ok(OptimizerName::Auto),
            _ => Err(Error::Config(format!(
                "optimizer {text:?}: cardet trains with SGD, AdamW or auto"
            ))),
        }
    }
}

impl std::fmt::Display for OptimizerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerName::Sgd => "SGD",
            OptimizerName::AdamW => "AdamW",
            OptimizerName::Auto => "auto",
        })
    }
}

/// The concrete choice after `auto` is resolved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerChoice {
    pub name: OptimizerName,
    pub lr0: f64,
    pub momentum: f64,
    /// `auto` starts the bias warm-up at 0 instead of `warmup_bias_lr`.
    pub zero_bias_warmup: bool,
}

/// Ultralytics' `build_optimizer` choice: `auto` picks AdamW with
/// `lr = round(0.002 * 5 / (4 + nc), 6)` and momentum 0.9 up to 10 000 iterations, else
/// SGD at 0.01 (Ultralytics 8.4 picks its MuSGD there, which cardet does not have).
pub fn choose_optimizer(
    name: OptimizerName,
    lr0: f64,
    momentum: f64,
    num_classes: usize,
    iterations: f64,
) -> OptimizerChoice {
    match name {
        OptimizerName::Auto => {
            let lr_fit = (0.002 * 5.0 / (4.0 + num_classes as f64) * 1e6).round() / 1e6;
            let (name, lr0) = if iterations > 10_000.0 {
                (OptimizerName::Sgd, 0.01)
            } else {
                (OptimizerName::AdamW, lr_fit)
            };
            OptimizerChoice {
                name,
                lr0,
                momentum: 0.9,
                zero_bias_warmup: true,
            }
        }
        name => OptimizerChoice {
            name,
            lr0,
            momentum,
            zero_bias_warmup: false,
        },
    }
}

/// Ultralytics' three parameter groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupKind {
    /// Convolution weights: decayed.
    Weight,
    /// BatchNorm weights: not decayed.
    BatchNorm,
    /// Every bias: not decayed; warms up from `warmup_bias_lr` down.
    Bias,
}

impl GroupKind {
    /// Ultralytics' rule: any name with `bias`, then normalisation layers' weights, then the rest.
    pub fn of(name: &str) -> GroupKind {
        if name.contains("bias") {
            GroupKind::Bias
        } else if name.contains(".bn.") {
            GroupKind::BatchNorm
        } else {
            GroupKind::Weight
        }
    }
}

/// One group's parameters and hyper-parameters.
#[derive(Debug)]
pub struct ParamGroup {
    pub kind: GroupKind,
    /// `(state-dict name, variable)`, in name order.
    pub params: Vec<(String, Tensor)>,
    pub lr: f64,
    pub initial_lr: f64,
    /// SGD momentum, or AdamW's beta1.
    pub momentum: f64,
    pub weight_decay: f64,
}

/// SGD with Nesterov momentum or AdamW, over [`ParamGroup`]s.
#[derive(Debug)]
pub struct Optimizer {
    pub name: OptimizerName,
    pub groups: Vec<ParamGroup>,
    /// Per parameter name: `momentum_buffer` (SGD) or `exp_avg`, `exp_avg_sq` (AdamW).
    pub state: BTreeMap<String, BTreeMap<&'static str, Tensor>>,
    /// Optimiser steps taken (AdamW's bias correction uses it).
    pub steps: u64,
}

const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

impl Optimizer {
    /// Groups the trainable `variables` by [`GroupKind::of`]; `weight_decay` goes to the
    /// weight group only.
    pub fn new(
        choice: &OptimizerChoice,
        variables: impl IntoIterator<Item = (String, Tensor)>,
        weight_decay: f64,
    ) -> Result<Optimizer, Error> {
        if choice.name == OptimizerName::Auto {
            return Err(Error::Config(
                "resolve `auto` with choose_optimizer first".into(),
            ));
        }
        let mut by_kind: BTreeMap<GroupKind, Vec<(String, Tensor)>> = BTreeMap::new();
        for (name, variable) in variables {
            if variable.requires_grad() {
                by_kind
                    .entry(GroupKind::of(&name))
                    .or_default()
                    .push((name, variable));
            }
        }
        let groups = [GroupKind::Weight, GroupKind::BatchNorm, GroupKind::Bias]
            .into_iter()
            .map(|kind| {
                let mut params = by_kind.remove(&kind).unwrap_or_default();
                params.sort_by(|a, b| a.0.cmp(&b.0));
                ParamGroup {
                    kind,
                    params,
                    lr: choice.lr0,
                    initial_lr: choice.lr0,
                    momentum: choice.momentum,
                    weight_decay: if kind == GroupKind::Weight {
                        weight_decay
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        Ok(Optimizer {
            name: choice.name,
            groups,
            state: BTreeMap::new(),
            steps: 0,
        })
    }

    /// Every parameter, group by group.
    pub fn parameters(&self) -> impl Iterator<Item = &(String, Tensor)> {
        self.groups.iter().flat_map(|group| group.params.iter())
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&self) {
        for (_, variable) in self.parameters() {
            let mut grad = variable.grad();
            if grad.defined() {
                let _ = grad.detach_().zero_();
            }
        }
    }

    /// `clip_grad_norm_`: scales all gradients so their joint L2 norm is at most
    /// `max_norm`; returns the norm before clipping.
    pub fn clip_grad_norm(&self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .parameters()
                .map(|(_, v)| v.grad())
                .filter(Tensor::defined)
                .collect();
            if grads.is_empty() {
                return 0.0;
            }
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            let total = Tensor::stack(&norms, 0).norm();
            let coefficient = (max_norm / (&total + 1e-6)).clamp_max(1.0);
            for grad in &grads {
                let mut grad = grad.shallow_clone();
                grad *= &coefficient;
            }
            total.double_value(&[])
        })
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) {
        self.steps += 1;
        let steps = self.steps as i32;
        tch::no_grad(|| {
            for group in &self.groups {
                for (name, variable) in &group.params {
                    let grad = variable.grad();
                    if !grad.defined() {
                        continue;
                    }
                    let mut param = variable.shallow_clone();
                    let state = self.state.entry(name.clone()).or_default();
                    match self.name {
                        OptimizerName::AdamW => {
                            adamw_update(&mut param, &grad, group, state, steps);
                        }
                        _ => sgd_update(&mut param, &grad, group, state),
                    }
                }
            }
        });
    }

    /// The state as named tensors (`<slot>/<parameter>`), for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, slots) in &self.state {
            for (slot, tensor) in slots {
                out.push((format!("{slot}/{name}"), tensor.shallow_clone()));
            }
        }
        out
    }

    /// Restores [`Optimizer::state_tensors`] output (names without their prefix).
    pub fn load_state_tensors(
        &mut self,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<(), Error> {
        let known: BTreeMap<&str, &Tensor> = self
            .parameters()
            .map(|(name, variable)| (name.as_str(), variable))
            .collect();
        let mut state: BTreeMap<String, BTreeMap<&'static str, Tensor>> = BTreeMap::new();
        for (key, tensor) in tensors {
            let (slot, name) = key.split_once('/').ok_or_else(|| {
                Error::Config(format!("optimizer state tensor {key:?} has no slot prefix"))
            })?;
            let slot = ["momentum_buffer", "exp_avg", "exp_avg_sq"]
                .into_iter()
                .find(|known| *known == slot)
                .ok_or_else(|| Error::Config(format!("unknown optimizer state slot {slot:?}")))?;
            let variable = known.get(name).ok_or_else(|| {
                Error::Config(format!("optimizer state for unknown parameter {name:?}"))
            })?;
            if tensor.size() != variable.size() {
                return Err(Error::Config(format!(
                    "optimizer state {key}: shape {:?}, parameter has {:?}",
                    tensor.size(),
                    variable.size()
                )));
            }
            let tensor = tensor.to_device(variable.device()).to_kind(Kind::Float);
            state
                .entry(name.to_string())
                .or_default()
                .insert(slot, tensor);
        }
        self.state = state;
        Ok(())
    }
}

/// `torch.optim.SGD` with momentum, dampening 0 and Nesterov.
fn sgd_update(
    param: &mut Tensor,
    grad: &Tensor,
    group: &ParamGroup,
    state: &mut BTreeMap<&'static str, Tensor>,
) {
    let mut direction = if group.weight_decay != 0.0 {
        grad + &*param * group.weight_decay
    } else {
        grad.shallow_clone()
    };
    if group.momentum != 0.0 {
        let buffer = match state.get_mut("momentum_buffer") {
            Some(buffer) => {
                *buffer *= group.momentum;
                *buffer += &direction;
                buffer.shallow_clone()
            }
            None => {
                let buffer = direction.detach().copy();
                state.insert("momentum_buffer", buffer.shallow_clone());
                buffer
            }
        };
        direction = &direction + buffer * group.momentum;
    }
    *param += direction * -group.lr;
}

/// `torch.optim.AdamW` (decoupled decay, no amsgrad).
fn adamw_update(
    param: &mut Tensor,
    grad: &Tensor,
    group: &ParamGroup,
    state: &mut BTreeMap<&'static str, Tensor>,
    steps: i32,
) {
    let beta1 = group.momentum;
    if group.weight_decay != 0.0 {
        *param *= 1.0 - group.lr * group.weight_decay;
    }
    let exp_avg = state.entry("exp_avg").or_insert_with(|| param.zeros_like());
    let _ = exp_avg.lerp_(grad, 1.0 - beta1);
    let exp_avg = exp_avg.shallow_clone();
    let exp_avg_sq = state
        .entry("exp_avg_sq")
        .or_insert_with(|| param.zeros_like());
    *exp_avg_sq *= ADAM_BETA2;
    let _ = exp_avg_sq.addcmul_(&(grad * (1.0 - ADAM_BETA2)), grad);
    let bias_correction1 = 1.0 - beta1.powi(steps);
    let bias_correction2 = 1.0 - ADAM_BETA2.powi(steps);
    let step_size = group.lr / bias_correction1;
    let denom = exp_avg_sq.sqrt() / bias_correction2.sqrt() + ADAM_EPS;
    let _ = param.addcdiv_(&(exp_avg * -step_size), &denom);
}
