//! The one error type of the crate: each variant names what the caller can fix
//! (a file, a line, a shape) and carries it.

use std::path::PathBuf;

/// Everything that can fail in `cardet-detect`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a decodable JPEG, PNG or WebP image (or are truncated).
    #[error("{}: cannot decode image: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// An image could not be encoded to the requested format.
    #[error("{}: cannot encode image: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// The file's extension names no format this crate reads or writes.
    #[error("{}: unsupported image format (expected jpg, jpeg, png or webp)", path.display())]
    UnsupportedFormat { path: PathBuf },
    /// One line of a YOLO label file is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    LabelLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A `data.yaml` is missing a key or has a value this crate cannot read.
    #[error("{}: {reason}", path.display())]
    DataYaml { path: PathBuf, reason: String },
    /// A COCO JSON file (annotations or results) does not have the expected shape.
    #[error("{}: {reason}", path.display())]
    CocoJson { path: PathBuf, reason: String },
    /// A model output does not have the shape the layout declares.
    #[error("model output has {got} values, the layout {layout} needs {expected}")]
    OutputShape {
        layout: String,
        expected: usize,
        got: usize,
    },
    /// A caller-supplied argument is out of range (empty batch, zero size, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// A problem with one record that did not stop the reader: the record was skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub path: PathBuf,
    /// 1-based line number, where the problem is on one line.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(
                formatter,
                "{}:{line}: {}",
                self.path.display(),
                self.message
            ),
            None => write!(formatter, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl From<Error> for Diagnostic {
    fn from(error: Error) -> Diagnostic {
        match error {
            Error::LabelLine { path, line, reason } => Diagnostic {
                path,
                line: Some(line),
                message: reason,
            },
            Error::Io { ref path, .. }
            | Error::Decode { ref path, .. }
            | Error::Encode { ref path, .. }
            | Error::UnsupportedFormat { ref path }
            | Error::DataYaml { ref path, .. }
            | Error::CocoJson { ref path, .. } => Diagnostic {
                path: path.clone(),
                line: None,
                message: error_message_without_path(&error),
            },
            Error::OutputShape { .. } | Error::InvalidArgument(_) => Diagnostic {
                path: PathBuf::new(),
                line: None,
                message: error.to_string(),
            },
        }
    }
}

fn error_message_without_path(error: &Error) -> String {
    let text = error.to_string();
    match text.split_once(": ") {
        Some((_, rest)) => rest.to_string(),
        None => text,
    }
}
