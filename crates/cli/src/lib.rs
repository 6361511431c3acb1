//! What every cardet binary does the same way at its edges: logging set-up, and
//! turning the outcome of `run` into an exit code.
//!
//! Errors print as one line, `name: context: cause`, and exit 2; a closed pipe
//! (`mwt info | head -1`) is not an error.
//!
//! ```no_run
//! fn run() -> anyhow::Result<()> { Ok(()) }
//! fn main() -> std::process::ExitCode {
//!     cardet_cli::init_logging();
//!     cardet_cli::exit_code("produce", run())
//! }
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// `RUST_LOG`-style filtering on stderr (default `info`), so stdout stays for data.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Maps `run`'s outcome to the process exit code, printing the error chain on one line.
pub fn exit_code(binary: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{binary}: {}", one_line(&error));
            ExitCode::from(2)
        }
    }
}

/// The error chain as `context: cause: cause`, leaving out a cause whose text the
/// line already holds (a library error that shows its source in its own message,
/// as `"{path}: {source}"` does, would otherwise print the source twice).
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// A flag raised by the first SIGINT or SIGTERM, so a long-running command can end
/// cleanly (finish what it holds, commit, report) instead of dying mid-write.
/// `on_stop` is logged when the signal arrives.
pub fn stop_flag_on_signal(on_stop: &'static str) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let Ok(mut terminate) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        });
        tracing::info!("{on_stop}");
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_success_and_other_errors_exit_2() {
        let pipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing");
        assert_eq!(exit_code("t", Err(pipe)), ExitCode::SUCCESS);
        assert_eq!(
            exit_code("t", Err(anyhow::anyhow!("bad input"))),
            ExitCode::from(2)
        );
        assert_eq!(exit_code("t", Ok(())), ExitCode::SUCCESS);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct ReadError {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn one_line_keeps_every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::from(ReadError {
            path: "/data/a.jpg".into(),
            source: io,
        })
        .context("reading the dataset");
        assert_eq!(
            one_line(&error),
            "reading the dataset: /data/a.jpg: no such file"
        );
        let plain = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(one_line(&plain), "outer: middle: inner");
    }
}
