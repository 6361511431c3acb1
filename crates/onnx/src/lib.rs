//! ONNX Runtime for cardet: finds the shared library, checks its version before
//! anything else touches it, and builds the process-wide `ort` environment.
//!
//! `ort` is built with `load-dynamic`: no ONNX Runtime is linked in. The library
//! comes from `ORT_DYLIB_PATH` when set, else from the path `cargo xtask setup`
//! prepared (the PyPI onnxruntime wheel's `libonnxruntime.so`), baked in at build
//! time. A library older than the API level `ort` was built for panics in the first
//! thread that touches it, so [`load`] reads its version first through the C API's
//! `OrtGetApiBase` and refuses with a clear error.
//!
//! ```no_run
//! let runtime = cardet_onnx::load()?;
//! println!("onnxruntime {} from {}", runtime.version, runtime.library.display());
//! # Ok::<(), cardet_onnx::Error>(())
//! ```

use std::ffi::{CStr, c_char};
use std::path::{Path, PathBuf};

pub use ort;

/// The oldest ONNX Runtime whose API level covers the one `ort` is built for.
pub const MIN_MINOR_VERSION: u32 = ort::MINOR_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no ONNX Runtime library at {path} ({origin}); run `cargo xtask setup` or set ORT_DYLIB_PATH"
    )]
    Missing { path: PathBuf, origin: &'static str },
    #[error("loading ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error(
        "ONNX Runtime {version} at {path} is too old: cardet needs 1.{MIN_MINOR_VERSION} or newer"
    )]
    TooOld { version: String, path: PathBuf },
    #[error("starting ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
}

/// The loaded library and the process-wide environment sessions are built from.
pub struct Runtime {
    pub version: String,
    pub library: PathBuf,
    pub environment: ort::environment::Environment,
}

/// Where the library will be loaded from, and why that path.
pub fn library_path() -> (PathBuf, &'static str) {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(path) if !path.is_empty() => (PathBuf::from(path), "from ORT_DYLIB_PATH"),
        _ => (
            PathBuf::from(env!("CARDET_ORT_DYLIB_BAKED")),
            "the path `cargo xtask setup` prepared",
        ),
    }
}

/// Loads the library once for the process and builds the environment.
pub fn load() -> Result<Runtime, Error> {
    let (path, origin) = library_path();
    if !path.exists() {
        return Err(Error::Missing { path, origin });
    }
    let library = std::fs::canonicalize(&path).unwrap_or(path);
    let version = read_version(&library)?;
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|minor| minor.parse::<u32>().ok())
        .unwrap_or(0);
    if minor < MIN_MINOR_VERSION {
        return Err(Error::TooOld {
            version,
            path: library,
        });
    }
    let environment = ort::init_from(&library)
        .map_err(|error| Error::Load {
            path: library.clone(),
            reason: error.to_string(),
        })?
        .with_name("cardet")
        .build()?;
    Ok(Runtime {
        version,
        library,
        environment,
    })
}

/// `OrtGetApiBase()->GetVersionString()`: the first two members of `OrtApiBase` are
/// `GetApi` and `GetVersionString`, stable across every ONNX Runtime release.
fn read_version(path: &Path) -> Result<String, Error> {
    #[repr(C)]
    struct OrtApiBase {
        get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
        get_version_string: unsafe extern "C" fn() -> *const c_char,
    }
    let load_error = |reason: String| Error::Load {
        path: path.to_path_buf(),
        reason,
    };
    // SAFETY: loading runs the library's initialisers; it is the library the user
    // chose (or setup installed), which ort would load next anyway.
    let library =
        unsafe { libloading::Library::new(path) }.map_err(|error| load_error(error.to_string()))?;
    // SAFETY: the symbol's signature is the C API's `const OrtApiBase* OrtGetApiBase(void)`.
    let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const OrtApiBase> =
        unsafe { library.get(b"OrtGetApiBase\0") }
            .map_err(|_| load_error("no OrtGetApiBase symbol".into()))?;
    // SAFETY: OrtGetApiBase returns a pointer to a static struct, valid while loaded.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(load_error("OrtGetApiBase returned null".into()));
    }
    // SAFETY: `base` is non-null and points at the static OrtApiBase; the string is static.
    let version = unsafe { CStr::from_ptr(((*base).get_version_string)()) };
    Ok(version.to_string_lossy().into_owned())
}
