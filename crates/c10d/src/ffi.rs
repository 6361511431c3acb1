//! The C ABI of `cpp/c10d_shim.cpp` and the one function that turns its error
//! strings into Rust. Every function returns NULL on success or an owned
//! message, so no C++ exception ever unwinds into Rust.

use std::ffi::{CStr, c_char, c_int, c_void};

/// Opaque `cardet_c10d_group` (store + backend) owned by the C++ side.
#[repr(C)]
pub(crate) struct RawGroup {
    _private: [u8; 0],
}

pub(crate) const BACKEND_GLOO: c_int = 0;
pub(crate) const BACKEND_NCCL: c_int = 1;
pub(crate) const REDUCE_SUM: c_int = 0;
pub(crate) const REDUCE_AVERAGE: c_int = 1;

unsafe extern "C" {
    pub(crate) fn cardet_c10d_group_new(
        master_addr: *const c_char,
        master_port: u16,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        backend: c_int,
        gloo_interface: *const c_char,
        out: *mut *mut RawGroup,
    ) -> *mut c_char;

    /// `tensors` points at `n_tensors` `at::Tensor*` (tch's `Tensor::as_ptr`).
    pub(crate) fn cardet_c10d_all_reduce(
        group: *mut RawGroup,
        tensors: *const *const c_void,
        n_tensors: usize,
        reduce_op: c_int,
    ) -> *mut c_char;

    pub(crate) fn cardet_c10d_broadcast(
        group: *mut RawGroup,
        tensors: *const *const c_void,
        n_tensors: usize,
        root: c_int,
    ) -> *mut c_char;

    pub(crate) fn cardet_c10d_barrier(group: *mut RawGroup) -> *mut c_char;

    pub(crate) fn cardet_c10d_group_free(group: *mut RawGroup);

    fn cardet_c10d_error_free(error: *mut c_char);
}

/// Takes ownership of a shim result: `Ok` for NULL, else the message (freed here).
///
/// # Safety
/// `error` must be NULL or a string returned by one of the shim's functions and
/// not yet freed.
pub(crate) unsafe fn take_error(error: *mut c_char) -> Result<(), String> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: the shim returns a NUL-terminated malloc'd string, per the contract above.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .trim_end()
        .to_owned();
    // SAFETY: freed exactly once, by the allocator that made it.
    unsafe { cardet_c10d_error_free(error) };
    Err(message)
}
