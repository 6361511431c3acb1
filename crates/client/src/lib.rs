//! The client end of serving: a KServe v2 / Triton inference client and the image
//! pipeline `triton_client` runs.
//!
//! - [`kserve`]: [`KserveClient`] over HTTP with Triton's binary tensor extension,
//!   HTTP with JSON, or gRPC; readiness, model metadata and FP32 inference, with the
//!   server's own `error` text in every [`Error::Server`].
//! - [`inputs`]: files, folders, globs, a YOLO dataset split, or the records of a
//!   Kafka topic ([`KafkaInput`]: from the first offsets to where the topic ended
//!   when the run began, or following it until stopped; records with labels are
//!   scored like a split, records that do not decode are skipped and counted).
//! - [`run`]: decode, letterbox, batch, infer with several requests in flight, decode
//!   and NMS, JSON lines, annotated images, a summary with latency percentiles and,
//!   with labels, COCO mAP. Pre- and post-processing are `cardet_detect`'s, the same
//!   code `mwt` validates with.
//!
//! ```no_run
//! use cardet_client::{InputSpec, Protocol, RunConfig, run};
//! # async fn demo() -> Result<(), cardet_client::Error> {
//! let mut config = RunConfig::new("http://127.0.0.1:8000", Protocol::HttpBinary, "yolov8n_car");
//! config.input = InputSpec::Paths(vec!["street.jpg".into()]);
//! let summary = run(&config, &mut std::io::stdout()).await?;
//! println!("{:.1} images/s", summary.images_per_s);
//! # Ok(())
//! # }
//! ```

mod error;
pub mod inputs;
mod kafka_input;
pub mod kserve;
mod recycle;
mod run;
pub mod shared_memory;

pub use crate::error::Error;
pub use crate::inputs::{InputImage, InputSpec, RecordPosition};
pub use crate::kafka_input::KafkaInput;
pub use crate::kserve::{
    InputTensor, KserveClient, ModelMetadata, OutputTensor, Protocol, TensorMetadata,
};
pub use crate::run::{EvalSummary, RunConfig, Summary, eval_image, predicted_box, run};
pub use crate::shared_memory::SharedRegion;
