//! `triton_client`: runs images through any KServe v2 / Triton server and draws the detections.
//!
//! NOT BUILT YET: the client and upload issue builds it. Until then it says so and exits 2.

use std::process::ExitCode;

use clap::Parser;

/// runs images through any KServe v2 / Triton server and draws the detections.
///
/// NOT BUILT YET (the client and upload issue): every invocation exits 2.
#[derive(Debug, Parser)]
#[command(version)]
struct Flags {
    /// Arguments of the stage to come.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let _flags = Flags::parse();
    cardet_cli::exit_code(
        "triton_client",
        Err(cardet_cli::not_built(
            "triton_client",
            "the client and upload issue",
        )),
    )
}
