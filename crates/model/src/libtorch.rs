//! Which libtorch this process runs on, and making sure its CUDA backend is loaded.
//!
//! tch links `libtorch_cuda.so` by name, but the linker's `--as-needed` (the default
//! on Debian and Ubuntu) drops it from a binary that calls nothing in it directly,
//! and libtorch then reports no CUDA device. `mwt` keeps it through cardet-c10d's
//! NCCL build; every other binary (examples, tests) gets it from
//! [`load_cuda_backend`], which `dlopen`s the `libtorch_cuda.so` beside the
//! `libtorch_cpu.so` this process mapped. Its static initialisers register the
//! CUDA backend, as loading it at start-up would have.

use std::path::{Path, PathBuf};

/// The file the dynamic loader mapped for `name` (e.g. `libtorch_cpu.so`), read from
/// /proc/self/maps; `None` when it is not mapped.
pub fn loaded_library(name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| Path::new(path).file_name().is_some_and(|file| file == name))
        .map(Into::into)
}

/// The wheel's `torch/version.py` beside a loaded `torch/lib/libtorch_cpu.so`
/// (a line `__version__ = '2.13.0+cu130'`, with or without a type annotation).
pub fn torch_version(library: &Path) -> Option<String> {
    let version_py = library.parent()?.parent()?.join("version.py");
    let text = std::fs::read_to_string(version_py).ok()?;
    let line = text.lines().find(|line| line.starts_with("__version__"))?;
    let (_, value) = line.split_once('=')?;
    Some(value.trim().trim_matches(['\'', '"']).to_string())
}

/// Loads libtorch's CUDA backend if this process's libtorch has one and it is not
/// mapped yet, then says whether libtorch sees a CUDA device.
///
/// Call it before anything asks libtorch about CUDA: some libtorch versions decide
/// once, at the first question, whether the backend exists.
pub fn load_cuda_backend() -> bool {
    if loaded_library("libtorch_cuda.so").is_none()
        && let Some(cpu) = loaded_library("libtorch_cpu.so")
    {
        let cuda = cpu.with_file_name("libtorch_cuda.so");
        if cuda.is_file() {
            dlopen_global(&cuda);
        }
    }
    tch::Cuda::is_available()
}

#[cfg(unix)]
fn dlopen_global(path: &Path) {
    use std::os::unix::ffi::OsStrExt;

    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `path` is a NUL-terminated string that outlives the call. The handle is
    // deliberately never closed: the backend must stay loaded for the whole process.
    // A failure leaves things as they were, and is_available() then says no.
    unsafe {
        libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
    }
}

#[cfg(not(unix))]
fn dlopen_global(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mapped_libtorch_and_its_version() {
        // Any tensor op makes sure libtorch is mapped.
        let _ = tch::Tensor::ones([1], (tch::Kind::Float, tch::Device::Cpu));
        let library = loaded_library("libtorch_cpu.so").expect("libtorch_cpu.so is mapped");
        assert!(library.is_file(), "{}", library.display());
        // A file name must match whole, not as a suffix.
        assert_eq!(loaded_library("torch_cpu.so"), None);
        let version = torch_version(&library).expect("the wheel's version.py");
        assert!(version.starts_with("2."), "{version}");
    }

    #[test]
    fn a_cpu_libtorch_has_no_cuda_to_load() {
        let library = loaded_library("libtorch_cpu.so");
        let has_backend = library
            .as_ref()
            .is_some_and(|cpu| cpu.with_file_name("libtorch_cuda.so").is_file());
        if !has_backend {
            assert!(!load_cuda_backend());
        }
    }
}
