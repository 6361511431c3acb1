use std::path::PathBuf;

/// What can go wrong talking to the store or writing an export.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("schema name {0:?} must match [a-z_][a-z0-9_]* and be at most 63 characters")]
    BadSchemaName(String),
    #[error("{context}: {source}")]
    Database {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} was exported with {existing}, not {requested}: export into a new folder to change it",
        path.display()
    )]
    ExportMismatch {
        path: PathBuf,
        existing: String,
        requested: String,
    },
    #[error("{}: {reason}", path.display())]
    BadExportState { path: PathBuf, reason: String },
}

pub(crate) trait DatabaseContext<T> {
    fn context(self, context: &'static str) -> Result<T, Error>;
}

impl<T> DatabaseContext<T> for Result<T, tokio_postgres::Error> {
    fn context(self, context: &'static str) -> Result<T, Error> {
        self.map_err(|source| Error::Database { context, source })
    }
}

pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
