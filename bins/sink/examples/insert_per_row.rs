//! The baseline of the `sink` benchmark: the same topic into the same table, one
//! autocommitted INSERT per record, no batching (what a naive consumer does).
//! Prints the bench harness's JSON line: rows per second from the first message
//! to the last insert.
//!
//! usage: insert_per_row BOOTSTRAP DATABASE_URL TOPIC SCHEMA

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, database_url, topic, schema] = args.as_slice() else {
        anyhow::bail!("usage: insert_per_row BOOTSTRAP DATABASE_URL TOPIC SCHEMA");
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut store = cardet_store::Store::connect(database_url, schema).await?;
        store.migrate().await
    })?;
    let (client, connection) =
        runtime.block_on(tokio_postgres::connect(database_url, tokio_postgres::NoTls))?;
    runtime.spawn(connection);
    let insert = runtime.block_on(client.prepare(&format!(
        r#"INSERT INTO {schema}.images (image_id, image, label_text, split, source_path, width, height, topic, partition, "offset")
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (image_id) DO NOTHING"#
    )))?;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap.as_str())
        .set("group.id", schema.as_str())
        .set("auto.offset.reset", "earliest")
        // As `sink` sets it, so that both read the topic alike.
        .set("fetch.wait.max.ms", "50")
        .create()?;
    consumer.subscribe(&[topic.as_str()])?;
    let mut n_rows = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let started = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let Ok(record) = cardet_record::decode(message.payload().unwrap_or_default())
                else {
                    continue;
                };
                first.get_or_insert_with(Instant::now);
                runtime.block_on(client.execute(
                    &insert,
                    &[
                        &record.image_id.as_bytes().as_slice(),
                        &record.image,
                        &record.labels.as_ref().map(|labels| labels.text()),
                        &record.split,
                        &record.source_path,
                        &(record.width as i32),
                        &(record.height as i32),
                        &topic,
                        &message.partition(),
                        &message.offset(),
                    ],
                ))?;
                n_rows += 1;
                last = Instant::now();
            }
            Some(Err(error)) => eprintln!("consumer: {error}"),
            None if last.elapsed() > Duration::from_secs(3)
                && (first.is_some() || started.elapsed() > Duration::from_secs(30)) =>
            {
                break;
            }
            None => {}
        }
    }
    let seconds = first.map_or(0.0, |first| (last - first).as_secs_f64());
    eprintln!("insert_per_row: {n_rows} rows in {seconds:.2}s");
    println!(
        "{{\"value\": {}, \"unit\": \"rows/s\", \"higher_is_better\": true}}",
        n_rows as f64 / seconds.max(1e-9)
    );
    Ok(())
}
