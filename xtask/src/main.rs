//! `cargo xtask`: the project's own automation, in Rust.
//!
//! Every stage that a developer, CI or Jenkins runs lives here as one module:
//! `setup` installs the real parts into `$CARDET_HOME`, `doctor` reports them,
//! `stack` runs the local services, `test` is the whole CI gate and `bench`
//! measures against baselines. `main` only parses flags and dispatches.

mod bench;
mod deploy;
mod doctor;
mod env_file;
mod flags;
mod home;
mod image;
mod import_weights;
mod patched_source;
mod pipeline;
mod pipeline_report;
mod serve_checks;
mod setup;
mod stack;
mod synth;
mod test;
#[cfg(test)]
mod tidy;

use std::path::{Path, PathBuf};

use clap::Parser;
use xshell::Shell;

fn main() -> anyhow::Result<()> {
    forget_cargo_run_package_env();
    let flags = flags::Xtask::parse();
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    match flags.command {
        flags::Command::Setup(cmd) => cmd.run(&sh),
        flags::Command::Doctor(cmd) => cmd.run(&sh),
        flags::Command::Stack(cmd) => cmd.run(&sh),
        flags::Command::Test(cmd) => cmd.run(&sh),
        flags::Command::Bench(cmd) => cmd.run(&sh),
        flags::Command::Pipeline(cmd) => cmd.run(&sh),
        flags::Command::Synth(cmd) => cmd.run(&sh),
        flags::Command::ServeCheck(cmd) => cmd.run(&sh),
        flags::Command::ImportWeights(cmd) => cmd.run(&sh),
        flags::Command::Lint(cmd) => cmd.run(&sh),
        flags::Command::Deploy(cmd) => cmd.run(&sh),
        flags::Command::Image(cmd) => cmd.run(&sh),
    }
}

/// `cargo xtask` is `cargo run -p xtask`, which describes the xtask package to this
/// process (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, ...), and every cargo build xtask
/// starts would inherit that. Some build scripts watch those names: ring's prints
/// `rerun-if-env-changed=CARGO_MANIFEST_DIR`, so each clone at another path (CI's
/// fresh clone), and every plain `cargo build` between two xtask runs, recompiled ring
/// and rustls, reqwest and the AWS SDK above it in the shared target folder. Without
/// them, xtask's builds see what a developer's own `cargo` sees.
fn forget_cargo_run_package_env() {
    let names: Vec<std::ffi::OsString> = std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| is_package_description(name))
        .collect();
    for name in names {
        // SAFETY: the first thing `main` does, before any thread exists.
        unsafe { std::env::remove_var(name) };
    }
}

/// The names `cargo run` sets to describe the package it runs, not the build.
fn is_package_description(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
        )
}

/// The workspace root, from where this crate lives: `xtask` works the same from any
/// folder of the clone.
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::is_package_description;
    use std::ffi::OsStr;

    #[test]
    fn the_package_description_goes_and_the_build_settings_stay() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
        ] {
            assert!(is_package_description(OsStr::new(name)), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "CARGO_BUILD_JOBS",
            "RUSTFLAGS",
            "LIBTORCH",
            "CARDET_HOME",
        ] {
            assert!(!is_package_description(OsStr::new(name)), "{name}");
        }
    }
}
