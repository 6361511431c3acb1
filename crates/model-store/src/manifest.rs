//! The version manifest: every file of a version with its size and SHA-256.
//!
//! It is the last object an upload writes, so its presence is what makes a version
//! exist; readers trust nothing the manifest does not list and check every byte
//! against it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// The object written last into `<model>/<version>/`.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The layout version of [`Manifest`].
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub model: String,
    pub version: u64,
    /// Seconds since the Unix epoch when the upload finished.
    pub created_unix_s: u64,
    /// Sorted by path; paths are relative to the version folder, `/`-separated.
    pub files: Vec<ManifestFile>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

impl Manifest {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses and validates a manifest read from `key`: the known format, and paths
    /// that stay inside the version folder.
    pub fn parse(bytes: &[u8], key: &str) -> Result<Manifest, Error> {
        let manifest_error = |message: String| Error::Manifest {
            key: key.to_string(),
            message,
        };
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|error| manifest_error(error.to_string()))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(manifest_error(format!(
                "format {} (this build reads {MANIFEST_FORMAT})",
                manifest.format
            )));
        }
        for file in &manifest.files {
            if !is_safe_relative_path(&file.path) || file.path == MANIFEST_FILE {
                return Err(manifest_error(format!("file path {:?}", file.path)));
            }
            if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(manifest_error(format!(
                    "sha256 of {:?} is not 64 hex digits",
                    file.path
                )));
            }
        }
        Ok(manifest)
    }
}

/// SHA-256 of some bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of a file, read in blocks, lowercase hex, with its size.
pub fn sha256_file(path: &Path) -> Result<(String, u64), Error> {
    use std::io::Read;
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0_u8; 1 << 20];
    let mut size = 0_u64;
    loop {
        let n_read = file.read(&mut buffer).map_err(io_error)?;
        if n_read == 0 {
            break;
        }
        hasher.update(&buffer[..n_read]);
        size += n_read as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// A relative `/`-separated path with no empty, `.` or `..` part.
pub fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str, expected_error: Option<&str>) {
        match (
            Manifest::parse(json.as_bytes(), "m/1/manifest.json"),
            expected_error,
        ) {
            (Ok(_), None) => {}
            (Err(error), Some(fragment)) => {
                assert!(error.to_string().contains(fragment), "{error}")
            }
            (result, expected) => panic!("{json}: got {result:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn manifests_are_validated() {
        let sha = "a".repeat(64);
        let file = |path: &str| {
            format!(
                r#"{{"format":1,"model":"m","version":1,"created_unix_s":0,"files":[{{"path":"{path}","size":1,"sha256":"{sha}"}}]}}"#
            )
        };
        check(&file("model.onnx"), None);
        check(&file("sub/model.onnx"), None);
        check(&file("../model.onnx"), Some("file path"));
        check(&file("/etc/passwd"), Some("file path"));
        check(&file("manifest.json"), Some("file path"));
        check(
            r#"{"files":["model.onnx"]}"#,
            Some("not a cardet version manifest"),
        );
        check(
            &file("a").replace("\"format\":1", "\"format\":2"),
            Some("format 2"),
        );
        check(&file("a").replace(&sha, "xyz"), Some("64 hex digits"));
    }

    #[test]
    fn sha256_matches_the_known_digest_of_abc() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
