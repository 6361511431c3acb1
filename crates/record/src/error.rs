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

/// A Kafka broker that did not answer a metadata request in time: the one error
/// every Kafka edge (`produce`, `sink`, `triton_client --kafka-topic`) gives for a
/// wrong address or a broker that is down, so the three read alike.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach Kafka at {bootstrap} within {seconds}s: {reason}")]
pub struct KafkaUnreachable {
    pub bootstrap: String,
    pub seconds: u64,
    pub reason: String,
}

impl KafkaUnreachable {
    pub fn new(
        bootstrap: &str,
        timeout: std::time::Duration,
        reason: impl std::fmt::Display,
    ) -> KafkaUnreachable {
        KafkaUnreachable {
            bootstrap: bootstrap.to_string(),
            seconds: timeout.as_secs(),
            reason: reason.to_string(),
        }
    }
}
