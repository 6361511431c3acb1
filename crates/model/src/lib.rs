//! YOLOv8 detection on libtorch (through tch), with Ultralytics weights in and
//! Ultralytics-shaped ONNX out.
//!
//! [`YoloV8`] is the network, one struct per Ultralytics module in [`yolov8`], its
//! tch variable names equal to the Ultralytics state-dict keys (`model.0.conv.weight`,
//! ...). [`Detector`] pairs it with its `VarStore` and class names and reads and writes
//! safetensors ([`weights`]). [`export`] folds BatchNorm into the convolutions and
//! writes the ONNX inference graph and a Triton model repository.
//!
//! ```no_run
//! use cardet_model::{Detector, ExportOptions, Scale};
//! let detector = Detector::load("yolov8n.safetensors".as_ref(), tch::Device::Cpu)?;
//! let images = tch::Tensor::zeros([1, 3, 640, 640], tch::kind::FLOAT_CPU);
//! let output = detector.net.predict(&images); // [1, 4 + classes, 8400]
//! let onnx = cardet_model::export_onnx(&detector.net, &detector.names, &ExportOptions::default())?;
//! # let _ = (output, onnx, Scale::N);
//! # Ok::<(), cardet_model::Error>(())
//! ```

mod error;
pub mod export;
pub mod libtorch;
pub mod weights;
pub mod yolov8;

pub use error::Error;
pub use export::{
    ExportOptions, ModelRepository, RepositoryOptions, export_onnx, write_model_repository,
};
pub use weights::{Detector, WeightsMetadata};
pub use yolov8::{Config, HeadOutput, Scale, YoloV8};
