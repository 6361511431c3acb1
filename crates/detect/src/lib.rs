//! The detection core every cardet stage shares: the client, the server's tests,
//! the trainer's validation and the sink's export all pre- and post-process with
//! this one implementation, so a box means the same thing everywhere.
//!
//! - [`letterbox`]: Ultralytics' letterbox into a CHW `f32` batch, with the
//!   [`TransformInfo`] that maps boxes back to the original image.
//! - [`decode`]: YOLOv8 outputs ([`YoloV8Layout`], `[N, 4 + classes, anchors]`) to
//!   [`Detection`]s, through confidence filtering and [`nms`].
//! - [`draw`]: boxes and `class score` labels set in an embedded font.
//! - [`dataset`]: the Ultralytics YOLO dataset format, read, validated and written.
//! - [`synth`]: deterministic synthetic traffic scenes with exact boxes.
//! - [`eval`]: COCO mAP@0.5 and mAP@0.5:0.95, per-class AP and PR curves.
//!
//! It knows nothing of libtorch, ONNX Runtime or the network: a model is whatever
//! produced the output slice.
//!
//! ```no_run
//! use cardet_detect::{PostprocessConfig, YoloV8Layout, image_io, letterbox, postprocess};
//!
//! # fn run_model(_: &[f32]) -> Vec<f32> { vec![0.0; 84 * 8400] }
//! # fn main() -> Result<(), cardet_detect::Error> {
//! let image = image_io::load_rgb("street.jpg".as_ref())?;
//! let batch = letterbox::letterbox_batch(&[image], (640, 640))?;
//! let output = run_model(&batch.data); // [1, 84, 8400]
//! let layout = YoloV8Layout { n_classes: 80, n_anchors: 8400 };
//! let detections = postprocess(&output, layout, &batch.infos, &PostprocessConfig::default())?;
//! println!("{} objects", detections[0].len());
//! # Ok(())
//! # }
//! ```

pub mod classes;
pub mod dataset;
pub mod decode;
pub mod draw;
pub mod error;
pub mod eval;
pub mod geometry;
pub mod image_io;
pub mod letterbox;
pub mod nms;
mod score_bits;
mod simd;
pub mod synth;
mod yaml;

pub use decode::{PostprocessConfig, YoloV8Layout, postprocess};
pub use error::{Diagnostic, Error};
pub use geometry::{BoundingBox, Detection};
pub use letterbox::{Batch, TransformInfo};
