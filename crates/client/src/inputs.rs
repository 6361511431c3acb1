//! Where images come from: files, folders (recursive) and globs, a YOLO dataset
//! split with its labels, or the records of a Kafka topic. Each source feeds one
//! bounded channel of [`Input`]s that the pipeline in `run.rs` reads the same way
//! whatever the source.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cardet_detect::dataset::{self, YoloLabel};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::kafka_input::{self, KafkaInput, OpenedTopic};

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub enum InputSpec {
    /// Image files, folders (searched recursively) and glob patterns.
    Paths(Vec<String>),
    /// The images of a split of a YOLO dataset, with their labels for mAP.
    Dataset { data_yaml: PathBuf, split: String },
    /// The records of a Kafka topic in `cardet-record`'s formats; those that carry
    /// labels are scored as a dataset split is.
    Kafka(KafkaInput),
}

/// One encoded image on its way to the server.
#[derive(Clone, Debug)]
pub struct InputImage {
    /// How outputs name it: the path as given, relative to a folder, or to the
    /// dataset; a record's file name.
    pub name: String,
    pub bytes: Vec<u8>,
    /// Ground truth, for a dataset split or a record that carries labels.
    pub labels: Option<Vec<YoloLabel>>,
    /// Where the record sat, for a topic input.
    pub position: Option<RecordPosition>,
}

/// A record's place in Kafka.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecordPosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for RecordPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "topic {} partition {} offset {}",
            self.topic, self.partition, self.offset
        )
    }
}

impl InputImage {
    /// What a warning about this image names: the record's place in Kafka (and its
    /// file name), else the name the outputs use.
    pub fn origin(&self) -> String {
        match &self.position {
            Some(position) => format!("{position} ({})", self.name),
            None => self.name.clone(),
        }
    }

    /// The annotated image's file name: records are told apart by their place, as
    /// a topic may hold the same file name many times.
    pub(crate) fn drawing_name(&self) -> String {
        let stem = self.name.replace(['/', '\\'], "__");
        match &self.position {
            Some(position) => format!("p{}-o{}-{stem}.jpg", position.partition, position.offset),
            None => format!("{stem}.jpg"),
        }
    }
}

/// What a reader sends down the channel.
pub(crate) enum Input {
    Image(InputImage),
    /// An input that could not be read or decoded; the reader has already warned,
    /// naming it, and the summary counts it.
    Skipped,
}

/// An input opened for reading, before any image is read: a missing file, a bad
/// `data.yaml` or an unreachable broker fail here.
pub(crate) struct Source {
    /// How many inputs the reader will send (`None`: until stopped).
    pub expected: Option<u64>,
    /// Class names the source brings (a dataset's `data.yaml`).
    pub names: Option<Vec<String>>,
    /// Inputs arrive as they are produced, so a batch goes out part-full rather
    /// than wait for images that may come much later.
    pub live: bool,
    kind: SourceKind,
}

enum SourceKind {
    Files(Vec<PlannedImage>),
    Kafka(Box<OpenedTopic>),
}

struct PlannedImage {
    path: PathBuf,
    name: String,
    labels: Option<Vec<YoloLabel>>,
}

/// Opens what `spec` names; unreadable dataset items are skipped with a warning,
/// as a training run skips them.
pub(crate) fn open(spec: &InputSpec) -> Result<Source, Error> {
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
            Ok(Source::files(items, None))
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
            Ok(Source::files(items, Some(data.names)))
        }
        InputSpec::Kafka(input) => {
            let topic = kafka_input::open(input)?;
            Ok(Source {
                expected: topic.expected_records(),
                names: None,
                live: input.follow,
                kind: SourceKind::Kafka(Box::new(topic)),
            })
        }
    }
}

impl Source {
    fn files(items: Vec<PlannedImage>, names: Option<Vec<String>>) -> Source {
        Source {
            expected: Some(items.len() as u64),
            names,
            live: false,
            kind: SourceKind::Files(items),
        }
    }

    /// Reads the inputs in order into `sender` (a bounded channel, so reading stays
    /// a little ahead of inference and memory stays flat) until they run out,
    /// `stop` is raised or the receiver is dropped.
    pub(crate) fn spawn_reader(
        self,
        sender: mpsc::Sender<Input>,
        stop: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        match self.kind {
            SourceKind::Files(items) => tokio::spawn(read_files(items, sender, stop)),
            // The consumer blocks in `poll`, so it gets a thread of its own.
            SourceKind::Kafka(topic) => {
                tokio::task::spawn_blocking(move || topic.read(&sender, &stop))
            }
        }
    }
}

async fn read_files(items: Vec<PlannedImage>, sender: mpsc::Sender<Input>, stop: Arc<AtomicBool>) {
    for item in items {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let input = match tokio::fs::read(&item.path).await {
            Ok(bytes) => Input::Image(InputImage {
                name: item.name,
                bytes,
                labels: item.labels,
                position: None,
            }),
            Err(error) => {
                tracing::warn!("skipping {}: {error}", item.path.display());
                Input::Skipped
            }
        };
        if sender.send(input).await.is_err() {
            return;
        }
    }
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
        let source = open(&InputSpec::Paths(patterns)).expect("opens");
        let SourceKind::Files(items) = source.kind else {
            panic!("paths are files")
        };
        let got: Vec<String> = items
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
        let error = open(&InputSpec::Paths(vec!["/no/such/image.jpg".into()]))
            .err()
            .expect("fails");
        assert!(error.to_string().contains("/no/such/image.jpg"), "{error}");
    }
}
