use rdkafka::error::KafkaError;

/// Why `sink` stopped. A record it cannot store is not an error: it goes to the
/// dead-letter table.
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
    #[error(transparent)]
    Store(#[from] cardet_store::Error),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("writing the summary: {0}")]
    Output(#[from] std::io::Error),
}

pub(crate) fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    let context = context.into();
    move |source| Error::Kafka { context, source }
}
