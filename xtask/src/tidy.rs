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
