//! Where images come from: files, folders (recursive) and globs, or a YOLO dataset
//! split with its labels. Each source feeds one channel of [`InputImage`]s.

use std::path::{Path, PathBuf};

use cardet_detect::dataset::{self, YoloLabel};
use tokio::sync::mpsc;

use crate::error::Error;

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub enum InputSpec {
    /// Image files, folders (searched recursively) and glob patterns.
    Paths(Vec<String>),
    /// The images of a split of a YOLO dataset, with their labels for mAP.
    Dataset { data_yaml: PathBuf, split: String },
}

/// One encoded image on its way to the server.
#[derive(Clone, Debug)]
pub struct InputImage {
    /// How outputs name it: the path as given, relative to a folder, or to the dataset.
    pub name: String,
    pub bytes: Vec<u8>,
    /// Ground truth, for a dataset split.
    pub labels: Option<Vec<YoloLabel>>,
}

/// The images a source will send, known up front, with class names when the source
/// has them (a dataset's `data.yaml`).
pub struct Planned {
    pub items: Vec<PlannedImage>,
    pub names: Option<Vec<String>>,
}

pub struct PlannedImage {
    pub path: PathBuf,
    pub name: String,
    pub labels: Option<Vec<YoloLabel>>,
}

/// Lists what `spec` names; unreadable dataset items are skipped with a warning,
/// as a training run skips them.
pub fn plan(spec: &InputSpec) -> Result<Planned, Error> {
    match spec {
        InputSpec::Paths(patterns) => {
            let mut items = Vec::new();
            for pattern in patterns {
                expand(pattern, &mut items)?;
            }
            if items.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "no images in {}",
                    patterns.join(", ")
                )));
            }
            Ok(Planned { items, names: None })
        }
        InputSpec::Dataset { data_yaml, split } => {
            let data = dataset::read_data_yaml(data_yaml)?;
            let mut items = Vec::new();
            for image_path in data.split_images(split)? {
                match dataset::read_item(&image_path, data.names.len()) {
                    Ok(item) => items.push(PlannedImage {
                        name: relative_name(&image_path, &data.root),
                        path: image_path,
                        labels: Some(item.labels),
                    }),
                    Err(error) => tracing::warn!("skipping an image: {error}"),
                }
            }
            if items.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{}: split {split} has no readable images",
                    data_yaml.display()
                )));
            }
            Ok(Planned {
                items,
                names: Some(data.names),
            })
        }
    }
}

/// Reads the planned files in order into `sender` (a bounded channel, so reading
/// stays a little ahead of inference and memory stays flat).
pub fn spawn_reader(
    items: Vec<PlannedImage>,
    sender: mpsc::Sender<Result<InputImage, Error>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for item in items {
            let read = tokio::fs::read(&item.path)
                .await
                .map(|bytes| InputImage {
                    name: item.name,
                    bytes,
                    labels: item.labels,
                })
                .map_err(|source| Error::Io {
                    path: item.path,
                    source,
                });
            if sender.send(read).await.is_err() {
                return;
            }
        }
    })
}

fn expand(pattern: &str, items: &mut Vec<PlannedImage>) -> Result<(), Error> {
    let path = Path::new(pattern);
    if path.is_dir() {
        let mut found = Vec::new();
        walk(path, &mut found)?;
        found.sort();
        items.extend(found.into_iter().map(|image_path| PlannedImage {
            name: relative_name(&image_path, path),
            path: image_path,
            labels: None,
        }));
        return Ok(());
    }
    if path.is_file() {
        items.push(PlannedImage {
            path: path.to_path_buf(),
            name: pattern.to_string(),
            labels: None,
        });
        return Ok(());
    }
    if pattern.contains(['*', '?', '[']) {
        let matches = glob::glob(pattern)
            .map_err(|error| Error::InvalidArgument(format!("pattern {pattern:?}: {error}")))?;
        let mut found: Vec<PathBuf> = matches
            .filter_map(Result::ok)
            .filter(|candidate| candidate.is_file())
            .filter(|candidate| cardet_detect::image_io::is_image_path(candidate))
            .collect();
        found.sort();
        items.extend(found.into_iter().map(|image_path| PlannedImage {
            name: image_path.display().to_string(),
            path: image_path,
            labels: None,
        }));
        return Ok(());
    }
    Err(Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
    })
}

fn walk(folder: &Path, found: &mut Vec<PathBuf>) -> Result<(), Error> {
    let entries = std::fs::read_dir(folder).map_err(|source| Error::Io {
        path: folder.to_path_buf(),
        source,
    })?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, found)?;
        } else if cardet_detect::image_io::is_image_path(&path) {
            found.push(path);
        }
    }
    Ok(())
}

fn relative_name(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(files: &[&str], patterns: &[&str], expected: &[&str]) {
        let dir = tempfile::tempdir().expect("tempdir");
        for file in files {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, b"x").expect("write");
        }
        let patterns: Vec<String> = patterns
            .iter()
            .map(|pattern| dir.path().join(pattern).display().to_string())
            .collect();
        let planned = plan(&InputSpec::Paths(patterns)).expect("plans");
        let got: Vec<String> = planned
            .items
            .iter()
            .map(|item| {
                item.path
                    .strip_prefix(dir.path())
                    .expect("inside")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn paths_expand_folders_recursively_and_globs() {
        let files = [
            "a.jpg",
            "b.png",
            "notes.txt",
            "sub/c.jpg",
            "sub/deeper/d.webp",
        ];
        check(
            &files,
            &[""],
            &["a.jpg", "b.png", "sub/c.jpg", "sub/deeper/d.webp"],
        );
        check(&files, &["*.jpg"], &["a.jpg"]);
        check(&files, &["**/*.jpg"], &["a.jpg", "sub/c.jpg"]);
        check(
            &files,
            &["b.png", "sub"],
            &["b.png", "sub/c.jpg", "sub/deeper/d.webp"],
        );
    }

    #[test]
    fn a_missing_path_is_named() {
        let error = plan(&InputSpec::Paths(vec!["/no/such/image.jpg".into()]))
            .err()
            .expect("fails");
        assert!(error.to_string().contains("/no/such/image.jpg"), "{error}");
    }
}
