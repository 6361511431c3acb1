//! Repository invariants, checked as tests so that `cargo xtask test` enforces them.

use std::path::Path;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// Every crate and binary folder has a `###` entry in ARCHITECTURE.md's code map.
#[test]
fn architecture_maps_every_crate() {
    let root = crate::project_root();
    let architecture = read(&root.join("ARCHITECTURE.md"));
    for group in ["crates", "bins"] {
        let entries = std::fs::read_dir(root.join(group)).expect("listing crates");
        for entry in entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().join("Cargo.toml").exists())
        {
            let heading = format!("### `{}/{}`", group, entry.file_name().to_string_lossy());
            assert!(
                architecture.contains(&heading),
                "ARCHITECTURE.md lacks `{heading}`: add its code-map entry"
            );
        }
    }
}

/// Every library crate opens with a `//!` paragraph saying what it is for.
#[test]
fn every_crate_root_has_a_doc_paragraph() {
    let root = crate::project_root();
    for group in ["crates", "bins"] {
        for entry in std::fs::read_dir(root.join(group))
            .expect("listing")
            .filter_map(Result::ok)
        {
            for file in ["src/lib.rs", "src/main.rs"] {
                let path = entry.path().join(file);
                if path.exists() {
                    assert!(
                        read(&path).trim_start().starts_with("//!"),
                        "{} must open with a `//!` paragraph",
                        path.display()
                    );
                }
            }
        }
    }
}

/// CI calls README's test command.
#[test]
fn ci_runs_the_readme_test_command() {
    let root = crate::project_root();
    assert!(
        read(&root.join(".ci/run")).contains("cargo xtask test"),
        ".ci/run must call `cargo xtask test`"
    );
    assert!(
        read(&root.join("README.md")).contains("cargo xtask test"),
        "README must name `cargo xtask test`"
    );
}

/// `.env.example` names every variable the stack uses, and carries no real secret.
#[test]
fn env_example_lists_the_stack_variables() {
    let root = crate::project_root();
    let example = read(&root.join(".env.example"));
    let config =
        crate::stack::StackConfig::from_lookup(root.join("target/tidy-stack"), &|key| match key {
            "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" => Some("x".to_string()),
            _ => None,
        })
        .expect("default config");
    for key in config.variables().keys() {
        assert!(
            example.contains(&format!("{key}=")),
            ".env.example lacks {key}"
        );
    }
}

/// Every stage of the Jenkinsfile runs `cargo xtask` with a command line that
/// `cargo xtask` accepts, so Jenkins cannot drift from what developers run.
#[test]
fn jenkinsfile_calls_only_existing_xtask_commands() {
    use clap::Parser;

    let jenkinsfile = read(&crate::project_root().join("Jenkinsfile"));
    let commands: Vec<&str> = jenkinsfile
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("steps { sh '")
                .or_else(|| line.trim().strip_prefix("sh '"))
        })
        .map(|rest| rest.split('\'').next().unwrap_or(rest))
        .collect();
    assert!(
        commands.len() >= 8,
        "expected the setup..deploy stages, found {commands:?}"
    );
    for command in commands {
        let args = command
            .strip_prefix("cargo xtask ")
            .unwrap_or_else(|| panic!("a Jenkins step that is not `cargo xtask`: {command}"));
        // Shell variables stand for values; any value parses the same.
        let argv = std::iter::once("cargo xtask").chain(
            args.split_whitespace()
                .map(|word| if word.contains('$') { "value" } else { word }),
        );
        if let Err(error) = crate::flags::Xtask::try_parse_from(argv) {
            panic!("Jenkinsfile runs `{command}`, which cargo xtask rejects:\n{error}");
        }
    }
    for stage in [
        "Setup",
        "Lint",
        "Test",
        "Benchmark",
        "Train",
        "Export",
        "Upload",
        "Deploy",
    ] {
        assert!(
            jenkinsfile.contains(&format!("stage('{stage}')")),
            "no {stage} stage"
        );
    }
    assert!(
        jenkinsfile.contains("numToKeepStr: '5'"),
        "log rotation of 5 builds"
    );
}

/// docker-compose.yml offers the embedded stack's ports, so everything that talks to
/// the local stack talks to the containers unchanged; `docker compose config`
/// accepts the file where the compose plugin is installed.
#[test]
fn compose_file_matches_the_embedded_stack() {
    let root = crate::project_root();
    let python = crate::home::CardetHome::from_env().python();
    let output = std::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(root.join("docker-compose.yml"))
        .output()
        .expect("running the venv's Python (cargo xtask setup)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let compose: serde_json::Value = serde_json::from_slice(&output.stdout).expect("compose JSON");
    for (service, port) in [
        ("kafka", 9092),
        ("postgres", 5432),
        ("s3", 9000),
        ("mlflow", 5000),
        ("serve", 8000),
    ] {
        let ports = compose["services"][service]["ports"]
            .as_array()
            .unwrap_or_else(|| panic!("service {service} publishes no ports"));
        let wanted = format!("127.0.0.1:{port}:{port}");
        assert!(
            ports
                .iter()
                .any(|published| published.as_str() == Some(wanted.as_str())),
            "{service} does not publish {wanted}"
        );
    }
    let text = read(&root.join("docker-compose.yml"));
    assert!(
        !text.contains("change-me"),
        "compose must take keys from .env, not hold them"
    );
    let compose_plugin = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if compose_plugin {
        let status = std::process::Command::new("docker")
            .args(["compose", "-f"])
            .arg(root.join("docker-compose.yml"))
            .arg("config")
            .arg("--quiet")
            .env("AWS_ACCESS_KEY_ID", "compose-check")
            .env("AWS_SECRET_ACCESS_KEY", "compose-check")
            .status()
            .expect("docker compose config");
        assert!(
            status.success(),
            "docker compose config rejects docker-compose.yml"
        );
    } else {
        eprintln!("docker compose is not installed here: checked the file's ports only");
    }
}
