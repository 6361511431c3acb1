//! `cargo xtask import-weights`: an Ultralytics `.pt` to cardet's safetensors, by the
//! conversion script `crates/model/python/import_weights.py` run with the venv's
//! Python (the only place that can unpickle Ultralytics' classes). Nothing is
//! downloaded.

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::flags;
use crate::home::CardetHome;

const SCRIPT: &str = include_str!("../../crates/model/python/import_weights.py");

impl flags::ImportWeights {
    pub fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        let python = CardetHome::from_env().python();
        if !python.exists() {
            bail!(
                "no venv Python at {}; run `cargo xtask setup`",
                python.display()
            );
        }
        let pt = std::path::absolute(&self.pt)
            .with_context(|| format!("resolving {}", self.pt.display()))?;
        let out = match &self.out {
            Some(out) => {
                std::path::absolute(out).with_context(|| format!("resolving {}", out.display()))?
            }
            None => pt.with_extension("safetensors"),
        };
        let dir = tempfile_dir()?;
        let script = dir.join("import_weights.py");
        std::fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
        let scale: Vec<&str> = self.scale.as_deref().into_iter().collect();
        let result = cmd!(sh, "{python} {script} {pt} {out} {scale...}")
            .env("YOLO_OFFLINE", "1")
            .env("YOLO_CONFIG_DIR", &dir)
            .run();
        let _ = std::fs::remove_dir_all(&dir);
        result.with_context(|| format!("converting {}", pt.display()))?;
        Ok(())
    }
}

/// A private folder for the script and Ultralytics' settings file.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("cardet-import-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
