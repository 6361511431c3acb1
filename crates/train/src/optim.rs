//! SGD (momentum, Nesterov) and AdamW over Ultralytics' three parameter groups, written
//! out on tensors so each group carries its own learning rate, momentum and decay and
//! the state is plain named tensors a checkpoint can hold.
//!
//! The update rules are PyTorch's `torch.optim.SGD` and `torch.optim.AdamW`.
//!
//! On a GPU a small model's step is bound by how many operations are launched, not by
//! arithmetic: PyTorch's optimisers run `foreach` kernels over all of a group's
//! tensors at once, which tch does not expose. So, at the first step, each group's
//! parameters are moved into one flat buffer (each parameter's data becomes a view
//! of it), and the group's gradients are gathered into one flat tensor per step: the
//! update is then a handful of operations per group, not a handful per parameter.
//! The optimiser state stays addressable per parameter (views of flat slots), so
//! checkpoints are unchanged.

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
    /// Per group, once the first step has flattened it (see the module docs).
    flat: Vec<Option<FlatGroup>>,
    /// Off only in tests, to compare the flat update with the per-parameter one.
    flatten: bool,
}

/// One group's parameters as one flat buffer, and its state slots likewise.
#[derive(Debug)]
struct FlatGroup {
    /// Every parameter of the group end to end; each parameter's data is a view of it.
    params: Tensor,
    /// Flat state slots (`momentum_buffer`, `exp_avg`, `exp_avg_sq`); the per-name
    /// entries of [`Optimizer::state`] are views of these.
    slots: BTreeMap<&'static str, Tensor>,
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
        let groups: Vec<ParamGroup> = [GroupKind::Weight, GroupKind::BatchNorm, GroupKind::Bias]
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
            flat: groups.iter().map(|_| None).collect(),
            groups,
            state: BTreeMap::new(),
            steps: 0,
            flatten: true,
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

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) {
        self.step_with_clip(None);
    }

    /// `torch.nn.utils.clip_grad_norm_` then [`Optimizer::step`], in one pass over the
    /// flat gradients: the update uses the clipped gradients, but the gradients
    /// themselves are left as they were (the trainer zeroes them next), and the norm
    /// stays on the device (no wait for the GPU).
    pub fn clip_and_step(&mut self, max_norm: f64) {
        self.step_with_clip(Some(max_norm));
    }

    fn step_with_clip(&mut self, max_norm: Option<f64>) {
        self.steps += 1;
        let steps = self.steps as i32;
        tch::no_grad(|| {
            if self.flatten {
                self.flatten_groups();
            }
            // Per group: its gradients as one flat tensor, where the group is flat and
            // every gradient is defined; else the update goes parameter by parameter.
            let flat_grads: Vec<Option<Tensor>> = self
                .groups
                .iter()
                .zip(&self.flat)
                .map(|(group, flat)| flat.as_ref().and_then(|_| flat_gradient(group)))
                .collect();
            let coefficient = max_norm.and_then(|max_norm| {
                let mut norms = Vec::new();
                for (group, flat_grad) in self.groups.iter().zip(&flat_grads) {
                    match flat_grad {
                        Some(grad) => norms.push(grad.norm()),
                        None => norms.extend(
                            group
                                .params
                                .iter()
                                .map(|(_, v)| v.grad())
                                .filter(Tensor::defined)
                                .map(|grad| grad.norm()),
                        ),
                    }
                }
                // torch.nn.utils.clip_grad_norm_'s rule, kept on the device.
                (!norms.is_empty()).then(|| {
                    let total = Tensor::stack(&norms, 0).norm();
                    (max_norm / (total + 1e-6)).clamp_max(1.0)
                })
            });
            let clip = |grad: Tensor| match &coefficient {
                Some(coefficient) => grad * coefficient,
                None => grad,
            };
            for (index, group) in self.groups.iter().enumerate() {
                if let (Some(flat), Some(grad)) = (&mut self.flat[index], &flat_grads[index])
                    && flat.load_slots(group, &mut self.state, self.name)
                {
                    let grad = clip(grad.shallow_clone());
                    let mut param = flat.params.shallow_clone();
                    match self.name {
                        OptimizerName::AdamW => {
                            adamw_update(&mut param, &grad, group, &mut flat.slots, steps);
                        }
                        _ => sgd_update(&mut param, &grad, group, &mut flat.slots),
                    }
                    flat.publish_slots(group, &mut self.state);
                    continue;
                }
                for (name, variable) in &group.params {
                    let grad = variable.grad();
                    if !grad.defined() {
                        continue;
                    }
                    let grad = clip(grad);
                    let mut param = variable.shallow_clone();
                    let state = self.state.entry(name.clone()).or_default();
                    match self.name {
                        OptimizerName::AdamW => {
                            adamw_update(&mut param, &grad, group, state, steps);
                        }
                        _ => sgd_update(&mut param, &grad, group, state),
                    }
                }
                // The per-name state may hold new tensors now: rebuild the flat slots
                // from it at the next flat step.
                if let Some(flat) = &mut self.flat[index] {
                    flat.slots.clear();
                }
            }
        });
    }

    /// Moves each group's parameters into one flat buffer, once. A group is left
    /// alone when its parameters are not all contiguous fp32 tensors on one device.
    fn flatten_groups(&mut self) {
        for (group, flat) in self.groups.iter().zip(&mut self.flat) {
            if flat.is_some() || group.params.is_empty() {
                continue;
            }
            let device = group.params[0].1.device();
            if !group
                .params
                .iter()
                .all(|(_, v)| v.kind() == Kind::Float && v.device() == device && v.is_contiguous())
            {
                continue;
            }
            let pieces: Vec<Tensor> = group
                .params
                .iter()
                .map(|(_, v)| v.detach().reshape([-1]))
                .collect();
            let params = Tensor::cat(&pieces, 0);
            for ((_, variable), view) in group.params.iter().zip(views(&params, group)) {
                // Same TensorImpl as the VarStore's variable and every shallow clone of
                // it (the model's layers): they all see the new storage.
                variable.shallow_clone().set_data(&view);
            }
            *flat = Some(FlatGroup {
                params,
                slots: BTreeMap::new(),
            });
        }
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
        for flat in self.flat.iter_mut().flatten() {
            flat.slots.clear();
        }
        Ok(())
    }
}

impl FlatGroup {
    /// Makes the flat slots match the per-name state: kept if already built, else
    /// gathered from the per-name tensors (after a checkpoint load or a
    /// per-parameter step). `false` when only some parameters have state, which the
    /// flat update cannot express: the group then steps parameter by parameter.
    fn load_slots(
        &mut self,
        group: &ParamGroup,
        state: &mut BTreeMap<String, BTreeMap<&'static str, Tensor>>,
        optimizer: OptimizerName,
    ) -> bool {
        if !self.slots.is_empty() {
            return true;
        }
        let slot_names: &[&'static str] = match optimizer {
            OptimizerName::AdamW => &["exp_avg", "exp_avg_sq"],
            _ => &["momentum_buffer"],
        };
        for slot in slot_names {
            let pieces: Vec<Tensor> = group
                .params
                .iter()
                .filter_map(|(name, _)| state.get(name).and_then(|slots| slots.get(slot)))
                .map(|tensor| tensor.reshape([-1]))
                .collect();
            if pieces.is_empty() {
                continue;
            }
            if pieces.len() != group.params.len() {
                return false;
            }
            self.slots.insert(slot, Tensor::cat(&pieces, 0));
        }
        true
    }

    /// Points the per-name state at views of the flat slots (for checkpoints).
    fn publish_slots(
        &self,
        group: &ParamGroup,
        state: &mut BTreeMap<String, BTreeMap<&'static str, Tensor>>,
    ) {
        for (slot, flat) in &self.slots {
            for ((name, _), view) in group.params.iter().zip(views(flat, group)) {
                let entry = state.entry(name.clone()).or_default();
                let current = entry.get(slot);
                // Already a view of this slot: nothing to do (the common case).
                if current.is_none_or(|tensor| tensor.data_ptr() != view.data_ptr()) {
                    entry.insert(slot, view);
                }
            }
        }
    }
}

/// A group's gradients end to end, or `None` when one is missing.
fn flat_gradient(group: &ParamGroup) -> Option<Tensor> {
    let mut pieces = Vec::with_capacity(group.params.len());
    for (_, variable) in &group.params {
        let grad = variable.grad();
        if !grad.defined() {
            return None;
        }
        pieces.push(grad.reshape([-1]));
    }
    Some(Tensor::cat(&pieces, 0))
}

/// Views of a flat buffer shaped as the group's parameters, in group order.
fn views<'a>(flat: &'a Tensor, group: &'a ParamGroup) -> impl Iterator<Item = Tensor> + 'a {
    let mut offset = 0;
    group.params.iter().map(move |(_, variable)| {
        let numel = variable.numel() as i64;
        let view = flat
            .narrow(0, offset, numel)
            .view(variable.size().as_slice());
        offset += numel;
        view
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPES: [(&str, &[i64]); 5] = [
        ("model.0.conv.weight", &[4, 3, 3, 3]),
        ("model.0.bn.weight", &[4]),
        ("model.0.bn.bias", &[4]),
        ("model.22.cv2.0.2.weight", &[16, 4, 1, 1]),
        ("model.22.cv2.0.2.bias", &[16]),
    ];

    /// Leaf tensors named as in the model, one per group kind at least. Made without
    /// libtorch's global generator, which tests running in parallel would share.
    fn parameters(seed: i64) -> Vec<(String, Tensor)> {
        SHAPES
            .iter()
            .enumerate()
            .map(|(index, (name, shape))| {
                let numel: i64 = shape.iter().product();
                let phase = (seed * 7 + index as i64) as f64;
                let tensor = (Tensor::arange(numel, tch::kind::FLOAT_CPU) * 1.3 + phase)
                    .cos()
                    .reshape(*shape)
                    .set_requires_grad(true);
                (name.to_string(), tensor)
            })
            .collect()
    }

    fn optimizer(name: OptimizerName, params: &[(String, Tensor)], flatten: bool) -> Optimizer {
        let choice = OptimizerChoice {
            name,
            lr0: 0.05,
            momentum: 0.9,
            zero_bias_warmup: false,
        };
        let variables = params.iter().map(|(n, t)| (n.clone(), t.shallow_clone()));
        let mut optimizer = Optimizer::new(&choice, variables, 0.01).expect("optimizer");
        optimizer.flatten = flatten;
        optimizer
    }

    /// A loss whose gradients differ per element and per step.
    fn backward(params: &[(String, Tensor)], step: i64) {
        let loss = params
            .iter()
            .enumerate()
            .map(|(index, (_, p))| {
                let weight = Tensor::arange(p.numel() as i64, tch::kind::FLOAT_CPU)
                    .reshape(p.size())
                    .sin()
                    * (index as f64 + 1.0 + step as f64);
                (p * weight).pow_tensor_scalar(2).sum(Kind::Float) + p.sum(Kind::Float)
            })
            .fold(Tensor::zeros([], tch::kind::FLOAT_CPU), |a, b| a + b);
        loss.backward();
    }

    fn run(optimizer: &mut Optimizer, params: &[(String, Tensor)], steps: i64, clip: Option<f64>) {
        for step in 0..steps {
            optimizer.zero_grad();
            backward(params, step);
            match clip {
                Some(max_norm) => optimizer.clip_and_step(max_norm),
                None => optimizer.step(),
            }
        }
    }

    fn max_difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
        a.iter()
            .zip(b)
            .map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[]))
            .fold(0.0, f64::max)
    }

    #[test]
    fn the_flat_update_equals_the_per_parameter_update() {
        for name in [OptimizerName::Sgd, OptimizerName::AdamW] {
            for clip in [None, Some(0.5)] {
                let flat_params = parameters(1);
                let plain_params = parameters(1);
                let mut flat = optimizer(name, &flat_params, true);
                let mut plain = optimizer(name, &plain_params, false);
                run(&mut flat, &flat_params, 4, clip);
                run(&mut plain, &plain_params, 4, clip);
                assert!(
                    flat.flat.iter().all(Option::is_some),
                    "{name:?}: not flattened"
                );
                assert!(plain.flat.iter().all(Option::is_none));
                let difference = max_difference(&flat_params, &plain_params);
                // Elementwise updates are the same operations on the same values; only
                // the clipping norm is summed in another order.
                let bound = if clip.is_some() { 1e-6 } else { 0.0 };
                assert!(difference <= bound, "{name:?} clip {clip:?}: {difference}");
                let moved = max_difference(&flat_params, &parameters(1));
                assert!(moved > 1e-3, "{name:?}: the parameters did not move");
            }
        }
    }

    #[test]
    fn the_state_survives_a_checkpoint_of_a_flat_optimizer() {
        for name in [OptimizerName::Sgd, OptimizerName::AdamW] {
            let params = parameters(2);
            let mut first = optimizer(name, &params, true);
            run(&mut first, &params, 2, None);
            let state: Vec<(String, Tensor)> = first
                .state_tensors()
                .into_iter()
                .map(|(key, tensor)| (key, tensor.copy()))
                .collect();
            let slots = if name == OptimizerName::AdamW { 2 } else { 1 };
            assert_eq!(state.len(), SHAPES.len() * slots, "{name:?}");

            // A resumed optimiser on copies of the weights takes the same next step.
            let resumed_params: Vec<(String, Tensor)> = params
                .iter()
                .map(|(n, t)| (n.clone(), t.detach().copy().set_requires_grad(true)))
                .collect();
            let mut resumed = optimizer(name, &resumed_params, true);
            resumed.steps = first.steps;
            resumed.load_state_tensors(state).expect("loads");
            run(&mut first, &params, 1, None);
            run(&mut resumed, &resumed_params, 1, None);
            assert_eq!(max_difference(&params, &resumed_params), 0.0, "{name:?}");
        }
    }

    /// State for only some of a group's parameters cannot be flat: that group steps
    /// parameter by parameter, as the plain optimiser does.
    #[test]
    fn partial_state_falls_back_to_per_parameter_steps() {
        let flat_params = parameters(3);
        let plain_params = parameters(3);
        let mut flat = optimizer(OptimizerName::Sgd, &flat_params, true);
        let mut plain = optimizer(OptimizerName::Sgd, &plain_params, false);
        let partial = vec![(
            "momentum_buffer/model.0.bn.weight".to_owned(),
            Tensor::ones([4], tch::kind::FLOAT_CPU),
        )];
        flat.load_state_tensors(partial.iter().map(|(k, t)| (k.clone(), t.copy())))
            .expect("loads");
        plain.load_state_tensors(partial).expect("loads");
        run(&mut flat, &flat_params, 3, None);
        run(&mut plain, &plain_params, 3, None);
        assert_eq!(max_difference(&flat_params, &plain_params), 0.0);
    }
}
