use std::path::PathBuf;

use rdkafka::error::KafkaError;

/// Why `produce` stopped; a record that could not be read or delivered is not an
/// error here but a line of the summary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Unreachable(#[from] cardet_record::KafkaUnreachable),
    #[error("{context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: KafkaError,
    },
    #[error("{}: {source}", path.display())]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no image (jpg, jpeg, png, bmp, webp)", .0.display())]
    EmptySource(PathBuf),
    #[error("{n_undelivered} of {n_records} records were not delivered (see the summary)")]
    Undelivered { n_undelivered: u64, n_records: u64 },
    #[error("{0} images are larger than the broker's message limit (see the summary)")]
    TooLarge(usize),
    #[error("writing the summary: {0}")]
    Output(#[from] std::io::Error),
}

pub(crate) fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    let context = context.into();
    move |source| Error::Kafka { context, source }
}
