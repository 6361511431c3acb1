//! The clone's ignored `.env`: `KEY=value` lines that the stack reads and writes.
//!
//! Values already in the process environment win over the file, as with every
//! dotenv loader, so `AWS_SECRET_ACCESS_KEY=... cargo xtask stack up` does what it says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub fn path() -> PathBuf {
    crate::project_root().join(".env")
}

/// Reads `KEY=value` lines; blank lines, comments and `export ` prefixes are allowed.
pub fn read(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    Ok(parse(&text))
}

fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            Some((key.trim().to_string(), unquoted.to_string()))
        })
        .collect()
}

/// Adds the keys the file lacks, keeping every line it has. The file is created
/// readable by its owner only: it holds the S3 secret.
pub fn add_missing(path: &Path, values: &BTreeMap<String, String>) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let present = read(path)?;
    let missing: Vec<_> = values
        .iter()
        .filter(|(key, _)| !present.contains_key(*key))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if present.is_empty() {
        writeln!(
            file,
            "# Written by `cargo xtask stack up`; never commit this file (see .env.example)."
        )?;
    }
    for (key, value) in missing {
        writeln!(file, "{key}={value}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &[(&str, &str)]) {
        let parsed = parse(text);
        let expected: BTreeMap<String, String> = expected
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn parses_comments_quotes_and_exports() {
        check(
            "# comment\n\nA=1\nexport B = \"two words\"\nC='x=y'\nnot a pair\n",
            &[("A", "1"), ("B", "two words"), ("C", "x=y")],
        );
    }

    #[test]
    fn add_missing_keeps_existing_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(".env");
        std::fs::write(&path, "A=mine\n").expect("write");
        let wanted: BTreeMap<String, String> = [("A", "generated"), ("B", "new")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        add_missing(&path, &wanted).expect("add");
        let read_back = read(&path).expect("read");
        assert_eq!(read_back.get("A").map(String::as_str), Some("mine"));
        assert_eq!(read_back.get("B").map(String::as_str), Some("new"));
    }
}
