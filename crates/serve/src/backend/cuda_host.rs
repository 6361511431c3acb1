//! Page-locked ("pinned") host memory for CUDA instances, through the CUDA runtime's
//! `cudaHostRegister`.
//!
//! ONNX Runtime copies a CPU input to the GPU itself. From ordinary (pageable) memory
//! the driver stages the copy through a small pinned buffer of its own; from memory
//! registered with `cudaHostRegister` the GPU reads it directly by DMA. The batcher
//! merges each batch into buffers it keeps ([`crate::batcher`]), so registering
//! those once makes every later batch's upload the fast kind, and ONNX Runtime still
//! sees a plain CPU tensor. (A tensor in ONNX Runtime's own `CudaPinned` memory is
//! refused as a CUDA session's input by ONNX Runtime 1.31: "dst_data != src_data"
//! in `GPUDataTransfer::CopyTensorAsync`, `serve_bench transfer` on an H100.)
//!
//! The runtime library is the one ONNX Runtime's CUDA provider already loaded
//! (`libcudart.so.13` for onnxruntime-gpu 1.31), found by its soname.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::HostPinning;

/// `cudaHostRegisterPortable`: pinned for every CUDA context, not only the current one.
const REGISTER_PORTABLE: c_uint = 1;
const CUDA_SUCCESS: c_int = 0;

/// The CUDA runtime's sonames, newest first.
const RUNTIME_LIBRARIES: [&str; 3] = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"];

type Register = unsafe extern "C" fn(*mut c_void, usize, c_uint) -> c_int;
type Unregister = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetLastError = unsafe extern "C" fn() -> c_int;

pub struct CudaHostMemory {
    /// Bytes that may still be pinned (`--pinned-memory-pool-byte-size` in all).
    unpinned_budget: AtomicUsize,
    register: Register,
    unregister: Unregister,
    get_last_error: GetLastError,
    /// Keeps the functions above loaded.
    _library: libloading::Library,
}

impl CudaHostMemory {
    /// The CUDA runtime's registration functions, or why they are not there; at most
    /// `budget` bytes are pinned at once, the rest stays pageable.
    pub fn load(budget: usize) -> Result<CudaHostMemory, String> {
        let mut reasons = Vec::new();
        for name in RUNTIME_LIBRARIES {
            // SAFETY: the CUDA runtime's initialisers have no preconditions; ONNX
            // Runtime's CUDA provider has usually loaded this very library already.
            match unsafe { libloading::Library::new(name) } {
                Ok(library) => return Self::from_library(library, name, budget),
                Err(error) => reasons.push(format!("{name}: {error}")),
            }
        }
        Err(reasons.join("; "))
    }

    fn from_library(
        library: libloading::Library,
        name: &str,
        budget: usize,
    ) -> Result<CudaHostMemory, String> {
        let missing = |error: libloading::Error| format!("{name}: {error}");
        // SAFETY: the signatures are the CUDA runtime API's (cuda_runtime_api.h):
        // cudaHostRegister(void*, size_t, unsigned int), cudaHostUnregister(void*),
        // cudaGetLastError(void), each returning cudaError_t (an int).
        unsafe {
            let register = *library
                .get::<Register>(b"cudaHostRegister\0")
                .map_err(missing)?;
            let unregister = *library
                .get::<Unregister>(b"cudaHostUnregister\0")
                .map_err(missing)?;
            let get_last_error = *library
                .get::<GetLastError>(b"cudaGetLastError\0")
                .map_err(missing)?;
            Ok(CudaHostMemory {
                unpinned_budget: AtomicUsize::new(budget),
                register,
                unregister,
                get_last_error,
                _library: library,
            })
        }
    }
}

impl HostPinning for CudaHostMemory {
    fn pin(&self, data: &mut [u8]) -> bool {
        let bytes = data.len();
        let within_budget =
            self.unpinned_budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(bytes)
                });
        if bytes == 0 || within_budget.is_err() {
            return false;
        }
        // SAFETY: `data` is a live allocation of `data.len()` bytes that the caller
        // unpins before freeing it (the trait's contract).
        let status =
            unsafe { (self.register)(data.as_mut_ptr().cast(), data.len(), REGISTER_PORTABLE) };
        if status != CUDA_SUCCESS {
            // Clear the error, or ONNX Runtime's next `cudaGetLastError` check after a
            // kernel launch would report it as its own and fail that run.
            // SAFETY: no arguments; reads and resets this thread's last error.
            unsafe { (self.get_last_error)() };
            self.unpinned_budget.fetch_add(bytes, Ordering::SeqCst);
            tracing::warn!(
                status,
                bytes,
                "cudaHostRegister failed; this buffer stays pageable"
            );
            return false;
        }
        true
    }

    fn unpin(&self, data: &mut [u8]) {
        // SAFETY: `data` was registered by `pin` and is still allocated.
        let status = unsafe { (self.unregister)(data.as_mut_ptr().cast()) };
        self.unpinned_budget.fetch_add(data.len(), Ordering::SeqCst);
        if status != CUDA_SUCCESS {
            // SAFETY: as in `pin`.
            unsafe { (self.get_last_error)() };
            tracing::warn!(status, "cudaHostUnregister failed");
        }
    }
}
