//! `cargo xtask synth`: a YOLO dataset of synthetic traffic scenes (cardet-detect's
//! `synth` module), for tests, benchmarks and the local pipeline.
//!
//! The renderer lives in `cardet-detect`; xtask runs it as that crate's `synth`
//! example built in release, which keeps xtask's own dependency list short and
//! renders thousands of scenes in seconds rather than minutes.

use xshell::{Shell, cmd};

use crate::flags;

impl flags::Synth {
    pub fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        let (n_images, seed, size) = (
            self.images.to_string(),
            self.seed.to_string(),
            self.size.clone(),
        );
        let mut args = vec![
            "--images".to_string(),
            n_images,
            "--seed".to_string(),
            seed,
            "--size".to_string(),
            size,
        ];
        match &self.grid {
            Some(grid) => args.extend([
                "--grid".to_string(),
                std::path::absolute(grid)?.display().to_string(),
            ]),
            // Relative to where the user ran it, not to the root xtask works in.
            None => args.extend([
                "--out".to_string(),
                std::path::absolute(&self.out)?.display().to_string(),
            ]),
        }
        cmd!(
            sh,
            "cargo run --release --quiet --package cardet-detect --example synth -- {args...}"
        )
        .run()?;
        Ok(())
    }
}
