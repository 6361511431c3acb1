//! `cargo xtask image build|push`: the container images of `deployments/images/`
//! (the trainer on libtorch, `serve` on ONNX Runtime, and the tools), built with
//! whichever container tool is present, Docker or Podman.

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::flags;

/// Each image: its name under the registry and its Dockerfile in `deployments/images/`.
pub const IMAGES: [(&str, &str); 3] = [
    ("mwt", "deployments/images/mwt.Dockerfile"),
    ("serve", "deployments/images/serve.Dockerfile"),
    ("tools", "deployments/images/tools.Dockerfile"),
];

impl flags::Image {
    pub fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        let (action, options) = match &self.action {
            flags::ImageAction::Build(options) => ("build", options),
            flags::ImageAction::Push(options) => ("push", options),
        };
        let selected = select(&options.only)?;
        let tool = container_tool(sh)?;
        for (name, dockerfile) in selected {
            let reference = image_reference(&options.registry, name, &options.tag);
            match action {
                "build" => {
                    println!("image: building {reference} from {dockerfile}");
                    cmd!(sh, "{tool} build -f {dockerfile} -t {reference} .")
                        .run()
                        .with_context(|| format!("{tool} build of {reference}"))?;
                }
                _ => {
                    println!("image: pushing {reference}");
                    cmd!(sh, "{tool} push {reference}")
                        .run()
                        .with_context(|| format!("{tool} push of {reference}"))?;
                }
            }
        }
        Ok(())
    }
}

fn select(only: &[String]) -> anyhow::Result<Vec<(&'static str, &'static str)>> {
    if only.is_empty() {
        return Ok(IMAGES.to_vec());
    }
    only.iter()
        .map(|wanted| {
            IMAGES
                .iter()
                .find(|(name, _)| name == wanted)
                .copied()
                .with_context(|| {
                    let names: Vec<&str> = IMAGES.iter().map(|(name, _)| *name).collect();
                    format!("no image `{wanted}` (have: {})", names.join(", "))
                })
        })
        .collect()
}

/// `registry/cardet/name:tag`, or `cardet/name:tag` without a registry.
pub fn image_reference(registry: &Option<String>, name: &str, tag: &str) -> String {
    match registry.as_deref().map(|r| r.trim_end_matches('/')) {
        Some(registry) if !registry.is_empty() => format!("{registry}/cardet/{name}:{tag}"),
        _ => format!("cardet/{name}:{tag}"),
    }
}

/// Docker or Podman with an engine that answers; a client alone (as on a CI box
/// without a daemon) is a clear error, not a failed build half-way.
fn container_tool(sh: &Shell) -> anyhow::Result<&'static str> {
    let mut found_client = None;
    for tool in ["docker", "podman"] {
        if cmd!(sh, "{tool} --version")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_err()
        {
            continue;
        }
        found_client.get_or_insert(tool);
        if cmd!(sh, "{tool} info")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok()
        {
            return Ok(tool);
        }
    }
    match found_client {
        Some(tool) => bail!(
            "`{tool}` is installed but no container engine answers (`{tool} info` fails): start the engine, or build the images where one runs"
        ),
        None => bail!(
            "no container tool: install Docker or Podman to build images (`cargo xtask image` needs one; nothing else in cardet does)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_with_and_without_registry() {
        assert_eq!(image_reference(&None, "serve", "1.0"), "cardet/serve:1.0");
        assert_eq!(
            image_reference(&Some("registry.example.com:5000/".into()), "mwt", "abc"),
            "registry.example.com:5000/cardet/mwt:abc"
        );
    }

    #[test]
    fn unknown_image_is_named() {
        let error = select(&["trainer".into()]).expect_err("unknown image");
        assert!(error.to_string().contains("trainer"), "{error}");
        assert_eq!(select(&[]).expect("all").len(), IMAGES.len());
    }

    /// Each Dockerfile is multi-stage, pins its bases to a version (no `latest`) and
    /// runs as a non-root user.
    #[test]
    fn dockerfiles_are_multi_stage_pinned_and_non_root() {
        for (name, dockerfile) in IMAGES {
            let text = std::fs::read_to_string(crate::project_root().join(dockerfile))
                .unwrap_or_else(|error| panic!("{dockerfile}: {error}"));
            let bases: Vec<&str> = text
                .lines()
                .filter_map(|line| line.trim().strip_prefix("FROM "))
                .collect();
            assert!(bases.len() >= 2, "{name}: not multi-stage");
            for base in &bases {
                let image = base.split_whitespace().next().unwrap_or("");
                let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
                assert!(
                    image.contains('@') || tag.chars().any(|c| c.is_ascii_digit()),
                    "{name}: base `{image}` is not pinned to a version"
                );
            }
            let last_user = text
                .lines()
                .rev()
                .find_map(|line| line.trim().strip_prefix("USER "))
                .unwrap_or("root");
            assert!(
                !matches!(last_user.trim(), "root" | "0"),
                "{name}: runs as root"
            );
        }
    }
}
