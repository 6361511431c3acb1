//! `cargo xtask test`: the CI gate, the same on a laptop and in CI.

use std::time::Instant;

use anyhow::Context;
use xshell::{Shell, cmd};

use crate::flags;
use crate::home::CardetHome;
use crate::stack::{self, Service, StackConfig};

impl flags::Test {
    pub fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        let started = Instant::now();
        let home = CardetHome::from_env();
        if !self.no_lint {
            flags::Setup {
                check: false,
                gpu: false,
            }
            .run(sh)?;
        }
        let _env = home.shared_build_env(sh);
        if !self.no_lint {
            lint(sh)?;
        }
        let config = StackConfig::load(&home, true)?;
        // Leave services the developer started alone; stop only those started here.
        let started_here: Vec<Service> = Service::ALL
            .into_iter()
            .filter(|&service| stack::running_pid(&config, service).is_none())
            .collect();
        stack::up(&home, &config, &Service::ALL).context("bringing the stack up")?;
        let outcome = step("cargo nextest run", || {
            let args = &self.nextest_args;
            let mut command = cmd!(sh, "cargo nextest run --workspace --no-fail-fast {args...}");
            for (key, value) in config.variables() {
                command = command.env(key, value);
            }
            // nextest runs a test per core, so libtorch's own pool of a thread per
            // core oversubscribes them: its OpenMP threads spin at every barrier
            // while another test holds the core they wait for. On CI's two cores
            // the training test took 242 s in the suite against 90 s with one
            // thread beside another test (BENCHMARKS.md "Setup and test wall
            // times"). `mwt launch` gives its ranks one thread anyway, as torchrun
            // does; a developer's own OMP_NUM_THREADS wins.
            if std::env::var_os("OMP_NUM_THREADS").is_none() {
                command = command.env("OMP_NUM_THREADS", "1");
            }
            command.run().map_err(Into::into)
        });
        stack::down(&config, &started_here).context("bringing the stack down")?;
        outcome?;
        println!(
            "xtask test: passed in {:.0}s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

impl flags::Lint {
    pub fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        let home = CardetHome::from_env();
        let _env = home.shared_build_env(sh);
        lint(sh)
    }
}

fn lint(sh: &Shell) -> anyhow::Result<()> {
    step("cargo fmt --check", || {
        cmd!(sh, "cargo fmt --all --check")
            .run()
            .map_err(Into::into)
    })?;
    step("cargo clippy", || {
        cmd!(
            sh,
            "cargo clippy --workspace --all-targets --quiet -- -D warnings"
        )
        .run()
        .map_err(Into::into)
    })?;
    // The NCCL build of the c10d shim, so the CUDA path compiles on machines with no
    // GPU too (its tests and bench run only where one is present).
    step("cargo clippy (cardet-c10d, cuda)", || {
        cmd!(
            sh,
            "cargo clippy -p cardet-c10d --features cuda --all-targets --quiet -- -D warnings"
        )
        .run()
        .map_err(Into::into)
    })
}

fn step(name: &str, run: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("==> {name}");
    let result = run().with_context(|| format!("{name} failed"));
    println!(
        "<== {name}: {} in {:.1}s",
        if result.is_ok() { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    result
}
