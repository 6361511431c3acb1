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

/// The workspace root, from where this crate lives: `xtask` works the same from any
/// folder of the clone.
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
