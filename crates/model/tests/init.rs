//! A fresh model starts where PyTorch's would: every convolution weight (and the
//! head's output biases) uniform in `±1/sqrt(fan_in)`, `nn.Conv2d`'s default that
//! Ultralytics keeps. Training from scratch depends on this scale (AdamW moves each
//! weight by about the learning rate, so a wider start learns proportionally slower).

use cardet_model::{Detector, Scale};
use tch::Device;

#[test]
fn fresh_conv_weights_follow_pytorch_default_init() {
    tch::manual_seed(0);
    let names: Vec<String> = (0..80).map(|i| format!("class{i}")).collect();
    let detector = Detector::new(Scale::N, names, Device::Cpu);
    let mut checked = 0;
    for (name, tensor) in detector.vs.variables() {
        let is_conv_weight = name.ends_with("conv.weight")
            || (name.starts_with("model.22.cv") && name.ends_with(".2.weight"));
        let is_head_bias = name.starts_with("model.22.cv") && name.ends_with(".2.bias");
        if !(is_conv_weight || is_head_bias) || name.contains("dfl") {
            continue;
        }
        let fan_in = if is_conv_weight {
            tensor.size()[1..].iter().product::<i64>()
        } else {
            // The bias of a 1x1 conv: fan_in is its weight's input channels.
            let weight = detector.vs.variables()[&name.replace(".bias", ".weight")].shallow_clone();
            weight.size()[1..].iter().product::<i64>()
        };
        let bound = 1.0 / (fan_in as f64).sqrt();
        let largest = tensor.abs().max().double_value(&[]);
        assert!(
            largest <= bound * (1.0 + 1e-6),
            "{name}: |w| {largest} > {bound}"
        );
        if is_conv_weight && tensor.numel() >= 2_000 {
            // Uniform(-b, b) has standard deviation b/sqrt(3).
            let std = tensor.std(true).double_value(&[]);
            let expected = bound / 3f64.sqrt();
            assert!(
                (std / expected - 1.0).abs() < 0.1,
                "{name}: std {std}, PyTorch's default gives {expected}"
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "checked {checked} weights");
}
