//! Backends run one merged batch at a time; they know nothing of protocols or queues.
//!
//! [`Backend::infer`] is synchronous and may take tens of milliseconds: the batcher
//! calls it from an instance's own OS thread (see [`crate::batcher`]), never from the
//! async runtime. [`onnx::OnnxBackend`] is the ONNX Runtime implementation; tests use
//! small doubles.

pub mod cuda_host;
pub mod onnx;

use std::sync::Arc;

use crate::tensor::{DataType, Tensor};

/// Inputs for one backend call: already merged along the batch dimension.
#[derive(Clone, Debug)]
pub struct Batch {
    pub inputs: Vec<Tensor>,
}

/// Every output of the model for a [`Batch`], in the model's order.
#[derive(Clone, Debug)]
pub struct Outputs {
    pub tensors: Vec<Tensor>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The model refused the inputs (a shape the graph cannot take, ...).
    #[error("the model refused the inputs: {0}")]
    Input(String),
    /// The runtime failed for another reason.
    #[error("inference failed: {0}")]
    Runtime(String),
}

/// One tensor of a model's own signature. Dimensions are -1 where variable;
/// `datatype` is `None` for element types the protocol cannot carry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSignature {
    pub name: String,
    pub datatype: Option<DataType>,
    pub shape: Vec<i64>,
}

/// The inputs and outputs a loaded model declares.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub inputs: Vec<TensorSignature>,
    pub outputs: Vec<TensorSignature>,
}

pub trait Backend: Send {
    fn infer(&self, batch: Batch) -> Result<Outputs, BackendError>;

    /// How to page-lock the host buffers the batcher merges this backend's inputs
    /// into, where the device reads them faster that way (CUDA); `None` on the CPU.
    fn host_pinning(&self) -> Option<Arc<dyn HostPinning>> {
        None
    }
}

/// Page-locks host memory for a device to read by DMA.
///
/// Contract: whoever pins a buffer unpins it before the buffer is freed or moved.
pub trait HostPinning: Send + Sync {
    /// Locks `data`'s pages; false when that failed (the buffer is used as it is).
    fn pin(&self, data: &mut [u8]) -> bool;
    /// Unlocks what [`HostPinning::pin`] locked.
    fn unpin(&self, data: &mut [u8]);
}
