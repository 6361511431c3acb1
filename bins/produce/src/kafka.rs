//! Kafka clients as `produce` configures them, the reachability check every
//! command starts with, and the topic administration of `setup` and `teardown`.

use std::time::Duration;

use cardet_record::KafkaUnreachable;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::producer::{BaseProducer, Producer};

use crate::error::{Error, kafka};
use crate::{SetupConfig, TeardownConfig};

/// The base client settings shared by the producer and the admin client.
pub(crate) fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "cardet-produce")
        // Fail fast on a wrong address instead of retrying a resolver for minutes.
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("log_level", "4");
    config
}

/// Asks the cluster for its metadata; a wrong address fails here, within
/// `timeout`, with the address in the message.
pub(crate) fn check_reachable(bootstrap: &str, timeout: Duration) -> Result<(), Error> {
    let producer: BaseProducer = client_config(bootstrap)
        .create()
        .map_err(kafka("creating a Kafka client"))?;
    answers_metadata(producer.client(), bootstrap, timeout)
}

/// The same check through a client the caller keeps (so that it is connected).
pub(crate) fn answers_metadata<C: ClientContext>(
    client: &Client<C>,
    bootstrap: &str,
    timeout: Duration,
) -> Result<(), Error> {
    client
        .fetch_metadata(None, timeout)
        .map(|_| ())
        .map_err(|error| KafkaUnreachable::new(bootstrap, timeout, error).into())
}

/// Creates the topic (after deleting it, with `recreate`).
pub fn setup(config: &SetupConfig) -> Result<(), Error> {
    check_reachable(&config.bootstrap, config.connect_timeout)?;
    let admin = admin(&config.bootstrap)?;
    let runtime = runtime()?;
    if config.recreate {
        warn_embedded_delete();
        delete(&runtime, &admin, std::slice::from_ref(&config.topic))?;
    }
    let topic = NewTopic::new(
        &config.topic,
        config.partitions,
        TopicReplication::Fixed(config.replication),
    );
    let results = runtime
        .block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .map_err(kafka(format!("creating topic {}", config.topic)))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(
                "created topic {name} ({} partitions, replication {})",
                config.partitions,
                config.replication
            ),
            Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!("topic {name} already exists; kept (use --recreate to replace it)")
            }
            Err((name, code)) => {
                return Err(Error::Kafka {
                    context: format!("creating topic {name}"),
                    source: rdkafka::error::KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(())
}

/// Deletes the topics.
pub fn teardown(config: &TeardownConfig) -> Result<(), Error> {
    check_reachable(&config.bootstrap, config.connect_timeout)?;
    let admin = admin(&config.bootstrap)?;
    warn_embedded_delete();
    delete(&runtime()?, &admin, &config.topics)
}

fn delete(
    runtime: &tokio::runtime::Runtime,
    admin: &AdminClient<DefaultClientContext>,
    topics: &[String],
) -> Result<(), Error> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let results = runtime
        .block_on(admin.delete_topics(&names, &AdminOptions::new()))
        .map_err(kafka("deleting topics"))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!("deleted topic {name}"),
            Err((name, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                tracing::info!("topic {name} did not exist")
            }
            Err((name, code)) => {
                return Err(Error::Kafka {
                    context: format!("deleting topic {name}"),
                    source: rdkafka::error::KafkaError::AdminOp(code),
                });
            }
        }
    }
    // Let the deletion settle before a create reuses the name.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

fn warn_embedded_delete() {
    tracing::warn!(
        "deleting a topic: on the embedded broker (tansu) a delete removes EVERY topic, not just this one"
    );
}

fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>, Error> {
    client_config(bootstrap)
        .create()
        .map_err(kafka("creating a Kafka admin client"))
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Output)
}
