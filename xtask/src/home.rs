//! `$CARDET_HOME`: the cache outside the clone where `setup` installs every part,
//! and the pinned versions of those parts.

use std::path::{Path, PathBuf};

/// A crate installed with `cargo install --locked --root $CARDET_HOME/tools`.
pub struct CargoTool {
    pub krate: &'static str,
    pub version: &'static str,
    pub features: &'static str,
    pub binary: &'static str,
    /// Built from its crates.io source with a dependency patched, instead of a plain
    /// `cargo install` from the registry.
    pub patch: Option<SourcePatch>,
}

/// A fix of ours to one dependency of a [`CargoTool`], applied to the published
/// sources (both `.crate` files come from crates.io, checked against their SHA-256).
pub struct SourcePatch {
    /// SHA-256 of the tool's own `.crate` file.
    pub tool_sha256: &'static str,
    pub dependency: &'static str,
    pub dependency_version: &'static str,
    pub dependency_sha256: &'static str,
    /// A unified diff against the dependency's root folder.
    pub diff: &'static str,
}

/// The Kafka-compatible broker. Without the libsql feature it has no durable storage
/// engine (see DESIGN.md). Patched: its SQLite engine prepared every query anew, and
/// SQLite's parser and planner took half of the broker's CPU when serving fetches;
/// the patch keeps prepared statements per connection
/// (`xtask/patches/tansu-storage-0.6.0-statement-cache.patch`).
pub const TANSU: CargoTool = CargoTool {
    krate: "tansu",
    version: "0.6.0",
    features: "libsql",
    binary: "tansu",
    patch: Some(SourcePatch {
        tool_sha256: "4fdd85473ec265140488cf8d55e82b844f5c051c8916fabdd4a71156ac053f6d",
        dependency: "tansu-storage",
        dependency_version: "0.6.0",
        dependency_sha256: "720d2ed8e6010c70f7f06e5af5a7274ebbf6e42fdcd9e46de542b10dc4d2f35d",
        diff: include_str!("../patches/tansu-storage-0.6.0-statement-cache.patch"),
    }),
};

/// The S3-compatible server; it verifies SigV4 signatures against the keys it is given.
pub const S3S_FS: CargoTool = CargoTool {
    krate: "s3s-fs",
    version: "0.14.1",
    features: "binary",
    binary: "s3s-fs",
    patch: None,
};

pub const CARGO_TOOLS: [&CargoTool; 2] = [&TANSU, &S3S_FS];

/// A Debian package the build, the stack or a test needs.
pub struct AptPackage {
    pub package: &'static str,
    pub why: &'static str,
    /// A command that makes the package unnecessary when it is already on PATH (a
    /// newer `kubectl` than Debian's, say).
    pub unless_on_path: Option<&'static str>,
}

/// Debian packages the build, the stack and the tests need.
pub const APT_PACKAGES: [AptPackage; 7] = [
    AptPackage {
        package: "postgresql-15",
        why: "the stack's PostgreSQL server",
        unless_on_path: None,
    },
    AptPackage {
        package: "wrk",
        why: "the HTTP load generator of `cargo xtask serve-check load`",
        unless_on_path: None,
    },
    AptPackage {
        package: "libgloo-dev",
        why: "gloo headers for the c10d bridge",
        unless_on_path: None,
    },
    AptPackage {
        package: "protobuf-compiler",
        why: "protoc for the KServe v2 and ONNX protobufs",
        unless_on_path: None,
    },
    AptPackage {
        package: "curl",
        why: "downloads the crates.io sources of the patched broker",
        unless_on_path: Some("curl"),
    },
    AptPackage {
        package: "chromium",
        why: "headless Chromium for the pipeline report's test",
        unless_on_path: None,
    },
    AptPackage {
        package: "kubernetes-client",
        why: "kubectl and its kustomize for `cargo xtask deploy`",
        unless_on_path: Some("kubectl"),
    },
];

pub const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct CardetHome {
    pub root: PathBuf,
}

impl CardetHome {
    /// `$CARDET_HOME`, else `~/.cache/cardet`.
    pub fn from_env() -> CardetHome {
        let root = match std::env::var_os("CARDET_HOME") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| "/tmp".into());
                home.join(".cache/cardet")
            }
        };
        CardetHome { root }
    }

    pub fn venv(&self) -> PathBuf {
        self.root.join("venv")
    }

    pub fn python(&self) -> PathBuf {
        self.venv().join("bin/python")
    }

    pub fn venv_bin(&self, name: &str) -> PathBuf {
        self.venv().join("bin").join(name)
    }

    /// The venv's `site-packages`, whatever the Python minor version is.
    pub fn site_packages(&self) -> Option<PathBuf> {
        let lib = self.venv().join("lib");
        let entries = std::fs::read_dir(&lib).ok()?;
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("site-packages"))
            .find(|path| path.is_dir())
    }

    /// ONNX Runtime's GPU build and CUDA's wheels (`cargo xtask setup --gpu`).
    pub fn gpu_dir(&self) -> PathBuf {
        self.root.join("gpu")
    }

    pub fn tools_root(&self) -> PathBuf {
        self.root.join("tools")
    }

    pub fn tool_bin(&self, tool: &CargoTool) -> PathBuf {
        self.tools_root().join("bin").join(tool.binary)
    }

    /// Where the build looks for libtorch: a link to the venv's `torch` package.
    pub fn libtorch_link(&self) -> PathBuf {
        self.root.join("libtorch")
    }

    /// The one target folder every clone on this machine shares (CARGO_TARGET_DIR
    /// when set). `.ci/run` and the Jenkinsfile spell the same default for building
    /// xtask itself, which runs before this code can: change them together.
    pub fn shared_target_dir(&self) -> PathBuf {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.root.join("target"))
    }

    /// LIBTORCH for the builds xtask starts: the user's own, else
    /// `$CARDET_HOME/libtorch`. `cargo xtask` runs under `.cargo/config.toml`'s
    /// clone-relative `<clone>/.cardet/libtorch`; handing that on would make torch-sys
    /// (and everything above it) rebuild for every clone path sharing the target.
    pub fn libtorch_for_builds(&self) -> std::ffi::OsString {
        match std::env::var_os("LIBTORCH") {
            Some(value) if !Path::new(&value).ends_with(".cardet/libtorch") => value,
            _ => self.libtorch_link().into(),
        }
    }

    /// The environment of the builds xtask starts: every clone shares one target
    /// folder and sees libtorch and ONNX Runtime at the same absolute paths, so a
    /// fresh clone recompiles only the workspace's own crates (for which `main` has
    /// already dropped the clone's `CARGO_MANIFEST_DIR` that `cargo run` set: see
    /// `forget_cargo_run_package_env`). The guards restore the environment when dropped.
    pub fn shared_build_env<'a>(&self, sh: &'a xshell::Shell) -> [xshell::PushEnv<'a>; 3] {
        [
            sh.push_env("CARGO_TARGET_DIR", self.shared_target_dir()),
            sh.push_env("LIBTORCH", self.libtorch_for_builds()),
            sh.push_env("CARDET_ORT_DYLIB_DEFAULT", self.onnxruntime_link()),
        ]
    }

    /// A link to the onnxruntime wheel's shared library.
    pub fn onnxruntime_link(&self) -> PathBuf {
        self.root.join("lib/libonnxruntime.so")
    }

    pub fn stack_dir(&self) -> PathBuf {
        match std::env::var_os("CARDET_STACK_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => self.root.join("stack"),
        }
    }
}

/// The version of an installed Python distribution, read from its `.dist-info` folder
/// name (importing torch to ask it would take seconds).
pub fn dist_version(site_packages: &Path, distribution: &str) -> Option<String> {
    let prefix = format!("{}-", distribution.replace('-', "_"));
    std::fs::read_dir(site_packages)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rest = name.strip_suffix(".dist-info")?;
            let version = rest.strip_prefix(&prefix).or_else(|| {
                // Some wheels keep the original case or dashes in the folder name.
                let lower = rest.to_lowercase();
                lower
                    .strip_prefix(&prefix.to_lowercase())
                    .map(|v| &rest[rest.len() - v.len()..])
            })?;
            version
                .chars()
                .next()
                .filter(char::is_ascii_digit)
                .map(|_| version.to_string())
        })
}

/// The pinned version of a distribution in `xtask/requirements.txt`.
pub fn pinned_version(requirements: &str, distribution: &str) -> Option<String> {
    requirements.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let (name, version) = line.split_once("==")?;
        let name = name.split('[').next()?.trim();
        name.eq_ignore_ascii_case(distribution)
            .then(|| version.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(requirements: &str, distribution: &str, expected: Option<&str>) {
        assert_eq!(
            pinned_version(requirements, distribution).as_deref(),
            expected
        );
    }

    #[test]
    fn pins_are_read_with_extras_and_comments() {
        let requirements =
            "# comment\ntorch==2.13.0\ntritonclient[all]==2.73.0  # reference client\n";
        check(requirements, "torch", Some("2.13.0"));
        check(requirements, "tritonclient", Some("2.73.0"));
        check(requirements, "mlflow", None);
    }

    #[test]
    fn dist_version_reads_dist_info_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("opencv_python_headless-5.0.0.93.dist-info"))
            .expect("mkdir");
        std::fs::create_dir(dir.path().join("torch-2.13.0.dist-info")).expect("mkdir");
        std::fs::create_dir(dir.path().join("torchvision-0.28.0.dist-info")).expect("mkdir");
        assert_eq!(dist_version(dir.path(), "torch").as_deref(), Some("2.13.0"));
        assert_eq!(
            dist_version(dir.path(), "opencv-python-headless").as_deref(),
            Some("5.0.0.93")
        );
        assert_eq!(dist_version(dir.path(), "mlflow"), None);
    }
}
