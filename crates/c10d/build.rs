//! Compiles `cpp/c10d_shim.cpp` against the libtorch that tch links (`$LIBTORCH`,
//! set by `.cargo/config.toml`), and embeds libtorch's folder as an rpath so the
//! crate's tests, examples and benches start with an empty LD_LIBRARY_PATH.
//!
//! With the `cuda` feature the shim also needs CUDA's and NCCL's headers: the
//! folders in CUDA_INCLUDE (a PATH-style list), else every `include` folder of the
//! nvidia-* wheels beside the wheel's torch (see xtask/requirements.txt).
//!
//! The wheel ships c10d's headers but not gloo's, which `ProcessGroupGloo.hpp`
//! includes; Debian's `libgloo-dev` supplies them from the default include path
//! (`GLOO_INCLUDE` overrides). The shim touches gloo only through pointers
//! libtorch creates, so that older header snapshot is enough.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=cpp/c10d_shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=CUDA_INCLUDE");

    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        fail("LIBTORCH is not set; run `cargo xtask setup` or point LIBTORCH at a libtorch folder");
    };
    let libtorch = std::fs::canonicalize(&libtorch).unwrap_or_else(|_| PathBuf::from(&libtorch));
    let include = libtorch.join("include");
    if !include
        .join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
        .is_file()
    {
        fail(&format!(
            "{} has no c10d headers (torch/csrc/distributed/c10d/ProcessGroupGloo.hpp)",
            include.display()
        ));
    }
    // torch-sys' default too; wheels since torch 2.7 are built with the new ABI.
    let cxx11_abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("cpp/c10d_shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", cxx11_abi.as_str())
        .define("USE_C10D_GLOO", None)
        .define("GLOG_USE_GLOG_EXPORT", None)
        // libtorch's headers are noisy under -Wall; the shim's own warnings are
        // not worth drowning the build log for.
        .warnings(false);
    if let Ok(gloo_include) = std::env::var("GLOO_INCLUDE") {
        build.include(gloo_include);
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        build
            .define("CARDET_C10D_CUDA", None)
            .define("USE_C10D_NCCL", None);
        match std::env::var("CUDA_INCLUDE") {
            Ok(cuda_include) => {
                for folder in std::env::split_paths(&cuda_include) {
                    build.include(folder);
                }
            }
            Err(_) => {
                for folder in wheel_cuda_includes(&libtorch) {
                    build.include(folder);
                }
            }
        }
    }
    compile_or_reuse(&mut build, &libtorch);

    // After the static shim on the link line, so --as-needed keeps them.
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// Builds the static shim into OUT_DIR, or copies the one an earlier build made with
/// the same compiler, flags, source and libtorch from `$CARDET_HOME/cache/c10d-shim`.
/// Against libtorch's headers the shim takes about 22 s to compile on two cores, and
/// every clone path (CI's fresh clone) built it three times over: for clippy, for
/// clippy with `cuda`, and for the tests. The cache is only a cache: the output is
/// the same either way, so its location is not part of the build's inputs.
fn compile_or_reuse(build: &mut cc::Build, libtorch: &std::path::Path) {
    const LIB: &str = "cardet_c10d_shim";
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let archive = out_dir.join(format!("lib{LIB}.a"));
    build.cargo_metadata(false);
    let cached = shim_cache_key(build, libtorch).and_then(|key| {
        let home = std::env::var_os("CARDET_HOME")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/cardet"))
            })?;
        Some(home.join("cache/c10d-shim").join(format!("{key:016x}.a")))
    });
    let reused = cached
        .as_ref()
        .is_some_and(|cached| std::fs::copy(cached, &archive).is_ok());
    if !reused {
        build.compile(LIB);
        if let Some(cached) = &cached {
            // Written under a temporary name and renamed, so a build killed midway
            // never leaves a truncated archive for the next one to link.
            let partial = cached.with_extension(format!("{}.partial", std::process::id()));
            let stored = cached
                .parent()
                .is_some_and(|dir| std::fs::create_dir_all(dir).is_ok())
                && std::fs::copy(&archive, &partial).is_ok()
                && std::fs::rename(&partial, cached).is_ok();
            if !stored {
                let _ = std::fs::remove_file(&partial);
            }
        }
    }
    // The link lines `cc` prints when it compiles (off above, so that a reused
    // archive gets the same ones), and the compiler variables it would watch.
    println!("cargo:rerun-if-env-changed=CXX");
    println!("cargo:rerun-if-env-changed=CXXFLAGS");
    println!("cargo:rustc-link-search=native={}", out_dir.display());
    println!("cargo:rustc-link-lib=static={LIB}");
    println!("cargo:rustc-link-lib=stdc++");
}

/// A hash of everything the shim's object code depends on: the compiler (its path,
/// version and every flag `cc` passes, includes and defines among them), the source,
/// and libtorch's version (its headers change with it, and the nvidia-* wheels whose
/// headers the `cuda` build includes come pinned by it; the folders' paths may not).
fn shim_cache_key(build: &cc::Build, libtorch: &std::path::Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let compiler = build.try_get_compiler().ok()?;
    let version = compiler.to_command().arg("--version").output().ok()?;
    if !version.status.success() {
        return None;
    }
    let mut hasher = std::hash::DefaultHasher::new();
    compiler.path().hash(&mut hasher);
    compiler.args().hash(&mut hasher);
    version.stdout.hash(&mut hasher);
    std::fs::read("cpp/c10d_shim.cpp").ok()?.hash(&mut hasher);
    libtorch.hash(&mut hasher);
    std::fs::read(libtorch.join("version.py"))
        .or_else(|_| std::fs::read(libtorch.join("build-version")))
        .ok()?
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// The headers of the nvidia-* wheels beside a wheel's libtorch
/// (`site-packages/torch` → `site-packages/nvidia/*/include`): what `cargo xtask
/// setup` installs, so `--features cuda` needs no CUDA_INCLUDE there.
fn wheel_cuda_includes(libtorch: &std::path::Path) -> Vec<PathBuf> {
    let Some(nvidia) = libtorch.parent().map(|site| site.join("nvidia")) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&nvidia) else {
        return Vec::new();
    };
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("include"))
        .filter(|include| include.is_dir())
        .collect();
    folders.sort();
    folders
}

fn fail(message: &str) -> ! {
    eprintln!("cardet-c10d: {message}");
    std::process::exit(1);
}
