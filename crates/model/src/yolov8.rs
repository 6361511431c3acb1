//! YOLOv8 detection, one struct per Ultralytics module, so every tch path is the
//! Ultralytics state-dict key (`model.22.cv2.0.1.bn.running_var`, ...).
//!
//! The layer list mirrors `ultralytics/cfg/models/v8/yolov8.yaml`; the scales are its
//! `scales:` table. Blocks follow `ultralytics/nn/modules/{conv,block,head}.py`: v8's
//! Detect head is the "legacy" one (plain `Conv` in `cv3`) and its SPPF keeps the SiLU
//! on `cv1`.

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// DFL bins per box side (Ultralytics' `reg_max`).
pub const REG_MAX: i64 = 16;
/// Strides of the three detection levels P3, P4, P5.
pub const STRIDES: [i64; 3] = [8, 16, 32];
/// Ultralytics' BatchNorm2d settings (set in `initialize_weights`), not tch's defaults.
pub const BN_EPS: f64 = 1e-3;
pub const BN_MOMENTUM: f64 = 0.03;

/// A model size: `yolov8{n,s,m,l,x}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scale {
    N,
    S,
    M,
    L,
    X,
}

impl std::fmt::Display for Scale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// Ultralytics' compound scaling constants: depth, width, max channels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleFactors {
    pub depth: f64,
    pub width: f64,
    pub max_channels: i64,
}

/// `scales:` of `yolov8.yaml`, as data.
const SCALES: [(Scale, ScaleFactors); 5] = [
    (Scale::N, factors(0.33, 0.25, 1024)),
    (Scale::S, factors(0.33, 0.50, 1024)),
    (Scale::M, factors(0.67, 0.75, 768)),
    (Scale::L, factors(1.00, 1.00, 512)),
    (Scale::X, factors(1.00, 1.25, 512)),
];

const fn factors(depth: f64, width: f64, max_channels: i64) -> ScaleFactors {
    ScaleFactors {
        depth,
        width,
        max_channels,
    }
}

impl Scale {
    pub const ALL: [Scale; 5] = [Scale::N, Scale::S, Scale::M, Scale::L, Scale::X];

    pub fn factors(self) -> ScaleFactors {
        SCALES
            .iter()
            .find(|(scale, _)| *scale == self)
            .map(|(_, factors)| *factors)
            .unwrap_or(SCALES[0].1)
    }

    /// The letter Ultralytics uses in `yolov8n.yaml`.
    pub fn letter(self) -> char {
        match self {
            Scale::N => 'n',
            Scale::S => 's',
            Scale::M => 'm',
            Scale::L => 'l',
            Scale::X => 'x',
        }
    }

    pub fn from_letter(letter: &str) -> Option<Scale> {
        Scale::ALL
            .into_iter()
            .find(|scale| letter.len() == 1 && letter.starts_with(scale.letter()))
    }

    /// Output channels of a layer whose yaml asks for `channels` (`make_divisible(min(c, max) * width, 8)`).
    pub fn channels(self, channels: i64) -> i64 {
        let factors = self.factors();
        let scaled = channels.min(factors.max_channels) as f64 * factors.width;
        ((scaled / 8.0).ceil() as i64) * 8
    }

    /// Repeats of a block whose yaml asks for `repeats` (`max(round(n * depth), 1)`).
    pub fn repeats(self, repeats: i64) -> i64 {
        if repeats > 1 {
            ((repeats as f64 * self.factors().depth).round() as i64).max(1)
        } else {
            repeats
        }
    }
}

/// Which network to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub scale: Scale,
    pub num_classes: i64,
}

/// `Conv`: Conv2d (no bias) + BatchNorm2d + SiLU (or no activation).
#[derive(Debug)]
pub struct Conv {
    pub conv: nn::Conv2D,
    pub bn: nn::BatchNorm,
    pub num_batches_tracked: Tensor,
    pub stride: i64,
    pub act: bool,
}

/// PyTorch's `nn.Conv2d` initialisation, which Ultralytics keeps: weights
/// `kaiming_uniform_(a=sqrt(5))` and biases alike, both uniform in
/// `±1/sqrt(fan_in)`. tch's default (Kaiming with the ReLU gain) is 2.45 times wider
/// and zero biases; with AdamW's fixed-size steps that scale alone slowed learning
/// from scratch measurably (`cargo xtask bench train`).
pub fn torch_default_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

impl Conv {
    pub fn new(p: nn::Path, c1: i64, c2: i64, k: i64, s: i64) -> Conv {
        Conv::with_act(p, c1, c2, k, s, true)
    }

    pub fn with_act(p: nn::Path, c1: i64, c2: i64, k: i64, s: i64, act: bool) -> Conv {
        let conv_config = nn::ConvConfig {
            stride: s,
            padding: k / 2,
            bias: false,
            ws_init: torch_default_init(c1 * k * k),
            ..Default::default()
        };
        let conv = nn::conv2d(&p / "conv", c1, c2, k, conv_config);
        let bn_path = &p / "bn";
        let bn = nn::batch_norm2d(
            &bn_path,
            c2,
            nn::BatchNormConfig {
                eps: BN_EPS,
                momentum: BN_MOMENTUM,
                ..Default::default()
            },
        );
        // PyTorch keeps this counter in every BatchNorm's state dict; carrying it keeps
        // the key sets equal, so a checkpoint round-trips through our VarStore.
        let num_batches_tracked = bn_path.add(
            "num_batches_tracked",
            Tensor::zeros([], (Kind::Int64, p.device())),
            false,
        );
        Conv {
            conv,
            bn,
            num_batches_tracked,
            stride: s,
            act,
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        let mut ys = self.bn.forward_t(&xs.apply(&self.conv), train);
        match (self.act, ys.requires_grad()) {
            // Without autograd the activation may overwrite its input: one
            // activation-sized allocation less per layer, which at batch 8 is
            // page faults on fresh memory (see BENCHMARKS.md, model).
            (true, false) => {
                let _ = ys.silu_();
                ys
            }
            (true, true) => ys.silu(),
            (false, _) => ys,
        }
    }
}

/// `Bottleneck` with `k=(3, 3)` and `e=1.0`, as C2f builds it.
#[derive(Debug)]
pub struct Bottleneck {
    pub cv1: Conv,
    pub cv2: Conv,
    pub add: bool,
}

impl Bottleneck {
    pub fn new(p: nn::Path, c1: i64, c2: i64, shortcut: bool) -> Bottleneck {
        Bottleneck {
            cv1: Conv::new(&p / "cv1", c1, c2, 3, 1),
            cv2: Conv::new(&p / "cv2", c2, c2, 3, 1),
            add: shortcut && c1 == c2,
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = self.cv2.forward_t(&self.cv1.forward_t(xs, train), train);
        match (self.add, ys.requires_grad()) {
            (true, false) => {
                ys += xs;
                ys
            }
            (true, true) => xs + ys,
            (false, _) => ys,
        }
    }
}

/// `C2f`: split in two, a chain of bottlenecks on the second half, concatenate all.
#[derive(Debug)]
pub struct C2f {
    pub hidden: i64,
    pub cv1: Conv,
    pub cv2: Conv,
    pub m: Vec<Bottleneck>,
}

impl C2f {
    pub fn new(p: nn::Path, c1: i64, c2: i64, n: i64, shortcut: bool) -> C2f {
        let hidden = c2 / 2;
        let m_path = &p / "m";
        C2f {
            hidden,
            cv1: Conv::new(&p / "cv1", c1, 2 * hidden, 1, 1),
            cv2: Conv::new(&p / "cv2", (2 + n) * hidden, c2, 1, 1),
            m: (0..n)
                .map(|i| Bottleneck::new(&m_path / i, hidden, hidden, shortcut))
                .collect(),
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = self.cv1.forward_t(xs, train).chunk(2, 1);
        for bottleneck in &self.m {
            let next = bottleneck.forward_t(&ys[ys.len() - 1], train);
            ys.push(next);
        }
        self.cv2.forward_t(&Tensor::cat(&ys, 1), train)
    }
}

/// `SPPF`: three chained 5x5 max pools, concatenated.
#[derive(Debug)]
pub struct Sppf {
    pub cv1: Conv,
    pub cv2: Conv,
    pub k: i64,
}

impl Sppf {
    pub fn new(p: nn::Path, c1: i64, c2: i64, k: i64) -> Sppf {
        let hidden = c1 / 2;
        Sppf {
            cv1: Conv::new(&p / "cv1", c1, hidden, 1, 1),
            cv2: Conv::new(&p / "cv2", hidden * 4, c2, 1, 1),
            k,
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = vec![self.cv1.forward_t(xs, train)];
        for _ in 0..3 {
            let pooled = ys[ys.len() - 1].max_pool2d(
                [self.k, self.k],
                [1, 1],
                [self.k / 2, self.k / 2],
                [1, 1],
                false,
            );
            ys.push(pooled);
        }
        self.cv2.forward_t(&Tensor::cat(&ys, 1), train)
    }
}

/// `DFL`: the expectation of a softmax over `reg_max` bins, as a fixed 1x1 convolution.
#[derive(Debug)]
pub struct Dfl {
    pub conv_weight: Tensor,
    pub c1: i64,
}

impl Dfl {
    pub fn new(p: nn::Path, c1: i64) -> Dfl {
        let bins = Tensor::arange(c1, (Kind::Float, p.device())).view([1, c1, 1, 1]);
        Dfl {
            conv_weight: (&p / "conv").add("weight", bins, false),
            c1,
        }
    }

    /// `[N, 4 * c1, A]` distributions to `[N, 4, A]` distances (in strides).
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let (n, _, a) = xs.size3().unwrap_or((0, 0, 0));
        xs.view([n, 4, self.c1, a])
            .transpose(2, 1)
            .softmax(1, Kind::Float)
            .conv2d(&self.conv_weight, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
            .view([n, 4, a])
    }
}

/// One level's branch of the head: `Conv, Conv, Conv2d` (an `nn.Sequential`).
#[derive(Debug)]
pub struct Branch {
    pub conv0: Conv,
    pub conv1: Conv,
    pub conv2: nn::Conv2D,
}

impl Branch {
    fn new(p: nn::Path, c1: i64, hidden: i64, c2: i64) -> Branch {
        Branch {
            conv0: Conv::new(&p / 0, c1, hidden, 3, 1),
            conv1: Conv::new(&p / 1, hidden, hidden, 3, 1),
            conv2: nn::conv2d(
                &p / 2,
                hidden,
                c2,
                1,
                nn::ConvConfig {
                    ws_init: torch_default_init(hidden),
                    bs_init: torch_default_init(hidden),
                    ..Default::default()
                },
            ),
        }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.conv1
            .forward_t(&self.conv0.forward_t(xs, train), train)
            .apply(&self.conv2)
    }
}

/// What the head gives: raw per-level maps plus the anchor grid the loss and the
/// decoder both need.
#[derive(Debug)]
pub struct HeadOutput {
    /// Per level `[N, 4 * REG_MAX + classes, H_i, W_i]`: box distributions, then class logits.
    pub pred: Vec<Tensor>,
    /// `[A, 2]` anchor centres in grid units (x, y), levels P3, P4, P5 in order.
    pub anchors: Tensor,
    /// `[A, 1]` the stride of each anchor's level.
    pub strides: Tensor,
}

/// `Detect`: decoupled box (`cv2`) and class (`cv3`) branches per level, plus the DFL.
#[derive(Debug)]
pub struct Detect {
    pub num_classes: i64,
    pub cv2: Vec<Branch>,
    pub cv3: Vec<Branch>,
    pub dfl: Dfl,
}

impl Detect {
    pub fn new(p: nn::Path, num_classes: i64, channels: [i64; 3]) -> Detect {
        let box_hidden = 16.max(channels[0] / 4).max(REG_MAX * 4);
        let class_hidden = channels[0].max(num_classes.min(100));
        let (cv2_path, cv3_path) = (&p / "cv2", &p / "cv3");
        Detect {
            num_classes,
            cv2: (0..3)
                .map(|i| Branch::new(&cv2_path / i, channels[i], box_hidden, 4 * REG_MAX))
                .collect(),
            cv3: (0..3)
                .map(|i| Branch::new(&cv3_path / i, channels[i], class_hidden, num_classes))
                .collect(),
            dfl: Dfl::new(&p / "dfl", REG_MAX),
        }
    }

    pub fn forward_t(&self, features: [&Tensor; 3], train: bool) -> HeadOutput {
        let pred: Vec<Tensor> = (0..3)
            .map(|i| {
                Tensor::cat(
                    &[
                        self.cv2[i].forward_t(features[i], train),
                        self.cv3[i].forward_t(features[i], train),
                    ],
                    1,
                )
            })
            .collect();
        let (anchors, strides) = make_anchors(&pred, &STRIDES, 0.5);
        HeadOutput {
            pred,
            anchors,
            strides,
        }
    }

    /// `[N, 4 + classes, A]`: boxes as cx, cy, w, h in input pixels, sigmoid class scores.
    pub fn decode(&self, head: &HeadOutput) -> Tensor {
        let n = head.pred[0].size()[0];
        let no = 4 * REG_MAX + self.num_classes;
        let flat: Vec<Tensor> = head.pred.iter().map(|p| p.view([n, no, -1])).collect();
        let flat = Tensor::cat(&flat, 2);
        let boxes = flat.narrow(1, 0, 4 * REG_MAX);
        let scores = flat.narrow(1, 4 * REG_MAX, self.num_classes);
        let distances = self.dfl.forward(&boxes);
        let anchors = head.anchors.transpose(0, 1).unsqueeze(0);
        let dbox = dist2bbox(&distances, &anchors, true, 1) * head.strides.transpose(0, 1);
        Tensor::cat(&[dbox, scores.sigmoid()], 1)
    }
}

/// The whole YOLOv8 detector, `model.0` to `model.22`.
#[derive(Debug)]
pub struct YoloV8 {
    pub config: Config,
    pub b0: Conv,
    pub b1: Conv,
    pub b2: C2f,
    pub b3: Conv,
    pub b4: C2f,
    pub b5: Conv,
    pub b6: C2f,
    pub b7: Conv,
    pub b8: C2f,
    pub b9: Sppf,
    // 10 upsample, 11 concat with 6
    pub h12: C2f,
    // 13 upsample, 14 concat with 4
    pub h15: C2f,
    pub h16: Conv,
    // 17 concat with 12
    pub h18: C2f,
    pub h19: Conv,
    // 20 concat with 9
    pub h21: C2f,
    pub detect: Detect,
}

impl YoloV8 {
    /// Builds the net under `p` (use the VarStore's root: keys start at `model.`).
    pub fn new(p: &nn::Path, config: Config) -> YoloV8 {
        let scale = config.scale;
        let c = |channels: i64| scale.channels(channels);
        let n = |repeats: i64| scale.repeats(repeats);
        let m = p / "model";
        let (c64, c128, c256, c512, c1024) = (c(64), c(128), c(256), c(512), c(1024));
        YoloV8 {
            config,
            b0: Conv::new(&m / 0, 3, c64, 3, 2),
            b1: Conv::new(&m / 1, c64, c128, 3, 2),
            b2: C2f::new(&m / 2, c128, c128, n(3), true),
            b3: Conv::new(&m / 3, c128, c256, 3, 2),
            b4: C2f::new(&m / 4, c256, c256, n(6), true),
            b5: Conv::new(&m / 5, c256, c512, 3, 2),
            b6: C2f::new(&m / 6, c512, c512, n(6), true),
            b7: Conv::new(&m / 7, c512, c1024, 3, 2),
            b8: C2f::new(&m / 8, c1024, c1024, n(3), true),
            b9: Sppf::new(&m / 9, c1024, c1024, 5),
            h12: C2f::new(&m / 12, c1024 + c512, c512, n(3), false),
            h15: C2f::new(&m / 15, c512 + c256, c256, n(3), false),
            h16: Conv::new(&m / 16, c256, c256, 3, 2),
            h18: C2f::new(&m / 18, c256 + c512, c512, n(3), false),
            h19: Conv::new(&m / 19, c512, c512, 3, 2),
            h21: C2f::new(&m / 21, c512 + c1024, c1024, n(3), false),
            detect: Detect::new(&m / 22, config.num_classes, [c256, c512, c1024]),
        }
    }

    /// Runs backbone, neck and head. `train` selects batch statistics in BatchNorm.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> HeadOutput {
        let xs = match xs.device() {
            Device::Cpu => channels_last(xs),
            _ => xs.shallow_clone(),
        };
        let x0 = self.b0.forward_t(&xs, train);
        let x1 = self.b1.forward_t(&x0, train);
        let x2 = self.b2.forward_t(&x1, train);
        let x3 = self.b3.forward_t(&x2, train);
        let x4 = self.b4.forward_t(&x3, train);
        let x5 = self.b5.forward_t(&x4, train);
        let x6 = self.b6.forward_t(&x5, train);
        let x7 = self.b7.forward_t(&x6, train);
        let x8 = self.b8.forward_t(&x7, train);
        let x9 = self.b9.forward_t(&x8, train);
        let x12 = self
            .h12
            .forward_t(&Tensor::cat(&[upsample(&x9), x6], 1), train);
        let x15 = self
            .h15
            .forward_t(&Tensor::cat(&[upsample(&x12), x4], 1), train);
        let x16 = self.h16.forward_t(&x15, train);
        let x18 = self
            .h18
            .forward_t(&Tensor::cat(&[x16, x12.shallow_clone()], 1), train);
        let x19 = self.h19.forward_t(&x18, train);
        let x21 = self.h21.forward_t(&Tensor::cat(&[x19, x9], 1), train);
        self.detect.forward_t([&x15, &x18, &x21], train)
    }

    /// Inference: `[N, 4 + classes, A]` with boxes cx, cy, w, h in input pixels and sigmoid
    /// scores, the layout of Ultralytics' `output0`.
    pub fn predict(&self, xs: &Tensor) -> Tensor {
        let head = self.forward_t(xs, false);
        self.detect.decode(&head)
    }
}

/// The same `[N, C, H, W]` tensor laid out channels-last (NHWC strides).
///
/// On CPU, oneDNN's convolutions then work in place of reordering every input and
/// output from NCHW: PyTorch propagates the layout through convolution, BatchNorm,
/// SiLU, pooling, upsampling and concatenation, so converting the network's input
/// is enough. Measured on yolov8n at 640 (BENCHMARKS.md, model): a quarter less
/// time at batch 8, level at batch 1; about 5% less for a training step.
pub fn channels_last(xs: &Tensor) -> Tensor {
    if xs.dim() != 4 {
        return xs.shallow_clone();
    }
    xs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// `nn.Upsample(scale_factor=2, mode="nearest")`.
pub fn upsample(xs: &Tensor) -> Tensor {
    let (_, _, h, w) = xs.size4().unwrap_or((0, 0, 0, 0));
    xs.upsample_nearest2d([h * 2, w * 2], Some(2.0), Some(2.0))
}

/// Ultralytics' `make_anchors`: grid-cell centres `[A, 2]` (x, y) and strides `[A, 1]`.
pub fn make_anchors(feats: &[Tensor], strides: &[i64], offset: f64) -> (Tensor, Tensor) {
    let device = feats.first().map_or(Device::Cpu, Tensor::device);
    let options = (Kind::Float, device);
    let mut anchor_points = Vec::new();
    let mut stride_tensor = Vec::new();
    for (feat, stride) in feats.iter().zip(strides) {
        let size = feat.size();
        let (h, w) = (size[2], size[3]);
        let sx = Tensor::arange(w, options) + offset;
        let sy = Tensor::arange(h, options) + offset;
        let grid = Tensor::meshgrid_indexing(&[sy, sx], "ij");
        anchor_points.push(Tensor::stack(&[&grid[1], &grid[0]], -1).view([-1, 2]));
        stride_tensor.push(Tensor::full([h * w, 1], *stride as f64, options));
    }
    (
        Tensor::cat(&anchor_points, 0),
        Tensor::cat(&stride_tensor, 0),
    )
}

/// Ultralytics' `dist2bbox`: (left, top, right, bottom) distances from anchor points to
/// boxes, as (cx, cy, w, h) when `xywh` else (x1, y1, x2, y2), along `dim`.
pub fn dist2bbox(distance: &Tensor, anchor_points: &Tensor, xywh: bool, dim: i64) -> Tensor {
    let halves = distance.chunk(2, dim);
    let x1y1 = anchor_points - &halves[0];
    let x2y2 = anchor_points + &halves[1];
    if xywh {
        let c_xy = (&x1y1 + &x2y2) / 2.0;
        let wh = x2y2 - x1y1;
        Tensor::cat(&[c_xy, wh], dim)
    } else {
        Tensor::cat(&[x1y1, x2y2], dim)
    }
}
