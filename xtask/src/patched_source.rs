//! The sources of a crates.io tool with one of its dependencies patched.
//!
//! Both `.crate` files are downloaded from crates.io and checked against pinned
//! SHA-256 sums, the diff is applied to the dependency, and the tool's manifest is
//! told to use that copy (`[patch.crates-io]`). Every other version in the tool's
//! published `Cargo.lock` stays as it is, so `cargo install --locked --path` builds
//! what upstream locked, plus our fix.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use xshell::{Shell, cmd};

use crate::home::{CardetHome, CargoTool, SourcePatch};

/// Where crates.io serves `.crate` files (its index's `dl`).
const CRATES_IO_DOWNLOAD: &str = "https://static.crates.io/crates";

fn hex_sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The folder the patched sources live in, named after the patch's own hash so that
/// a changed patch is unpacked and built anew.
pub fn dir_name(tool: &CargoTool, patch: &SourcePatch) -> String {
    let patch_hash = hex_sha256(patch.diff.as_bytes());
    format!(
        "{}-{}+cardet.{}",
        tool.krate,
        tool.version,
        &patch_hash[..12]
    )
}

/// Unpacks and patches the sources once (a `.complete` stamp marks them done) and
/// returns the tool's package folder, ready for `cargo install --locked --path`.
pub fn prepare(
    sh: &Shell,
    home: &CardetHome,
    tool: &CargoTool,
    patch: &SourcePatch,
) -> anyhow::Result<PathBuf> {
    let dir = home.root.join("src").join(dir_name(tool, patch));
    let package = dir.join(format!("{}-{}", tool.krate, tool.version));
    let stamp = dir.join(".complete");
    if stamp.exists() {
        return Ok(package);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fetch_crate(sh, &dir, tool.krate, tool.version, patch.tool_sha256)?;
    fetch_crate(
        sh,
        &dir,
        patch.dependency,
        patch.dependency_version,
        patch.dependency_sha256,
    )?;

    let dependency_folder = format!("{}-{}", patch.dependency, patch.dependency_version);
    let diff = dir.join("cardet.patch");
    std::fs::write(&diff, patch.diff).with_context(|| format!("writing {}", diff.display()))?;
    {
        let _cd = sh.push_dir(dir.join(&dependency_folder));
        // Outside any repository, `git apply` patches files like `patch -p1`; the
        // ceiling keeps it from finding one above $CARDET_HOME/src.
        let _ceiling = sh.push_env("GIT_CEILING_DIRECTORIES", &dir);
        cmd!(sh, "git apply {diff}")
            .run()
            .with_context(|| format!("applying {} to {dependency_folder}", diff.display()))?;
    }

    let manifest = package.join("Cargo.toml");
    let mut text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    text.push_str(&format!(
        "\n[patch.crates-io]\n{} = {{ path = \"../{dependency_folder}\" }}\n",
        patch.dependency
    ));
    std::fs::write(&manifest, text).with_context(|| format!("writing {}", manifest.display()))?;
    {
        // `--locked` needs a lock file that already names the patched copy: resolving
        // once rewrites that one entry and keeps every other version.
        let _cd = sh.push_dir(&package);
        let features = tool.features;
        cmd!(
            sh,
            "cargo metadata --format-version 1 --features {features}"
        )
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("resolving {}", manifest.display()))?;
    }
    std::fs::write(&stamp, "").with_context(|| format!("writing {}", stamp.display()))?;
    Ok(package)
}

/// Downloads `name-version.crate` into `dir`, checks its SHA-256 and unpacks it there.
fn fetch_crate(
    sh: &Shell,
    dir: &Path,
    name: &str,
    version: &str,
    sha256: &str,
) -> anyhow::Result<()> {
    let file = dir.join(format!("{name}-{version}.crate"));
    let url = format!("{CRATES_IO_DOWNLOAD}/{name}/{name}-{version}.crate");
    cmd!(
        sh,
        "curl --fail --silent --show-error --location --retry 3 --output {file} {url}"
    )
    .run()
    .with_context(|| format!("downloading {url}"))?;
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let actual = hex_sha256(&bytes);
    if actual != sha256 {
        bail!("{url}: SHA-256 is {actual}, expected {sha256}");
    }
    cmd!(sh, "tar -xzf {file} -C {dir}")
        .run()
        .with_context(|| format!("unpacking {}", file.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::TANSU;

    #[test]
    fn the_source_folder_changes_with_the_patch() {
        let patch = TANSU.patch.as_ref().expect("tansu is patched");
        let name = dir_name(&TANSU, patch);
        assert!(name.starts_with("tansu-0.6.0+cardet."), "{name}");
        let changed = SourcePatch {
            diff: "--- a/x\n+++ b/x\n",
            ..*patch
        };
        assert_ne!(dir_name(&TANSU, &changed), name);
    }

    #[test]
    fn the_shipped_patch_is_a_diff_of_the_storage_engine() {
        let patch = TANSU.patch.as_ref().expect("tansu is patched");
        assert!(
            patch
                .diff
                .starts_with("--- a/src/lite.rs\n+++ b/src/lite.rs\n")
        );
        assert!(patch.diff.contains("struct StatementCache"));
    }
}
