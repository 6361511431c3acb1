//! `cargo xtask deploy`: renders an overlay of `deployments/` with `kubectl kustomize`,
//! validates every object offline, and applies it to the current kubectl context.
//!
//! Validation needs no cluster: core objects are checked against the Kubernetes
//! OpenAPI schemas (PyPI `kubernetes-validate`, strict), custom resources against
//! the schemas in `deployments/schemas/` (see `xtask/python/validate_manifests.py`).
//! Secrets in git are templates (`REPLACE_ME`); they are filled from the environment
//! only in the copy sent to the cluster, never written into the clone.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::flags;
use crate::home::CardetHome;

/// The placeholder every secret template carries instead of a value.
const PLACEHOLDER: &str = "REPLACE_ME";

/// The environment variables that fill the secret templates, in the order the
/// templates list them (the storage-config JSON takes the two AWS keys).
const SECRET_VARIABLES: [&str; 3] = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DATABASE_URL"];

impl flags::Deploy {
    pub fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        let overlay = overlay_dir(&self.overlay)?;
        let rendered = render(sh, &overlay)?;
        let out = self.out.clone().unwrap_or_else(|| {
            crate::project_root()
                .join("target/deploy")
                .join(format!("{}.yaml", self.overlay))
        });
        write_file(&out, &rendered)?;
        println!(
            "deploy: rendered {} to {}",
            overlay.display(),
            out.display()
        );
        validate(sh, &out, &self.kubernetes_version)?;

        if !cluster_reachable(sh) {
            println!(
                "deploy: no cluster answers for the current kubectl context; validated offline, nothing applied"
            );
            return Ok(());
        }
        let filled = if self.dry_run {
            fill_secrets(&rendered, |_| Some("dry-run".to_string()))?
        } else {
            fill_secrets(&rendered, |name| std::env::var(name).ok())?
        };
        apply(sh, &filled, self.dry_run)?;
        if self.dry_run {
            println!("deploy: dry run against the cluster done; nothing was applied");
        } else {
            println!("deploy: applied {} to the current context", self.overlay);
        }
        Ok(())
    }
}

fn overlay_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = crate::project_root()
        .join("deployments/overlays")
        .join(name);
    if !dir.join("kustomization.yaml").is_file() {
        let known: Vec<String> =
            std::fs::read_dir(crate::project_root().join("deployments/overlays"))
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|entry| entry.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
        bail!(
            "no overlay `{name}` in deployments/overlays (have: {})",
            known.join(", ")
        );
    }
    Ok(dir)
}

/// `kubectl kustomize`; its deprecation warnings (our kustomizations keep the
/// syntax Debian's older kustomize reads) go to stderr and are dropped.
pub fn render(sh: &Shell, overlay: &Path) -> anyhow::Result<String> {
    let output = cmd!(sh, "kubectl kustomize {overlay}")
        .quiet()
        .ignore_status()
        .output()
        .context("running `kubectl kustomize` (is kubectl installed? `cargo xtask setup` installs Debian's)")?;
    if !output.status.success() {
        bail!(
            "kubectl kustomize {} failed: {}",
            overlay.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("kubectl kustomize printed non-UTF-8")
}

/// Every object against its schema, offline; the error lists the invalid ones.
pub fn validate(sh: &Shell, rendered: &Path, kubernetes_version: &str) -> anyhow::Result<()> {
    let home = CardetHome::from_env();
    let python = home.python();
    let root = crate::project_root();
    let script = root.join("xtask/python/validate_manifests.py");
    let schemas = root.join("deployments/schemas");
    let output = cmd!(
        sh,
        "{python} {script} {rendered} {schemas} --kubernetes-version {kubernetes_version}"
    )
    .quiet()
    .ignore_status()
    .output()
    .with_context(|| format!("running {} (run `cargo xtask setup`)", python.display()))?;
    let report = String::from_utf8_lossy(&output.stdout);
    print!("{report}");
    if !output.status.success() {
        bail!(
            "{} does not validate{}",
            rendered.display(),
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .map(|line| format!(": {line}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Replaces each `REPLACE_ME` with the value of the variable it stands for, in the
/// order the secret templates list them; an unset variable is an error naming it.
pub fn fill_secrets(
    rendered: &str,
    value_of: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<String> {
    let mut filled = String::with_capacity(rendered.len());
    for line in rendered.split_inclusive('\n') {
        if !line.contains(PLACEHOLDER) {
            filled.push_str(line);
            continue;
        }
        let variable = placeholder_variable(line).with_context(|| {
            format!(
                "a `{PLACEHOLDER}` on a line that names no known variable: {}",
                line.trim()
            )
        })?;
        let value = value_of(variable).with_context(|| {
            format!(
                "{variable} is not set: the cluster's secrets need it (it is never written to git)"
            )
        })?;
        filled.push_str(&line.replace(PLACEHOLDER, &escape_for_yaml_and_json(&value)));
    }
    Ok(filled)
}

/// Which variable a template line stands for: by its key, as the templates spell
/// them (`AWS_ACCESS_KEY_ID: REPLACE_ME`, `"access_key_id": "REPLACE_ME"`).
fn placeholder_variable(line: &str) -> Option<&'static str> {
    let key = line
        .split(':')
        .next()?
        .trim()
        .trim_matches('"')
        .to_ascii_uppercase();
    SECRET_VARIABLES
        .into_iter()
        .find(|variable| *variable == key || variable.strip_prefix("AWS_") == Some(key.as_str()))
}

fn escape_for_yaml_and_json(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

fn cluster_reachable(sh: &Shell) -> bool {
    cmd!(sh, "kubectl cluster-info --request-timeout=5s")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}

fn apply(sh: &Shell, manifests: &str, dry_run: bool) -> anyhow::Result<()> {
    let mode = if dry_run {
        "--dry-run=server"
    } else {
        "--dry-run=none"
    };
    cmd!(sh, "kubectl apply {mode} -f -")
        .stdin(manifests)
        .run()
        .context("kubectl apply")?;
    Ok(())
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlays() -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(crate::project_root().join("deployments/overlays"))
                .expect("listing overlays")
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect();
        names.sort();
        names
    }

    /// Every overlay renders, and every object in it validates offline: core objects
    /// against the Kubernetes schemas, custom resources against their CRD schemas.
    #[test]
    fn every_overlay_renders_and_validates() {
        let sh = Shell::new().expect("shell");
        let dir = tempfile::tempdir().expect("tempdir");
        let names = overlays();
        assert!(
            names.len() >= 2,
            "expected the local and production overlays"
        );
        for name in names {
            let rendered = render(&sh, &overlay_dir(&name).expect("overlay")).expect("render");
            for kind in [
                "PyTorchJob",
                "ServingRuntime",
                "InferenceService",
                "Deployment",
                "Secret",
            ] {
                assert!(
                    rendered.contains(&format!("kind: {kind}\n")),
                    "{name} lacks a {kind}"
                );
            }
            let path = dir.path().join(format!("{name}.yaml"));
            std::fs::write(&path, &rendered).expect("write");
            validate(&sh, &path, "1.32.0").unwrap_or_else(|error| panic!("{name}: {error:#}"));
        }
    }

    /// The validator is not a rubber stamp: a typo in a pod template, a wrong enum
    /// in a custom resource and a wrong type in a core object are each reported.
    #[test]
    fn validation_rejects_broken_objects() {
        let sh = Shell::new().expect("shell");
        let rendered = render(&sh, &overlay_dir("production").expect("overlay")).expect("render");
        let dir = tempfile::tempdir().expect("tempdir");
        for (from, to) in [
            ("mountPath: /train", "mountPth: /train"),
            ("restartPolicy: OnFailure", "restartPolicy: Sometimes"),
            ("grpcEndpoint: port:8085", "grpcEndpoint: \"8085\""),
            ("replicas: 2", "replicas: two"),
        ] {
            assert!(
                rendered.contains(from),
                "the rendered overlay lost `{from}`"
            );
            let broken = rendered.replacen(from, to, 1);
            let path = dir.path().join("broken.yaml");
            std::fs::write(&path, broken).expect("write");
            assert!(
                validate(&sh, &path, "1.32.0").is_err(),
                "`{to}` passed validation"
            );
        }
    }

    #[test]
    fn secrets_are_filled_by_variable_and_missing_ones_named() {
        let template = "  AWS_ACCESS_KEY_ID: REPLACE_ME\n  DATABASE_URL: REPLACE_ME\n      \"secret_access_key\": \"REPLACE_ME\",\n";
        let filled = fill_secrets(template, |name| Some(format!("<{name}>"))).expect("fill");
        assert_eq!(
            filled,
            "  AWS_ACCESS_KEY_ID: <AWS_ACCESS_KEY_ID>\n  DATABASE_URL: <DATABASE_URL>\n      \"secret_access_key\": \"<AWS_SECRET_ACCESS_KEY>\",\n"
        );
        let error = fill_secrets(template, |name| (name != "DATABASE_URL").then(String::new))
            .expect_err("a missing variable");
        assert!(error.to_string().contains("DATABASE_URL"), "{error}");
    }

    /// No rendered overlay carries anything but placeholders where keys go.
    #[test]
    fn rendered_secrets_hold_only_placeholders() {
        let sh = Shell::new().expect("shell");
        for name in overlays() {
            let rendered = render(&sh, &overlay_dir(&name).expect("overlay")).expect("render");
            for line in rendered.lines().filter(|line| {
                let key = line.split(':').next().unwrap_or("").to_ascii_lowercase();
                key.contains("secret_access_key") || key.contains("access_key_id")
            }) {
                assert!(
                    line.contains(PLACEHOLDER),
                    "{name}: a real value in `{line}`"
                );
            }
        }
    }
}
