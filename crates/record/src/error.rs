use crate::ImageId;

/// Why a message value is not a record we can store; the sink writes this reason
/// into its dead-letter table.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a cardet record: {0}")]
    NotOurs(String),
    #[error("unsupported record format version {0} (this build reads version 1)")]
    UnsupportedVersion(u8),
    #[error("malformed {field}: {reason}")]
    Malformed { field: &'static str, reason: String },
    #[error("image_id {0} is not the sha-256 of the image bytes")]
    IdMismatch(ImageId),
    #[error("bad labels: {0}")]
    Labels(#[from] LabelError),
}

/// A YOLO label file that does not parse, with the 1-based line at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LabelError {
    pub line: usize,
    pub reason: String,
}
