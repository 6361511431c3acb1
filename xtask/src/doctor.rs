//! `cargo xtask doctor`: every part, its version, where it is and whether it answers.

use std::path::PathBuf;

use anyhow::bail;
use xshell::{Shell, cmd};

use crate::flags;
use crate::home::{self, CardetHome, POSTGRES_BIN};
use crate::stack::{self, Service, StackConfig};

struct Part {
    name: &'static str,
    version: Option<String>,
    location: Option<PathBuf>,
    /// `Ok(detail)` when present (and answering, for a service); `Err(fix)` otherwise.
    state: Result<String, String>,
    need: Need,
}

/// What a part's absence means.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    /// A broken install: `doctor` exits 1.
    Required,
    /// Not running: `stack up` starts it.
    Service,
    /// Only some machines want it (the GPU build of ONNX Runtime).
    Optional,
}

impl flags::Doctor {
    pub fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        let home = CardetHome::from_env();
        let parts = inspect(sh, &home);
        if self.json {
            let rows: Vec<_> = parts
                .iter()
                .map(|part| {
                    serde_json::json!({
                        "part": part.name,
                        "version": part.version,
                        "location": part.location.as_ref().map(|path| path.display().to_string()),
                        "ok": part.state.is_ok(),
                        "detail": match &part.state { Ok(detail) | Err(detail) => detail },
                        "required": part.need == Need::Required,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({ "cardet_home": home.root.display().to_string(), "parts": rows })
            );
        } else {
            println!("CARDET_HOME {}", home.root.display());
            for part in &parts {
                let (mark, detail) = match &part.state {
                    Ok(detail) => ("ok  ", detail.clone()),
                    Err(fix) => match part.need {
                        Need::Required => ("MISS", fix.clone()),
                        Need::Service => ("down", fix.clone()),
                        Need::Optional => ("opt ", fix.clone()),
                    },
                };
                println!(
                    "{mark} {:<22} {:<16} {:<60} {detail}",
                    part.name,
                    part.version.as_deref().unwrap_or("-"),
                    part.location
                        .as_ref()
                        .map_or_else(|| "-".to_string(), |path| path.display().to_string()),
                );
            }
        }
        let missing: Vec<_> = parts
            .iter()
            .filter(|part| part.need == Need::Required && part.state.is_err())
            .collect();
        if !missing.is_empty() {
            let names: Vec<_> = missing.iter().map(|part| part.name).collect();
            bail!("missing: {}; run `cargo xtask setup`", names.join(", "));
        }
        Ok(())
    }
}

fn inspect(sh: &Shell, home: &CardetHome) -> Vec<Part> {
    let mut parts = Vec::new();
    let site = home.site_packages();
    let requirements =
        std::fs::read_to_string(crate::project_root().join("xtask/requirements.txt"))
            .unwrap_or_default();
    let python = home.python();
    let python_version = cmd!(sh, "{python} --version")
        .quiet()
        .ignore_stderr()
        .read()
        .ok();
    parts.push(Part {
        name: "python venv",
        version: python_version.map(|v| v.trim_start_matches("Python ").to_string()),
        location: Some(home.venv()),
        state: if home.python().exists() {
            Ok("present".into())
        } else {
            Err("run `cargo xtask setup`".into())
        },
        need: Need::Required,
    });
    for distribution in [
        "torch",
        "onnxruntime",
        "mlflow",
        "ultralytics",
        "tritonclient",
        "pycocotools",
        "opencv-python-headless",
        "onnx",
        "confluent-kafka",
    ] {
        let installed = site
            .as_deref()
            .and_then(|site| home::dist_version(site, distribution));
        let pinned = home::pinned_version(&requirements, distribution);
        let state = match (&installed, &pinned) {
            (Some(installed), Some(pinned))
                if installed.split('+').next() == Some(pinned.as_str()) =>
            {
                Ok("pinned version".to_string())
            }
            (Some(installed), Some(pinned)) => Err(format!(
                "{installed} installed, {pinned} pinned: run `cargo xtask setup`"
            )),
            (Some(_), None) => Ok("installed".to_string()),
            (None, _) => Err("not installed: run `cargo xtask setup`".to_string()),
        };
        parts.push(Part {
            name: distribution,
            version: installed,
            location: site.clone(),
            state,
            need: Need::Required,
        });
    }
    parts.push(link_part(
        "libtorch (for tch)",
        home.libtorch_link().join("lib/libtorch_cpu.so"),
    ));
    parts.push(link_part(
        "libonnxruntime (for ort)",
        home.onnxruntime_link(),
    ));
    // Optional: only `serve` on a GPU needs it.
    let gpu = home.gpu_dir();
    let gpu_version = home::dist_version(&gpu, "onnxruntime-gpu");
    parts.push(Part {
        name: "onnxruntime-gpu",
        state: match gpu_version {
            Some(_) if gpu.join("env.sh").exists() => Ok(format!(
                "optional; `. {}` before `serve --gpu`",
                gpu.join("env.sh").display()
            )),
            _ => Err("optional, for GPUs: `cargo xtask setup --gpu`".into()),
        },
        version: gpu_version,
        location: Some(gpu),
        need: Need::Optional,
    });
    for tool in home::CARGO_TOOLS {
        let binary = home.tool_bin(tool);
        let version = cmd!(sh, "{binary} --version")
            .quiet()
            .ignore_stderr()
            .read()
            .ok();
        parts.push(Part {
            name: tool.krate,
            version: version.map(|v| v.split_whitespace().last().unwrap_or_default().to_string()),
            location: Some(binary.clone()),
            state: if binary.exists() {
                Ok(match &tool.patch {
                    Some(patch) => format!(
                        "present, patched ({})",
                        crate::patched_source::dir_name(tool, patch)
                    ),
                    None => "present".into(),
                })
            } else {
                Err("run `cargo xtask setup`".into())
            },
            need: Need::Required,
        });
    }
    let postgres = PathBuf::from(POSTGRES_BIN).join("postgres");
    let pg_version = cmd!(sh, "{postgres} --version")
        .quiet()
        .ignore_stderr()
        .read()
        .ok();
    parts.push(Part {
        name: "postgresql server",
        version: pg_version.map(|v| v.split_whitespace().last().unwrap_or_default().to_string()),
        location: Some(postgres.clone()),
        state: if postgres.exists() {
            Ok("present".into())
        } else {
            Err("run `cargo xtask setup`".into())
        },
        need: Need::Required,
    });
    if let Ok(config) = StackConfig::load(home, false) {
        for service in Service::ALL {
            let pid = stack::running_pid(&config, service);
            let state = match stack::probe(&config, service) {
                Ok(()) => Ok(format!(
                    "answers (pid {})",
                    pid.map_or_else(|| "not ours".to_string(), |p| p.to_string())
                )),
                Err(error) => Err(format!(
                    "not answering ({error:#}); `cargo xtask stack up` starts it"
                )),
            };
            parts.push(Part {
                name: service.name(),
                version: None,
                location: None,
                state,
                need: Need::Service,
            });
        }
    }
    parts
}

fn link_part(name: &'static str, path: PathBuf) -> Part {
    let target = std::fs::canonicalize(&path).ok();
    Part {
        name,
        version: None,
        state: if target.is_some() {
            Ok("found".into())
        } else {
            Err("run `cargo xtask setup`".into())
        },
        location: target.or(Some(path)),
        need: Need::Required,
    }
}
