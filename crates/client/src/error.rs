//! The one error type of the client; variants follow what the caller can do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers at the URL: the server is down or the URL is wrong.
    #[error("cannot reach the inference server at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// The server answered with an error; `message` is its own `error` text.
    #[error("the server at {url} refused {what}: {message} ({status})")]
    Server {
        url: String,
        what: String,
        status: String,
        message: String,
        /// Worth retrying: overload (429/503, UNAVAILABLE, RESOURCE_EXHAUSTED).
        transient: bool,
    },
    #[error("model {model} is not ready at {url}: {message}")]
    NotReady {
        url: String,
        model: String,
        message: String,
    },
    /// The answer does not follow the protocol.
    #[error("the server at {url} sent a malformed answer: {message}")]
    Protocol { url: String, message: String },
    /// The model does not fit what the client does (not one FP32 image input).
    #[error("model {model}: {message}")]
    Model { model: String, message: String },
    /// No Kafka broker answered at the bootstrap address within the connect timeout.
    #[error(transparent)]
    KafkaUnreachable(#[from] cardet_record::KafkaUnreachable),
    /// The broker answered but refused what the client asked (a missing topic, a
    /// failed assignment).
    #[error("{context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {topic} does not exist at {bootstrap}")]
    NoSuchTopic { topic: String, bootstrap: String },
    #[error(transparent)]
    Detect(#[from] cardet_detect::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    /// Whether a retry with back-off may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Server { transient, .. } => *transient,
            _ => false,
        }
    }
}
