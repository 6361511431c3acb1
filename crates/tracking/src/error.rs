use std::path::PathBuf;

/// Everything that can go wrong talking to MLflow or keeping the run journal.
///
/// The variants follow what a caller can do: [`Error::is_transient`] failures
/// (server down, proxy 502, server-side 5xx) are worth retrying later; an
/// [`Error::Api`] with a 4xx status is the server refusing the request itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("MLflow tracking URI {uri:?} is not usable: {reason}")]
    BadTrackingUri { uri: String, reason: String },

    #[error("MLflow at {uri} is unreachable ({endpoint})")]
    Unreachable {
        uri: String,
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },

    /// The server answered with MLflow's error body (`error_code`, `message`).
    #[error("MLflow {endpoint} answered HTTP {status} {error_code}: {message}")]
    Api {
        endpoint: String,
        status: u16,
        error_code: String,
        message: String,
    },

    /// The server (or a proxy in front of it) answered an error without MLflow's body.
    #[error("MLflow {endpoint} answered HTTP {status}: {body}")]
    Http {
        endpoint: String,
        status: u16,
        body: String,
    },

    #[error("MLflow {endpoint} sent an answer we cannot read: {reason}")]
    BadResponse { endpoint: String, reason: String },

    /// A key or value over one of MLflow's documented limits, caught before it is journaled.
    #[error("{what} {key:?} is {len} characters long, over MLflow's limit of {limit}")]
    TooLong {
        what: &'static str,
        key: String,
        len: usize,
        limit: usize,
    },

    #[error(
        "run {run_id} keeps its artifacts at {artifact_uri:?}, not behind MLflow's artifact proxy (mlflow-artifacts:/); start the server with --artifacts-destination"
    )]
    ArtifactsNotProxied {
        run_id: String,
        artifact_uri: String,
    },

    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} holds no run start event: it is not a cardet MLflow journal", path.display())]
    NoRunInJournal { path: PathBuf },

    #[error(
        "another logger or sync holds {}: one sender per run folder at a time",
        path.display()
    )]
    FolderBusy { path: PathBuf },

    #[error("run {run_id} has no metric {metric:?}")]
    MissingMetric { run_id: String, metric: String },

    #[error("the run logger's sender thread is gone")]
    SenderGone,
}

impl Error {
    /// True for failures that say nothing about the request itself: the server
    /// is down, restarting, overloaded or behind a proxy that cannot reach it.
    /// Such requests are kept and sent again later.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Api { status, .. } | Error::Http { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => false,
        }
    }

    /// The MLflow `error_code`, when the server sent one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Error::Api { error_code, .. } => Some(error_code),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
