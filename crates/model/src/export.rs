//! ONNX export: the inference graph of [`YoloV8`] with every BatchNorm folded into its
//! convolution, laid out as Ultralytics exports it.
//!
//! Input `images` `[batch, 3, H, W]` (dynamic batch; H and W fixed, or any multiple
//! of 32 with [`ExportOptions::dynamic_size`]), output `output0`
//! `[batch, 4 + classes, anchors]`: boxes cx, cy, w, h in input pixels, then sigmoid
//! class scores. Anchors and strides are constants for a fixed input size, and
//! computed in the graph from the feature maps' shapes for a dynamic one. Class
//! names go in the metadata key `names` as Ultralytics writes them (a Python dict repr).

use std::path::{Path, PathBuf};

pub use cardet_onnx_export::triton::InstanceKind;
use cardet_onnx_export::triton::{TensorConfig, TritonConfig};
use cardet_onnx_export::{
    Dim, GraphBuilder, ModelInfo, attr_float, attr_int, attr_ints, attr_string, proto,
};
use tch::{Kind, Tensor};

use crate::yolov8::{BN_EPS, Branch, C2f, Conv, Detect, REG_MAX, STRIDES, Sppf, make_anchors};
use crate::{Error, YoloV8};

/// The opset we write: the oldest with every operator form used here (Split with a
/// `split` input, Resize 13) that Triton 23.09's ONNX Runtime and onnx 1.23 both take.
pub const OPSET: i64 = 17;

/// Where and how to export.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportOptions {
    /// The input size; with `dynamic_size`, the nominal one (metadata `imgsz`).
    pub height: i64,
    pub width: i64,
    /// Height and width left variable (any multiple of 32), as Ultralytics'
    /// `dynamic=True` exports them: a client can then send a 720p frame at 640x384
    /// instead of the 640x640 square (rectangular letterbox).
    pub dynamic_size: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            height: 640,
            width: 640,
            dynamic_size: false,
        }
    }
}

/// Builds the ONNX model of `net` for `options`' input size.
pub fn export_onnx(
    net: &YoloV8,
    names: &[String],
    options: &ExportOptions,
) -> Result<proto::ModelProto, Error> {
    let (height, width) = (options.height, options.width);
    if height <= 0 || width <= 0 || height % 32 != 0 || width % 32 != 0 {
        return Err(Error::Export(format!(
            "input size {height}x{width} is not a positive multiple of 32"
        )));
    }
    if names.len() as i64 != net.config.num_classes {
        return Err(Error::Export(format!(
            "{} class names for a model of {} classes",
            names.len(),
            net.config.num_classes
        )));
    }
    let mut emitter = Emitter {
        graph: GraphBuilder::new(),
    };
    let no = 4 + net.config.num_classes;
    let fixed_size = (!options.dynamic_size).then_some((height, width));
    let (height_dim, width_dim, anchors_dim) = match fixed_size {
        Some(_) => (
            Dim::fixed(height),
            Dim::fixed(width),
            Dim::fixed(anchor_count(height, width)),
        ),
        None => (
            Dim::symbolic("height"),
            Dim::symbolic("width"),
            Dim::symbolic("anchors"),
        ),
    };
    emitter.graph.input_f32(
        "images",
        &[Dim::symbolic("batch"), Dim::fixed(3), height_dim, width_dim],
    );
    tch::no_grad(|| emitter.net(net, "images", fixed_size))?;
    emitter.graph.output_f32(
        "output0",
        &[Dim::symbolic("batch"), Dim::fixed(no), anchors_dim],
    );
    let scale = net.config.scale;
    let info = ModelInfo {
        graph_name: "main_graph",
        opset: OPSET,
        producer_name: "cardet",
        producer_version: env!("CARGO_PKG_VERSION"),
        metadata: vec![
            ("description".into(), format!("cardet YOLOv8{scale} model")),
            ("author".into(), "cardet".into()),
            ("version".into(), env!("CARGO_PKG_VERSION").into()),
            ("license".into(), "Apache-2.0".into()),
            ("stride".into(), "32".into()),
            ("task".into(), "detect".into()),
            ("batch".into(), "1".into()),
            ("imgsz".into(), format!("[{height}, {width}]")),
            ("names".into(), python_names(names)),
            (
                "args".into(),
                format!("{{'batch': 1, 'dynamic': True, 'opset': {OPSET}}}"),
            ),
            ("channels".into(), "3".into()),
            ("end2end".into(), "False".into()),
        ],
    };
    Ok(emitter.graph.into_model(&info))
}

/// Anchors of a `height` x `width` input: one per cell of the stride 8, 16 and 32 grids.
pub fn anchor_count(height: i64, width: i64) -> i64 {
    STRIDES
        .iter()
        .map(|stride| (height / stride) * (width / stride))
        .sum()
}

/// Where [`write_model_repository`] puts things.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRepository {
    /// The model's folder, `<repo>/<name>`.
    pub model_dir: PathBuf,
    pub onnx_path: PathBuf,
    pub config_path: PathBuf,
}

/// How Triton should serve the export.
#[derive(Clone, Debug, PartialEq)]
pub struct RepositoryOptions {
    pub name: String,
    pub version: u32,
    pub max_batch_size: i64,
    pub instance_kind: InstanceKind,
    pub instance_count: u32,
}

/// Writes `<repo>/<name>/<version>/model.onnx` and `<repo>/<name>/config.pbtxt`.
pub fn write_model_repository(
    repo: &Path,
    model: &proto::ModelProto,
    options: &RepositoryOptions,
) -> Result<ModelRepository, Error> {
    let (input_dims, output_dims) = io_dims(model)?;
    let model_dir = repo.join(&options.name);
    let version_dir = model_dir.join(options.version.to_string());
    std::fs::create_dir_all(&version_dir).map_err(|source| Error::Write {
        path: version_dir.clone(),
        source,
    })?;
    let onnx_path = version_dir.join("model.onnx");
    write(&onnx_path, &cardet_onnx_export::encode(model))?;
    let config = TritonConfig {
        name: options.name.clone(),
        max_batch_size: options.max_batch_size,
        inputs: vec![TensorConfig {
            name: "images".into(),
            dims: input_dims,
        }],
        outputs: vec![TensorConfig {
            name: "output0".into(),
            dims: output_dims,
        }],
        preferred_batch_sizes: Vec::new(),
        max_queue_delay_microseconds: 1000,
        instance_kind: options.instance_kind,
        instance_count: options.instance_count,
    };
    let config_path = model_dir.join("config.pbtxt");
    write(&config_path, config.to_pbtxt().as_bytes())?;
    Ok(ModelRepository {
        model_dir,
        onnx_path,
        config_path,
    })
}

/// The per-item dims (batch axis dropped) of `images` and `output0`.
fn io_dims(model: &proto::ModelProto) -> Result<(Vec<i64>, Vec<i64>), Error> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Export("the model has no graph".into()))?;
    let dims = |values: &[proto::ValueInfoProto], name: &str| -> Result<Vec<i64>, Error> {
        let value = values
            .iter()
            .find(|v| v.name.as_deref() == Some(name))
            .ok_or_else(|| Error::Export(format!("the graph has no {name}")))?;
        let Some(proto::type_proto::Value::TensorType(tensor)) =
            value.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(Error::Export(format!("{name} is not a tensor")));
        };
        let shape = tensor
            .shape
            .as_ref()
            .map(|s| s.dim.as_slice())
            .unwrap_or(&[]);
        Ok(shape
            .iter()
            .skip(1)
            .map(|d| match d.value {
                Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)) => v,
                _ => -1,
            })
            .collect())
    };
    Ok((
        dims(&graph.input, "images")?,
        dims(&graph.output, "output0")?,
    ))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Conv weight and bias with the BatchNorm folded in:
/// `w' = w * gamma / sqrt(var + eps)`, `b' = beta - mean * gamma / sqrt(var + eps)`.
pub fn fold_batch_norm(conv: &Conv) -> Result<(Tensor, Tensor), Error> {
    let double = |t: &Tensor| t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Double);
    let weight = double(&conv.conv.ws);
    let bn = &conv.bn;
    let (gamma, beta) = match (&bn.ws, &bn.bs) {
        (Some(gamma), Some(beta)) => (double(gamma), double(beta)),
        _ => return Err(Error::Export("a BatchNorm without affine weights".into())),
    };
    let scale = gamma / (double(&bn.running_var) + BN_EPS).sqrt();
    let folded_weight = &weight * scale.view([-1, 1, 1, 1]);
    let folded_bias = beta - double(&bn.running_mean) * &scale;
    Ok((
        folded_weight.to_kind(Kind::Float),
        folded_bias.to_kind(Kind::Float),
    ))
}

/// Python's `repr` of `{0: 'car', 1: 'truck'}`, as Ultralytics writes `names`.
pub fn python_names(names: &[String]) -> String {
    let items: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(index, name)| format!("{index}: {}", python_str_repr(name)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// Python's `repr(str)`: single quotes unless the text has a `'` and no `"`.
pub fn python_str_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::new();
    out.push(quote);
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Reads `names` back from the metadata: `{0: 'car', 1: "it's"}` to `["car", "it's"]`.
/// Keys must be 0, 1, 2, ... in order; anything else is `None`.
pub fn parse_python_names(text: &str) -> Option<Vec<String>> {
    let mut chars = text.trim().chars().peekable();
    let mut names = Vec::new();
    if chars.next()? != '{' {
        return None;
    }
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek() == Some(&'}') {
            chars.next();
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.peek().copied().filter(char::is_ascii_digit) {
            key.push(c);
            chars.next();
        }
        if key.parse::<usize>().ok()? != names.len() {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next()? != ':' {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let quote = chars.next().filter(|c| *c == '\'' || *c == '"')?;
        let mut name = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => name.push('\n'),
                    'r' => name.push('\r'),
                    't' => name.push('\t'),
                    'x' => {
                        let hex: String = [chars.next()?, chars.next()?].iter().collect();
                        name.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    other => name.push(other),
                },
                c if c == quote => break,
                c => name.push(c),
            }
        }
        names.push(name);
    }
    chars.next().is_none().then_some(names)
}

struct Emitter {
    graph: GraphBuilder,
}

impl Emitter {
    /// The whole network; `fixed_size` is `(height, width)`, `None` for any size.
    fn net(
        &mut self,
        net: &YoloV8,
        images: &str,
        fixed_size: Option<(i64, i64)>,
    ) -> Result<(), Error> {
        let x0 = self.conv(&net.b0, "model.0", images)?;
        let x1 = self.conv(&net.b1, "model.1", &x0)?;
        let x2 = self.c2f(&net.b2, "model.2", &x1)?;
        let x3 = self.conv(&net.b3, "model.3", &x2)?;
        let x4 = self.c2f(&net.b4, "model.4", &x3)?;
        let x5 = self.conv(&net.b5, "model.5", &x4)?;
        let x6 = self.c2f(&net.b6, "model.6", &x5)?;
        let x7 = self.conv(&net.b7, "model.7", &x6)?;
        let x8 = self.c2f(&net.b8, "model.8", &x7)?;
        let x9 = self.sppf(&net.b9, "model.9", &x8)?;
        let x10 = self.upsample("model.10", &x9);
        let x11 = self.concat("/model.11/Concat", &[&x10, &x6], 1);
        let x12 = self.c2f(&net.h12, "model.12", &x11)?;
        let x13 = self.upsample("model.13", &x12);
        let x14 = self.concat("/model.14/Concat", &[&x13, &x4], 1);
        let x15 = self.c2f(&net.h15, "model.15", &x14)?;
        let x16 = self.conv(&net.h16, "model.16", &x15)?;
        let x17 = self.concat("/model.17/Concat", &[&x16, &x12], 1);
        let x18 = self.c2f(&net.h18, "model.18", &x17)?;
        let x19 = self.conv(&net.h19, "model.19", &x18)?;
        let x20 = self.concat("/model.20/Concat", &[&x19, &x9], 1);
        let x21 = self.c2f(&net.h21, "model.21", &x20)?;
        self.detect(&net.detect, "model.22", [&x15, &x18, &x21], fixed_size)
    }

    fn conv(&mut self, conv: &Conv, prefix: &str, input: &str) -> Result<String, Error> {
        let (weight, bias) = fold_batch_norm(conv)?;
        let kernel = weight.size()[2];
        let output = self.conv2d(
            &format!("{prefix}.conv"),
            input,
            &weight,
            Some(&bias),
            kernel,
            conv.stride,
        )?;
        Ok(if conv.act {
            self.silu(prefix, &output)
        } else {
            output
        })
    }

    /// A plain Conv2d; `key` is the state-dict prefix of its weight.
    fn conv2d(
        &mut self,
        key: &str,
        input: &str,
        weight: &Tensor,
        bias: Option<&Tensor>,
        kernel: i64,
        stride: i64,
    ) -> Result<String, Error> {
        let weight_name =
            self.graph
                .initializer_f32(&format!("{key}.weight"), &weight.size(), &values(weight)?);
        let mut inputs = vec![input.to_string(), weight_name];
        if let Some(bias) = bias {
            inputs.push(self.graph.initializer_f32(
                &format!("{key}.bias"),
                &bias.size(),
                &values(bias)?,
            ));
        }
        let pad = kernel / 2;
        let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.graph.node(
            "Conv",
            &format!("/{}/Conv", key.replace('.', "/")),
            &input_refs,
            vec![
                attr_ints("dilations", &[1, 1]),
                attr_int("group", 1),
                attr_ints("kernel_shape", &[kernel, kernel]),
                attr_ints("pads", &[pad, pad, pad, pad]),
                attr_ints("strides", &[stride, stride]),
            ],
        ))
    }

    fn silu(&mut self, prefix: &str, input: &str) -> String {
        let base = format!("/{}/act", prefix.replace('.', "/"));
        let sigmoid = self
            .graph
            .node("Sigmoid", &format!("{base}/Sigmoid"), &[input], vec![]);
        self.graph
            .node("Mul", &format!("{base}/Mul"), &[input, &sigmoid], vec![])
    }

    fn c2f(&mut self, block: &C2f, prefix: &str, input: &str) -> Result<String, Error> {
        let y = self.conv(&block.cv1, &format!("{prefix}.cv1"), input)?;
        let split = self.graph.initializer_i64(
            &format!("{prefix}.split"),
            &[2],
            &[block.hidden, block.hidden],
        );
        let mut parts = self.graph.node_n(
            "Split",
            &format!("/{}/Split", prefix.replace('.', "/")),
            &[&y, &split],
            2,
            vec![attr_int("axis", 1)],
        );
        for (index, bottleneck) in block.m.iter().enumerate() {
            let key = format!("{prefix}.m.{index}");
            let last = parts[parts.len() - 1].clone();
            let hidden = self.conv(&bottleneck.cv1, &format!("{key}.cv1"), &last)?;
            let out = self.conv(&bottleneck.cv2, &format!("{key}.cv2"), &hidden)?;
            let out = if bottleneck.add {
                self.graph.node(
                    "Add",
                    &format!("/{}/Add", key.replace('.', "/")),
                    &[&last, &out],
                    vec![],
                )
            } else {
                out
            };
            parts.push(out);
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let cat = self.concat(&format!("/{}/Concat", prefix.replace('.', "/")), &refs, 1);
        self.conv(&block.cv2, &format!("{prefix}.cv2"), &cat)
    }

    fn sppf(&mut self, block: &Sppf, prefix: &str, input: &str) -> Result<String, Error> {
        let mut parts = vec![self.conv(&block.cv1, &format!("{prefix}.cv1"), input)?];
        let (k, pad) = (block.k, block.k / 2);
        for index in 0..3 {
            let last = parts[parts.len() - 1].clone();
            let pooled = self.graph.node(
                "MaxPool",
                &format!("/{}/m/MaxPool_{index}", prefix.replace('.', "/")),
                &[&last],
                vec![
                    attr_int("ceil_mode", 0),
                    attr_ints("dilations", &[1, 1]),
                    attr_ints("kernel_shape", &[k, k]),
                    attr_ints("pads", &[pad, pad, pad, pad]),
                    attr_ints("strides", &[1, 1]),
                ],
            );
            parts.push(pooled);
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let cat = self.concat(&format!("/{}/Concat", prefix.replace('.', "/")), &refs, 1);
        self.conv(&block.cv2, &format!("{prefix}.cv2"), &cat)
    }

    fn upsample(&mut self, prefix: &str, input: &str) -> String {
        let scales =
            self.graph
                .initializer_f32(&format!("{prefix}.scales"), &[4], &[1.0, 1.0, 2.0, 2.0]);
        self.graph.node(
            "Resize",
            &format!("/{}/Resize", prefix.replace('.', "/")),
            &[input, "", &scales],
            vec![
                attr_string("coordinate_transformation_mode", "asymmetric"),
                attr_float("cubic_coeff_a", -0.75),
                attr_string("mode", "nearest"),
                attr_string("nearest_mode", "floor"),
            ],
        )
    }

    fn concat(&mut self, name: &str, inputs: &[&str], axis: i64) -> String {
        self.graph
            .node("Concat", name, inputs, vec![attr_int("axis", axis)])
    }

    fn branch(&mut self, branch: &Branch, key: &str, input: &str) -> Result<String, Error> {
        let hidden = self.conv(&branch.conv0, &format!("{key}.0"), input)?;
        let hidden = self.conv(&branch.conv1, &format!("{key}.1"), &hidden)?;
        let weight = branch.conv2.ws.detach();
        let bias = branch.conv2.bs.as_ref().map(Tensor::detach);
        self.conv2d(&format!("{key}.2"), &hidden, &weight, bias.as_ref(), 1, 1)
    }

    fn detect(
        &mut self,
        head: &Detect,
        prefix: &str,
        features: [&str; 3],
        fixed_size: Option<(i64, i64)>,
    ) -> Result<(), Error> {
        let path = prefix.replace('.', "/");
        let no = 4 * REG_MAX + head.num_classes;
        let flat_shape =
            self.graph
                .initializer_i64(&format!("{prefix}.flat_shape"), &[3], &[0, no, -1]);
        let mut levels = Vec::new();
        for (index, feature) in features.iter().enumerate() {
            let boxes = self.branch(&head.cv2[index], &format!("{prefix}.cv2.{index}"), feature)?;
            let scores =
                self.branch(&head.cv3[index], &format!("{prefix}.cv3.{index}"), feature)?;
            let cat = self.concat(&format!("/{path}/Concat_{index}"), &[&boxes, &scores], 1);
            levels.push(self.graph.node(
                "Reshape",
                &format!("/{path}/Reshape_{index}"),
                &[&cat, &flat_shape],
                vec![],
            ));
        }
        let refs: Vec<&str> = levels.iter().map(String::as_str).collect();
        let all = self.concat(&format!("/{path}/Concat_3"), &refs, 2);
        let split = self.graph.initializer_i64(
            &format!("{prefix}.split"),
            &[2],
            &[4 * REG_MAX, head.num_classes],
        );
        let parts = self.graph.node_n(
            "Split",
            &format!("/{path}/Split"),
            &[&all, &split],
            2,
            vec![attr_int("axis", 1)],
        );
        // -1: the anchors of whatever size the graph is run at.
        let num_anchors = fixed_size.map_or(-1, |(height, width)| anchor_count(height, width));
        // DFL: softmax over the bins, then their expectation as a 1x1 convolution.
        let dfl_shape = self.graph.initializer_i64(
            &format!("{prefix}.dfl.shape"),
            &[4],
            &[0, 4, REG_MAX, num_anchors],
        );
        let bins = self.graph.node(
            "Reshape",
            &format!("/{path}/dfl/Reshape"),
            &[&parts[0], &dfl_shape],
            vec![],
        );
        let bins = self.graph.node(
            "Transpose",
            &format!("/{path}/dfl/Transpose"),
            &[&bins],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let bins = self.graph.node(
            "Softmax",
            &format!("/{path}/dfl/Softmax"),
            &[&bins],
            vec![attr_int("axis", 1)],
        );
        let dfl_weight = head.dfl.conv_weight.detach();
        let distances = self.conv2d(
            &format!("{prefix}.dfl.conv"),
            &bins,
            &dfl_weight,
            None,
            1,
            1,
        )?;
        let box_shape = self.graph.initializer_i64(
            &format!("{prefix}.dfl.box_shape"),
            &[3],
            &[0, 4, num_anchors],
        );
        let distances = self.graph.node(
            "Reshape",
            &format!("/{path}/dfl/Reshape_1"),
            &[&distances, &box_shape],
            vec![],
        );
        let (anchors, strides) = match fixed_size {
            Some((height, width)) => self.constant_anchors(prefix, height, width)?,
            None => self.anchors_of(prefix, features),
        };
        let half = self
            .graph
            .initializer_i64(&format!("{prefix}.half"), &[2], &[2, 2]);
        let lt_rb = self.graph.node_n(
            "Split",
            &format!("/{path}/Split_1"),
            &[&distances, &half],
            2,
            vec![attr_int("axis", 1)],
        );
        let x1y1 = self.graph.node(
            "Sub",
            &format!("/{path}/Sub"),
            &[&anchors, &lt_rb[0]],
            vec![],
        );
        let x2y2 = self.graph.node(
            "Add",
            &format!("/{path}/Add"),
            &[&anchors, &lt_rb[1]],
            vec![],
        );
        let sum = self
            .graph
            .node("Add", &format!("/{path}/Add_1"), &[&x1y1, &x2y2], vec![]);
        let two = self
            .graph
            .initializer_f32(&format!("{prefix}.two"), &[], &[2.0]);
        let c_xy = self
            .graph
            .node("Div", &format!("/{path}/Div"), &[&sum, &two], vec![]);
        let wh = self
            .graph
            .node("Sub", &format!("/{path}/Sub_1"), &[&x2y2, &x1y1], vec![]);
        let xywh = self.concat(&format!("/{path}/Concat_4"), &[&c_xy, &wh], 1);
        let dbox = self
            .graph
            .node("Mul", &format!("/{path}/Mul"), &[&xywh, &strides], vec![]);
        let scores = self
            .graph
            .node("Sigmoid", &format!("/{path}/Sigmoid"), &[&parts[1]], vec![]);
        self.graph.node_to(
            "Concat",
            &format!("/{path}/Concat_5"),
            &[&dbox, &scores],
            &["output0"],
            vec![attr_int("axis", 1)],
        );
        Ok(())
    }

    /// dist2bbox's anchor points `[1, 2, anchors]` and strides `[1, anchors]` for a
    /// fixed input size, as constants.
    fn constant_anchors(
        &mut self,
        prefix: &str,
        height: i64,
        width: i64,
    ) -> Result<(String, String), Error> {
        let grid: Vec<Tensor> = STRIDES
            .iter()
            .map(|stride| {
                Tensor::zeros(
                    [1, 1, height / stride, width / stride],
                    tch::kind::FLOAT_CPU,
                )
            })
            .collect();
        let (anchors, strides) = make_anchors(&grid, &STRIDES, 0.5);
        let num_anchors = anchor_count(height, width);
        let anchors = self.graph.initializer_f32(
            &format!("{prefix}.anchors"),
            &[1, 2, num_anchors],
            &values(&anchors.transpose(0, 1))?,
        );
        let strides = self.graph.initializer_f32(
            &format!("{prefix}.strides"),
            &[1, num_anchors],
            &values(&strides.transpose(0, 1))?,
        );
        Ok((anchors, strides))
    }

    /// The same two tensors computed in the graph from the shapes of the three
    /// feature maps, for an input of any size: on each level, the cell centres
    /// `(x + 0.5, y + 0.5)` in row-major order and the level's stride, as
    /// `make_anchors` lays them out.
    fn anchors_of(&mut self, prefix: &str, features: [&str; 3]) -> (String, String) {
        let path = format!("/{}/anchors", prefix.replace('.', "/"));
        let half = self
            .graph
            .initializer_f32(&format!("{prefix}.anchor_offset"), &[], &[0.5]);
        let one = self
            .graph
            .initializer_f32(&format!("{prefix}.anchor_step"), &[], &[1.0]);
        let first = self
            .graph
            .initializer_i64(&format!("{prefix}.index0"), &[], &[0]);
        let second = self
            .graph
            .initializer_i64(&format!("{prefix}.index1"), &[], &[1]);
        let axis0 = self
            .graph
            .initializer_i64(&format!("{prefix}.axis0"), &[1], &[0]);
        let axis1 = self
            .graph
            .initializer_i64(&format!("{prefix}.axis1"), &[1], &[1]);
        let flat = self
            .graph
            .initializer_i64(&format!("{prefix}.flat"), &[1], &[-1]);
        let mut points = Vec::new();
        let mut strides = Vec::new();
        for (level, (feature, stride)) in features.iter().zip(STRIDES).enumerate() {
            let name = |op: &str| format!("{path}/level{level}/{op}");
            // [h, w] of this level's feature map.
            let grid_shape = self.graph.node(
                "Shape",
                &name("Shape"),
                &[feature],
                vec![attr_int("start", 2), attr_int("end", 4)],
            );
            let grid_size = self.graph.node(
                "Cast",
                &name("Cast"),
                &[&grid_shape],
                vec![attr_int("to", proto::tensor_proto::DataType::Float as i64)],
            );
            let mut centres = Vec::new();
            for (axis, (index, unsqueeze_at)) in [(&second, &axis0), (&first, &axis1)]
                .into_iter()
                .enumerate()
            {
                let name = |op: &str| format!("{path}/level{level}/{op}_{}", ["x", "y"][axis]);
                let cells =
                    self.graph
                        .node("Gather", &name("Gather"), &[&grid_size, index], vec![]);
                // 0.5, 1.5, ... cells - 0.5
                let line = self
                    .graph
                    .node("Range", &name("Range"), &[&half, &cells, &one], vec![]);
                let line = self.graph.node(
                    "Unsqueeze",
                    &name("Unsqueeze"),
                    &[&line, unsqueeze_at],
                    vec![],
                );
                let plane =
                    self.graph
                        .node("Expand", &name("Expand"), &[&line, &grid_shape], vec![]);
                let centre = self
                    .graph
                    .node("Reshape", &name("Reshape"), &[&plane, &flat], vec![]);
                centres.push(self.graph.node(
                    "Unsqueeze",
                    &name("Unsqueeze_1"),
                    &[&centre, &axis0],
                    vec![],
                ));
            }
            let level_points = self.concat(&name("Concat"), &[&centres[0], &centres[1]], 0);
            let n_cells = self.graph.node(
                "Shape",
                &name("Shape_1"),
                &[&centres[0]],
                vec![attr_int("start", 1)],
            );
            let stride = self.graph.initializer_f32(
                &format!("{prefix}.stride{level}"),
                &[1],
                &[stride as f32],
            );
            strides.push(
                self.graph
                    .node("Expand", &name("Expand"), &[&stride, &n_cells], vec![]),
            );
            points.push(level_points);
        }
        let points: Vec<&str> = points.iter().map(String::as_str).collect();
        let points = self.concat(&format!("{path}/Concat"), &points, 1);
        let anchors = self.graph.node(
            "Unsqueeze",
            &format!("{path}/Unsqueeze"),
            &[&points, &axis0],
            vec![],
        );
        let strides: Vec<&str> = strides.iter().map(String::as_str).collect();
        let strides = self.concat(&format!("{path}/Concat_1"), &strides, 0);
        let strides = self.graph.node(
            "Unsqueeze",
            &format!("{path}/Unsqueeze_1"),
            &[&strides, &axis0],
            vec![],
        );
        (anchors, strides)
    }
}

/// A tensor's values, float32, in row-major order.
fn values(tensor: &Tensor) -> Result<Vec<f32>, Error> {
    let flat = tensor
        .detach()
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    Ok(Vec::<f32>::try_from(&flat)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(names: &[&str], expected: &str) {
        let names: Vec<String> = names.iter().map(|s| (*s).to_string()).collect();
        assert_eq!(python_names(&names), expected);
        assert_eq!(parse_python_names(expected), Some(names), "{expected}");
    }

    #[test]
    fn names_that_are_not_a_dict_of_indices_do_not_parse() {
        for text in [
            "",
            "[0, 1]",
            "{1: 'a'}",
            "{0: 'a', 0: 'b'}",
            "{0: 'a'",
            "{0: a}",
        ] {
            assert_eq!(parse_python_names(text), None, "{text}");
        }
    }

    #[test]
    fn names_are_written_as_python_dict_repr() {
        check(&["car", "truck"], "{0: 'car', 1: 'truck'}");
        check(
            &["it's", "say \"hi\"", "a'b\"c"],
            r#"{0: "it's", 1: 'say "hi"', 2: 'a\'b"c'}"#,
        );
        check(&["back\\slash", "tab\t"], r"{0: 'back\\slash', 1: 'tab\t'}");
        check(&[], "{}");
    }

    #[test]
    fn anchors_of_common_sizes() {
        assert_eq!(anchor_count(640, 640), 8400);
        assert_eq!(anchor_count(320, 480), 40 * 60 + 20 * 30 + 10 * 15);
    }
}
