//! How `serve` uses glibc's allocator: freed memory is kept for the next batch while
//! requests come, and handed back to the system once a model has gone idle.
//!
//! ONNX Runtime runs with its CPU arena off (the arena keeps its peak for good, and
//! `serve` must give memory back when idle), so every run allocates its activations
//! through `malloc` and frees them at the end. glibc serves a block above its mmap
//! threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on free, so each
//! batch of 2 or more images faulted its activations in page by page: 1.1-1.4 million
//! page faults in a 90 s `serve_bench pair --clients 8`, and 0.79-0.86x of the raw
//! session there. With [`keep_freed_memory`] the same run took 0.19-0.21 million and
//! reached 0.89-0.92x (BENCHMARKS, "glibc keeps freed blocks").

/// Makes glibc keep large freed blocks for reuse: every thread allocates from the
/// main heap (`M_ARENA_MAX` 1: other arenas' heaps are capped at 64 MiB, beyond which
/// glibc maps the block anyway), never with its own `mmap` (`M_MMAP_MAX` 0), and
/// the heap's free top is not trimmed after each free (`M_TRIM_THRESHOLD`).
/// [`release_free_memory`] returns it all when idle.
///
/// Call it first in `main`, before any thread starts: threads that already have
/// an arena keep it. It changes nothing, and returns false, when the user has tuned
/// glibc's allocator through the environment (`GLIBC_TUNABLES` or a `MALLOC_*`
/// variable), or off glibc.
pub fn keep_freed_memory() -> bool {
    if std::env::vars_os().any(|(name, _)| {
        let name = name.to_string_lossy();
        name == "GLIBC_TUNABLES" || name.starts_with("MALLOC_")
    }) {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's <malloc.h>.
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_MAX: std::ffi::c_int = -4;
        const M_ARENA_MAX: std::ffi::c_int = -8;
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        // SAFETY: `mallopt` takes the main arena's lock; these three only change
        // the thresholds glibc consults on later calls.
        unsafe {
            mallopt(M_ARENA_MAX, 1) == 1
                && mallopt(M_MMAP_MAX, 0) == 1
                && mallopt(M_TRIM_THRESHOLD, std::ffi::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Returns the allocator's free memory to the system.
///
/// A batch of 8 images needs hundreds of MB of activations and request bodies, and
/// glibc keeps what they freed (all of it after [`keep_freed_memory`]; without it,
/// glibc still raises its mmap threshold after the first large free, so later
/// bodies land in its heaps too): a server that saw one burst would stay at its
/// peak for good. `malloc_trim` releases the free pages of every arena, ONNX
/// Runtime's allocations included.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's `malloc_trim` takes the arena locks itself; any thread may
        // call it at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}
