//! `serve`: a KServe v2 / Triton-compatible inference server on ONNX Runtime.
//!
//! Built so far: ONNX Runtime is found and version-checked at start-up, before
//! any port would be bound (`serve --runtime-info` shows the result). Serving
//! itself belongs to the serve issue; until then `serve` says so and exits 2.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// A KServe v2 / Triton-compatible inference server on ONNX Runtime.
///
/// NOT BUILT YET (the serve issue): only --runtime-info works; anything else exits 2.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  serve --runtime-info   # which ONNX Runtime is loaded, and its version"
)]
struct Flags {
    /// Load ONNX Runtime, print its version and path as JSON, and exit.
    #[arg(long)]
    runtime_info: bool,
    /// Triton-style server flags, for when serving lands.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    cardet_cli::init_logging();
    let flags = Flags::parse();
    cardet_cli::exit_code("serve", run(&flags))
}

fn run(flags: &Flags) -> anyhow::Result<()> {
    // First, before anything else: a wrong library must fail here with its path.
    let runtime = cardet_onnx::load().context("loading ONNX Runtime")?;
    if flags.runtime_info {
        let report = serde_json::json!({
            "onnxruntime_version": runtime.version,
            "library": runtime.library.display().to_string(),
        });
        println!("{report}");
        return Ok(());
    }
    Err(cardet_cli::not_built("serving", "the serve issue"))
}
