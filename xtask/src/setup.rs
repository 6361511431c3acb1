//! `cargo xtask setup`: installs every part into `$CARDET_HOME`, idempotently.
//!
//! Each part is checked first (a version stamp, a binary at its pinned version, a
//! Debian package's status) and installed only when missing, so a warm run is a
//! no-op in seconds and CI's fresh clone reuses what an earlier run installed.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use xshell::{Shell, cmd};

use crate::flags;
use crate::home::{APT_PACKAGES, AptPackage, CARGO_TOOLS, CardetHome, CargoTool};
use crate::patched_source;

impl flags::Setup {
    pub fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        let home = CardetHome::from_env();
        let started = Instant::now();
        if self.check {
            let missing = missing_parts(sh, &home);
            for part in &missing {
                eprintln!("missing: {part}");
            }
            if !missing.is_empty() {
                bail!("{} part(s) missing: run `cargo xtask setup`", missing.len());
            }
            println!("setup: everything is installed in {}", home.root.display());
            return Ok(());
        }
        std::fs::create_dir_all(&home.root)
            .with_context(|| format!("creating {}", home.root.display()))?;
        ensure_apt_packages(sh)?;
        ensure_venv(sh, &home)?;
        ensure_library_links(&home)?;
        for tool in CARGO_TOOLS {
            ensure_cargo_tool(sh, &home, tool)?;
        }
        ensure_nextest(sh)?;
        link_home_into_clone(&home)?;
        if self.gpu {
            ensure_gpu_runtime(sh, &home)?;
        }
        println!(
            "setup: done in {:.1}s ({})",
            started.elapsed().as_secs_f64(),
            home.root.display()
        );
        Ok(())
    }
}

/// What `setup` would install, one line each (empty when everything is there).
pub fn missing_parts(sh: &Shell, home: &CardetHome) -> Vec<String> {
    let mut missing = Vec::new();
    for apt in missing_apt_packages(sh) {
        missing.push(format!("Debian package {} ({})", apt.package, apt.why));
    }
    if !venv_is_current(home) {
        missing.push(format!(
            "Python venv {} at the pins of xtask/requirements.txt",
            home.venv().display()
        ));
    }
    for tool in CARGO_TOOLS {
        if !cargo_tool_installed(home, tool) {
            missing.push(format!(
                "{} {} in {}",
                tool.krate,
                tool.version,
                home.tools_root().display()
            ));
        }
    }
    missing
}

fn apt_installed(sh: &Shell, package: &str) -> bool {
    let format = "${Status}";
    cmd!(sh, "dpkg-query -W -f={format} {package}")
        .quiet()
        .ignore_stderr()
        .read()
        .is_ok_and(|status| status.contains("install ok installed"))
}

fn missing_apt_packages(sh: &Shell) -> Vec<&'static AptPackage> {
    APT_PACKAGES
        .iter()
        .filter(|apt| !apt.unless_on_path.is_some_and(on_path))
        .filter(|apt| !apt_installed(sh, apt.package))
        .collect()
}

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|folder| folder.join(command).is_file())
    })
}

fn ensure_apt_packages(sh: &Shell) -> anyhow::Result<()> {
    let missing: Vec<&str> = missing_apt_packages(sh)
        .iter()
        .map(|apt| apt.package)
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages ok");
        return Ok(());
    }
    println!("setup: installing Debian packages {}", missing.join(" "));
    // As root (CI, containers) apt-get runs directly; otherwise through sudo.
    let (program, prefix): (&str, &[&str]) = if nix::unistd::Uid::effective().is_root() {
        ("apt-get", &[])
    } else {
        ("sudo", &["apt-get"])
    };
    cmd!(sh, "{program} {prefix...} update -qq")
        .run()
        .context("apt-get update")?;
    cmd!(
        sh,
        "{program} {prefix...} install -y -qq --no-install-recommends {missing...}"
    )
    .env("DEBIAN_FRONTEND", "noninteractive")
    .run()
    .context("apt-get install")?;
    Ok(())
}

fn requirements_path() -> std::path::PathBuf {
    crate::project_root().join("xtask/requirements.txt")
}

fn requirements_stamp(home: &CardetHome) -> std::path::PathBuf {
    home.venv().join(".cardet-requirements.sha256")
}

fn requirements_digest() -> anyhow::Result<String> {
    let path = requirements_path();
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&text)))
}

fn venv_is_current(home: &CardetHome) -> bool {
    let Ok(expected) = requirements_digest() else {
        return false;
    };
    home.python().exists()
        && std::fs::read_to_string(requirements_stamp(home))
            .is_ok_and(|stamp| stamp.trim() == expected)
}

fn ensure_venv(sh: &Shell, home: &CardetHome) -> anyhow::Result<()> {
    if venv_is_current(home) {
        println!("setup: Python venv ok");
        return Ok(());
    }
    let venv = home.venv();
    if !home.python().exists() {
        println!("setup: creating the venv {}", venv.display());
        cmd!(sh, "python3 -m venv {venv}")
            .run()
            .context("python3 -m venv (install python3 and python3-venv)")?;
        let pip = home.venv_bin("pip");
        cmd!(sh, "{pip} install -q --upgrade pip").run()?;
    }
    // torch alone is ~2.7 GB of CUDA libraries: pip's progress is worth seeing.
    println!(
        "setup: installing xtask/requirements.txt into the venv (torch is large: minutes on a cold cache)"
    );
    let pip = home.venv_bin("pip");
    let requirements = requirements_path();
    cmd!(sh, "{pip} install --progress-bar off -r {requirements}")
        .run()
        .context("pip install")?;
    std::fs::write(requirements_stamp(home), requirements_digest()?)?;
    Ok(())
}

/// Stable names for the two native libraries the binaries load, so the build and
/// the binaries need no knowledge of the venv's layout.
fn ensure_library_links(home: &CardetHome) -> anyhow::Result<()> {
    let site = home
        .site_packages()
        .context("the venv has no site-packages")?;
    let torch = site.join("torch");
    if !torch.join("lib/libtorch_cpu.so").exists() {
        bail!(
            "{} has no lib/libtorch_cpu.so: reinstall with `cargo xtask setup`",
            torch.display()
        );
    }
    replace_symlink(&torch, &home.libtorch_link())?;

    let capi = site.join("onnxruntime/capi");
    let library = std::fs::read_dir(&capi)
        .with_context(|| format!("reading {}", capi.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libonnxruntime.so."))
        })
        .with_context(|| format!("no libonnxruntime.so.* in {}", capi.display()))?;
    replace_symlink(&library, &home.onnxruntime_link())?;
    println!(
        "setup: libtorch and libonnxruntime linked into {}",
        home.root.display()
    );
    Ok(())
}

/// The GPU build of ONNX Runtime. Its newest wheel can lag the CPU one (1.32.0):
/// the API level cardet needs (1.31) is what matters, checked again at load.
const ONNXRUNTIME_GPU: &str = "1.31.1";

/// Installs onnxruntime-gpu and the CUDA libraries its extras name into
/// `$CARDET_HOME/gpu` (a pip `--target` folder, apart from the venv, whose CPU
/// onnxruntime shares the package name), and writes `gpu/env.sh` with the
/// `ORT_DYLIB_PATH` and `LD_LIBRARY_PATH` that make `serve` use it.
fn ensure_gpu_runtime(sh: &Shell, home: &CardetHome) -> anyhow::Result<()> {
    let target = home.gpu_dir();
    let stamp = target.join(format!(".onnxruntime-gpu-{ONNXRUNTIME_GPU}"));
    if !stamp.exists() {
        println!(
            "setup: installing onnxruntime-gpu {ONNXRUNTIME_GPU} with CUDA 13 and cuDNN 9 into {}",
            target.display()
        );
        let pip = home.venv_bin("pip");
        let requirement = format!("onnxruntime-gpu[cuda,cudnn]=={ONNXRUNTIME_GPU}");
        cmd!(
            sh,
            "{pip} install --progress-bar off --upgrade --target {target} {requirement}"
        )
        .run()
        .context("pip install onnxruntime-gpu")?;
        std::fs::write(&stamp, "")?;
    }
    let library = target
        .join("onnxruntime/capi")
        .join(format!("libonnxruntime.so.{ONNXRUNTIME_GPU}"));
    if !library.exists() {
        bail!(
            "{} is missing: remove {} and run `cargo xtask setup --gpu` again",
            library.display(),
            stamp.display()
        );
    }
    let mut library_dirs: Vec<String> = Vec::new();
    for package in std::fs::read_dir(target.join("nvidia")).context("reading the NVIDIA wheels")? {
        let package = package?.path();
        // CUDA 13's wheels keep their libraries in `cu13/lib`, older ones in `lib`.
        for lib in [package.join("lib"), package.join("cu13/lib")] {
            if lib.is_dir() {
                library_dirs.push(lib.display().to_string());
            }
        }
    }
    library_dirs.sort();
    let env = format!(
        "# Written by `cargo xtask setup --gpu`: source it before `serve --gpu`.\n\
         export ORT_DYLIB_PATH={}\nexport LD_LIBRARY_PATH={}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\n",
        library.display(),
        library_dirs.join(":")
    );
    let env_file = target.join("env.sh");
    std::fs::write(&env_file, env).with_context(|| format!("writing {}", env_file.display()))?;
    println!(
        "setup: onnxruntime-gpu {ONNXRUNTIME_GPU} ready; `. {}` then `serve --gpu 0 ...`",
        env_file.display()
    );
    Ok(())
}

fn replace_symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    if std::fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

/// `cargo install` records what it installed in `.crates2.json`; reading it avoids a
/// registry round trip on every warm run.
fn cargo_tool_installed(home: &CardetHome, tool: &CargoTool) -> bool {
    let record = home.tools_root().join(".crates2.json");
    let Ok(text) = std::fs::read_to_string(record) else {
        return false;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let key_prefix = format!("{} {} ", tool.krate, tool.version);
    // A patched tool's key names its source folder, which names the patch.
    let source = tool
        .patch
        .as_ref()
        .map(|patch| patched_source::dir_name(tool, patch));
    let installed = json["installs"].as_object().is_some_and(|installs| {
        installs.iter().any(|(key, info)| {
            key.starts_with(&key_prefix)
                && source
                    .as_ref()
                    .is_none_or(|source| key.contains(source.as_str()))
                && info["features"]
                    .as_array()
                    .is_some_and(|features| features.iter().any(|feature| feature == tool.features))
        })
    });
    installed && home.tool_bin(tool).exists()
}

fn ensure_cargo_tool(sh: &Shell, home: &CardetHome, tool: &CargoTool) -> anyhow::Result<()> {
    if cargo_tool_installed(home, tool) {
        println!("setup: {} {} ok", tool.krate, tool.version);
        return Ok(());
    }
    println!(
        "setup: building {} {} (a cold build takes minutes on 2 cores)",
        tool.krate, tool.version
    );
    let root = home.tools_root();
    // A target dir in the cache makes a re-run after an interruption incremental.
    let target = home.root.join("cargo-target");
    let (krate, version, features) = (tool.krate, tool.version, tool.features);
    if let Some(patch) = &tool.patch {
        let package = patched_source::prepare(sh, home, tool, patch)?;
        // `--force`: it replaces an unpatched build of the same version.
        cmd!(sh, "cargo install --locked --force --root {root} --target-dir {target} --features {features} --path {package}")
            .run()
            .with_context(|| format!("cargo install {krate} from {}", package.display()))?;
        return Ok(());
    }
    cmd!(sh, "cargo install --locked --root {root} --target-dir {target} --version {version} --features {features} {krate}")
        .run()
        .with_context(|| format!("cargo install {krate}"))?;
    Ok(())
}

fn ensure_nextest(sh: &Shell) -> anyhow::Result<()> {
    if cmd!(sh, "cargo nextest --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
    {
        return Ok(());
    }
    println!("setup: installing cargo-nextest");
    cmd!(sh, "cargo install --locked cargo-nextest")
        .run()
        .context("cargo install cargo-nextest")?;
    Ok(())
}

/// `.cargo/config.toml` points the build at `<clone>/.cardet/...`: link it to the home.
fn link_home_into_clone(home: &CardetHome) -> anyhow::Result<()> {
    replace_symlink(&home.root, &crate::project_root().join(".cardet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_pin_every_line_exactly() {
        let text = std::fs::read_to_string(requirements_path()).expect("requirements.txt");
        for line in text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
        {
            assert!(
                line.contains("=="),
                "unpinned requirement in xtask/requirements.txt: {line}"
            );
        }
        assert_eq!(
            crate::home::pinned_version(&text, "torch").as_deref(),
            Some("2.13.0"),
            "tch 0.26 needs torch 2.13.0"
        );
    }
}
