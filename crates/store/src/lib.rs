//! The PostgreSQL offline store of image records, and its way back out as a YOLO
//! dataset.
//!
//! [`Store`] owns one connection and one schema: [`Store::migrate`] creates the
//! tables (images keyed by id, consumer offsets, dead letters), and
//! [`Store::write_batch`] writes a [`Batch`] of consumed Kafka messages in one
//! transaction that also advances the stored offsets. Messages below the stored
//! offset of their partition are skipped inside that transaction, so a batch that
//! is written twice (after a crash, or by two consumers across a rebalance) has
//! its effect once. [`Store::export`] writes the rows out as a YOLO dataset,
//! resumably and incrementally (see `export.rs`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), cardet_store::Error> {
//! let mut store = cardet_store::Store::connect("postgres://cardet:cardet@127.0.0.1/cardet", "cardet").await?;
//! store.migrate().await?;
//! println!("{} images", store.counts().await?.n_images);
//! # Ok(()) }
//! ```

mod error;
mod export;
mod migrations;

use std::collections::{BTreeMap, HashMap};

use cardet_record::Record;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::error::DatabaseContext;
pub use crate::error::Error;
pub use crate::export::{ExportOptions, ExportSummary, SplitRule};

/// One connection to the store, bound to one PostgreSQL schema.
pub struct Store {
    client: Client,
    schema: String,
    /// Batches left to write with the upsert before COPY is tried again: after a
    /// batch whose COPY met a stored image (a stream sent twice, say), the next
    /// ones likely would too, and a failed COPY is work thrown away.
    upserts_before_copy: u32,
}

/// How many batches go straight to the upsert after a COPY met a stored image.
const UPSERTS_AFTER_A_CONFLICT: u32 = 16;

/// Consumed messages of one topic, in the order they were read.
#[derive(Debug, Default)]
pub struct Batch {
    pub topic: String,
    pub messages: Vec<Message>,
}

/// One consumed message: a record, or why it could not be decoded.
#[derive(Debug)]
pub struct Message {
    pub partition: i32,
    pub offset: i64,
    pub content: Result<Record, DeadLetter>,
}

/// A message that is not a record we can store, kept with its reason.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// What one transaction did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchOutcome {
    /// Records written (new rows or new deliveries of a known image).
    pub n_records: usize,
    /// Messages already covered by the stored offsets, so skipped.
    pub n_already_stored: usize,
    pub n_dead_letters: usize,
    /// The next offset to read, per partition, after this batch: what to commit to Kafka.
    pub next_offsets: BTreeMap<i32, i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub n_images: i64,
    pub n_dead_letters: i64,
    /// Sum of `n_deliveries`: the Kafka records that carried the stored images.
    pub n_deliveries: i64,
}

impl Store {
    /// Connects and checks the schema name (it is spliced into SQL, so it must be a
    /// plain identifier).
    pub async fn connect(database_url: &str, schema: &str) -> Result<Store, Error> {
        if !is_identifier(schema) {
            return Err(Error::BadSchemaName(schema.to_string()));
        }
        let (client, connection) =
            tokio_postgres::connect(database_url, NoTls)
                .await
                .map_err(|source| Error::Connect {
                    url: redact(database_url),
                    source,
                })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!("postgres connection closed: {error}");
            }
        });
        Ok(Store {
            client,
            schema: schema.to_string(),
            upserts_before_copy: 0,
        })
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Creates the schema and applies the migrations this build knows, once each.
    pub async fn migrate(&mut self) -> Result<(), Error> {
        let schema = self.schema.clone();
        let transaction = self
            .client
            .transaction()
            .await
            .context("starting the migration")?;
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock(hashtext('cardet-store migrate ' || $1))",
                &[&schema],
            )
            .await
            .context("locking the migration")?;
        transaction
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema};
                 CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                     version integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await
            .context("creating the schema")?;
        let applied: Vec<i32> = transaction
            .query(
                &format!("SELECT version FROM {schema}.schema_migrations"),
                &[],
            )
            .await
            .context("reading applied migrations")?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for (version, sql) in migrations::MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            transaction
                .batch_execute(&sql.replace("{schema}", &schema))
                .await
                .context("applying a migration")?;
            transaction
                .execute(
                    &format!("INSERT INTO {schema}.schema_migrations (version) VALUES ($1)"),
                    &[version],
                )
                .await
                .context("recording a migration")?;
            tracing::info!("store: applied migration {version} to schema {schema}");
        }
        transaction.commit().await.context("committing migrations")
    }

    /// The stored next offset of each of `partitions` that has one.
    pub async fn stored_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, Error> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT partition, next_offset FROM {}.consumer_offsets
                     WHERE group_id = $1 AND topic = $2 AND partition = ANY($3)",
                    self.schema
                ),
                &[&group, &topic, &partitions],
            )
            .await
            .context("reading stored offsets")?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Writes a batch and advances the stored offsets in one transaction; retried
    /// when PostgreSQL aborts it for a deadlock or a serialization failure (two
    /// consumers meeting on a partition during a rebalance).
    pub async fn write_batch(&mut self, group: &str, batch: &Batch) -> Result<BatchOutcome, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_write_batch(group, batch).await {
                Err(Error::Database { source, .. })
                    if attempt < 5
                        && matches!(
                            source.code(),
                            Some(&SqlState::T_R_DEADLOCK_DETECTED)
                                | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                        ) =>
                {
                    tracing::warn!("store: batch retried after {source}");
                }
                result => return result,
            }
        }
    }

    async fn try_write_batch(&mut self, group: &str, batch: &Batch) -> Result<BatchOutcome, Error> {
        let schema = self.schema.clone();
        let mut outcome = BatchOutcome::default();
        let mut partitions: Vec<i32> = batch.messages.iter().map(|m| m.partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        if partitions.is_empty() {
            return Ok(outcome);
        }
        let mut transaction = self
            .client
            .transaction()
            .await
            .context("starting a batch")?;
        // Writers share this lock; an export takes it exclusively for an instant to
        // learn a sequence number below which every row is committed.
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock_shared(hashtext('cardet-store seq ' || $1))",
                &[&schema],
            )
            .await
            .context("taking the writer lock")?;
        transaction
            .execute(
                &format!(
                    "INSERT INTO {schema}.consumer_offsets (group_id, topic, partition, next_offset)
                     SELECT $1, $2, p, 0 FROM unnest($3::int4[]) AS p
                     ON CONFLICT DO NOTHING"
                ),
                &[&group, &batch.topic, &partitions],
            )
            .await
            .context("creating offset rows")?;
        let stored: HashMap<i32, i64> = transaction
            .query(
                &format!(
                    "SELECT partition, next_offset FROM {schema}.consumer_offsets
                     WHERE group_id = $1 AND topic = $2 AND partition = ANY($3)
                     ORDER BY partition FOR UPDATE"
                ),
                &[&group, &batch.topic, &partitions],
            )
            .await
            .context("locking offset rows")?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();

        // Keep only messages at or past the stored offset; the rest are already in.
        let mut fresh = Vec::with_capacity(batch.messages.len());
        for message in &batch.messages {
            let stored_next = stored.get(&message.partition).copied().unwrap_or(0);
            let next = outcome
                .next_offsets
                .entry(message.partition)
                .or_insert(stored_next);
            *next = (*next).max(message.offset + 1);
            if message.offset < stored_next {
                outcome.n_already_stored += 1;
            } else {
                fresh.push(message);
            }
        }

        let rows = ImageRows::from_messages(&fresh);
        let needs_upsert = if rows.ids.is_empty() {
            false
        } else if self.upserts_before_copy > 0 {
            self.upserts_before_copy -= 1;
            true
        } else {
            let copied = copy_new_images(&mut transaction, &schema, &rows, &batch.topic).await?;
            if !copied {
                self.upserts_before_copy = UPSERTS_AFTER_A_CONFLICT;
            }
            !copied
        };
        if needs_upsert {
            transaction
                .execute(
                    &format!(
                        r#"INSERT INTO {schema}.images AS i (image_id, image, labels, label_text, split,
                               source_path, width, height, topic, partition, "offset", n_deliveries)
                           SELECT u.id, u.img, u.labels::jsonb, u.label_text, u.split, u.path,
                               u.w, u.h, $12, u.p, u.o, u.n
                           FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $7::int4[], $8::int4[], $9::int4[], $10::int8[], $11::int4[])
                               AS u(id, img, labels, label_text, split, path, w, h, p, o, n)
                           ON CONFLICT (image_id) DO UPDATE SET
                               n_deliveries = i.n_deliveries + excluded.n_deliveries,
                               labels = excluded.labels,
                               label_text = excluded.label_text,
                               split = excluded.split,
                               source_path = excluded.source_path,
                               seq = CASE
                                   WHEN i.label_text IS DISTINCT FROM excluded.label_text
                                     OR i.split IS DISTINCT FROM excluded.split
                                     OR i.source_path IS DISTINCT FROM excluded.source_path
                                   THEN nextval('{schema}.image_seq')
                                   ELSE i.seq END,
                               updated_at = now()"#
                    ),
                    &[
                        &rows.ids,
                        &rows.images,
                        &rows.labels_json,
                        &rows.label_texts,
                        &rows.splits,
                        &rows.paths,
                        &rows.widths,
                        &rows.heights,
                        &rows.partitions,
                        &rows.offsets,
                        &rows.n_deliveries,
                        &batch.topic,
                    ],
                )
                .await
                .context("upserting images")?;
        }
        outcome.n_records = rows.n_records;

        let letters: Vec<(&Message, &DeadLetter)> = fresh
            .iter()
            .filter_map(|message| {
                message
                    .content
                    .as_ref()
                    .err()
                    .map(|letter| (*message, letter))
            })
            .collect();
        if !letters.is_empty() {
            let partitions: Vec<i32> = letters.iter().map(|(m, _)| m.partition).collect();
            let offsets: Vec<i64> = letters.iter().map(|(m, _)| m.offset).collect();
            let reasons: Vec<&str> = letters.iter().map(|(_, l)| l.reason.as_str()).collect();
            let keys: Vec<Option<&[u8]>> = letters.iter().map(|(_, l)| l.key.as_deref()).collect();
            let payloads: Vec<&[u8]> = letters.iter().map(|(_, l)| l.payload.as_slice()).collect();
            transaction
                .execute(
                    &format!(
                        r#"INSERT INTO {schema}.dead_letters (topic, partition, "offset", reason, key, payload)
                           SELECT $1, u.p, u.o, u.r, u.k, u.v
                           FROM unnest($2::int4[], $3::int8[], $4::text[], $5::bytea[], $6::bytea[])
                               AS u(p, o, r, k, v)
                           ON CONFLICT DO NOTHING"#
                    ),
                    &[&batch.topic, &partitions, &offsets, &reasons, &keys, &payloads],
                )
                .await
                .context("writing dead letters")?;
            outcome.n_dead_letters = letters.len();
        }

        let (partitions, next_offsets): (Vec<i32>, Vec<i64>) =
            outcome.next_offsets.iter().map(|(p, o)| (*p, *o)).unzip();
        transaction
            .execute(
                &format!(
                    "UPDATE {schema}.consumer_offsets AS o
                     SET next_offset = GREATEST(o.next_offset, u.n), updated_at = now()
                     FROM unnest($3::int4[], $4::int8[]) AS u(p, n)
                     WHERE o.group_id = $1 AND o.topic = $2 AND o.partition = u.p"
                ),
                &[&group, &batch.topic, &partitions, &next_offsets],
            )
            .await
            .context("advancing stored offsets")?;
        transaction.commit().await.context("committing a batch")?;
        Ok(outcome)
    }

    pub async fn counts(&self) -> Result<Counts, Error> {
        let schema = &self.schema;
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {schema}.images),
                            (SELECT count(*) FROM {schema}.dead_letters),
                            (SELECT coalesce(sum(n_deliveries), 0)::int8 FROM {schema}.images)"
                ),
                &[],
            )
            .await
            .context("counting rows")?;
        Ok(Counts {
            n_images: row.get(0),
            n_dead_letters: row.get(1),
            n_deliveries: row.get(2),
        })
    }

    /// The dead letters, oldest first: `(partition, offset, reason)`.
    pub async fn dead_letters(&self, topic: &str) -> Result<Vec<(i32, i64, String)>, Error> {
        let rows = self
            .client
            .query(
                &format!(
                    r#"SELECT partition, "offset", reason FROM {}.dead_letters
                       WHERE topic = $1 ORDER BY partition, "offset""#,
                    self.schema
                ),
                &[&topic],
            )
            .await
            .context("reading dead letters")?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }

    /// Writes the store out as a YOLO dataset (see [`ExportOptions`]).
    pub async fn export(&self, options: &ExportOptions) -> Result<ExportSummary, Error> {
        export::export(&self.client, &self.schema, options).await
    }
}

/// The columns of an upsert, one array per column; an image delivered several
/// times in one batch becomes one row (PostgreSQL refuses to update a row twice in
/// one statement), its last delivery winning.
#[derive(Default)]
struct ImageRows<'a> {
    ids: Vec<&'a [u8]>,
    images: Vec<&'a [u8]>,
    labels_json: Vec<Option<String>>,
    label_texts: Vec<Option<&'a str>>,
    splits: Vec<Option<&'a str>>,
    paths: Vec<&'a str>,
    widths: Vec<i32>,
    heights: Vec<i32>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    n_deliveries: Vec<i32>,
    n_records: usize,
}

impl<'a> ImageRows<'a> {
    fn from_messages(messages: &[&'a Message]) -> ImageRows<'a> {
        let mut rows = ImageRows::default();
        let mut row_of_id: HashMap<&[u8], usize> = HashMap::new();
        for message in messages {
            let Ok(record) = &message.content else {
                continue;
            };
            rows.n_records += 1;
            let id = record.image_id.as_bytes().as_slice();
            if let Some(&row) = row_of_id.get(id) {
                rows.n_deliveries[row] += 1;
                rows.labels_json[row] = labels_json(record);
                rows.label_texts[row] = record.labels.as_ref().map(|labels| labels.text());
                rows.splits[row] = record.split.as_deref();
                rows.paths[row] = &record.source_path;
                continue;
            }
            row_of_id.insert(id, rows.ids.len());
            rows.ids.push(id);
            rows.images.push(&record.image);
            rows.labels_json.push(labels_json(record));
            rows.label_texts
                .push(record.labels.as_ref().map(|labels| labels.text()));
            rows.splits.push(record.split.as_deref());
            rows.paths.push(&record.source_path);
            rows.widths
                .push(i32::try_from(record.width).unwrap_or(i32::MAX));
            rows.heights
                .push(i32::try_from(record.height).unwrap_or(i32::MAX));
            rows.partitions.push(message.partition);
            rows.offsets.push(message.offset);
            rows.n_deliveries.push(1);
        }
        rows
    }
}

/// Writes rows that are all new with `COPY`, inside a savepoint: `Ok(false)`, with
/// nothing written, when one of them is already stored, and the caller upserts.
///
/// Why: for a batch of new images, PostgreSQL spends about a fifth less on a binary
/// `COPY` than on `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE` (no
/// array unpacking, no speculative insertion); measured on 5,000 rows of the
/// streaming benchmark's shape, 80 against 102 ms. The upsert stays the path for
/// images sent again. A concurrent writer's uncommitted copy of the same image makes
/// this one wait on the unique index, then fail here and take the upsert path.
async fn copy_new_images(
    transaction: &mut tokio_postgres::Transaction<'_>,
    schema: &str,
    rows: &ImageRows<'_>,
    topic: &str,
) -> Result<bool, Error> {
    use futures_util::SinkExt;

    let savepoint = transaction
        .savepoint("copy_new_images")
        .await
        .context("starting the image copy")?;
    let stream = bytes::Bytes::from(binary_copy_stream(rows, topic));
    let copy = async {
        let sink = savepoint
            .copy_in::<_, bytes::Bytes>(&format!(
                r#"COPY {schema}.images (image_id, image, labels, label_text, split, source_path,
                       width, height, topic, partition, "offset", n_deliveries)
                   FROM STDIN (FORMAT binary)"#
            ))
            .await?;
        let mut sink = std::pin::pin!(sink);
        sink.send(stream).await?;
        sink.as_mut().finish().await
    };
    match copy.await {
        Ok(_) => {
            savepoint.commit().await.context("ending the image copy")?;
            Ok(true)
        }
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            savepoint
                .rollback()
                .await
                .context("undoing the image copy")?;
            Ok(false)
        }
        Err(error) => Err(error).context("copying images"),
    }
}

/// The rows as PostgreSQL's binary `COPY` stream, in the column order of
/// [`copy_new_images`]'s statement: a signature, then per row the field count and
/// each field as a length (-1 for NULL) and its bytes, then -1.
///
/// Built in one buffer and sent as one message on purpose: tokio-postgres's
/// `BinaryCopyInWriter` hands the connection task a message every 4 kB and waits
/// for it to be taken, which for 2-4 kB images is a hop between threads per row.
/// A Kafka record cannot carry a field over `i32::MAX` bytes, so lengths fit.
fn binary_copy_stream(rows: &ImageRows<'_>, topic: &str) -> Vec<u8> {
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
    const FIELDS: i16 = 12;
    const JSONB_VERSION: u8 = 1;
    fn field(out: &mut Vec<u8>, parts: &[&[u8]]) {
        let length: usize = parts.iter().map(|part| part.len()).sum();
        out.extend_from_slice(&i32::try_from(length).unwrap_or(i32::MAX).to_be_bytes());
        for part in parts {
            out.extend_from_slice(part);
        }
    }
    fn optional(out: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            Some(value) => field(out, &[value]),
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let n_bytes: usize = rows.images.iter().map(|image| image.len() + 256).sum();
    let mut out = Vec::with_capacity(SIGNATURE.len() + 10 + n_bytes);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for row in 0..rows.ids.len() {
        out.extend_from_slice(&FIELDS.to_be_bytes());
        field(&mut out, &[rows.ids[row]]);
        field(&mut out, &[rows.images[row]]);
        match &rows.labels_json[row] {
            Some(json) => field(&mut out, &[&[JSONB_VERSION], json.as_bytes()]),
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        optional(&mut out, rows.label_texts[row].map(str::as_bytes));
        optional(&mut out, rows.splits[row].map(str::as_bytes));
        field(&mut out, &[rows.paths[row].as_bytes()]);
        field(&mut out, &[&rows.widths[row].to_be_bytes()]);
        field(&mut out, &[&rows.heights[row].to_be_bytes()]);
        field(&mut out, &[topic.as_bytes()]);
        field(&mut out, &[&rows.partitions[row].to_be_bytes()]);
        field(&mut out, &[&rows.offsets[row].to_be_bytes()]);
        field(&mut out, &[&rows.n_deliveries[row].to_be_bytes()]);
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// The boxes as the `labels` column's JSON, `[{"class","cx","cy","w","h"}, ...]`,
/// written straight from the boxes (no `serde_json::Value` maps per row).
fn labels_json(record: &Record) -> Option<String> {
    #[derive(serde::Serialize)]
    struct BoxJson {
        class: u32,
        cx: f64,
        cy: f64,
        w: f64,
        h: f64,
    }
    let labels = record.labels.as_ref()?;
    let boxes: Vec<BoxJson> = labels
        .boxes()
        .iter()
        .map(|b| BoxJson {
            class: b.class_id,
            cx: b.cx,
            cy: b.cy,
            w: b.w,
            h: b.h,
        })
        .collect();
    serde_json::to_string(&boxes).ok()
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}@{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(schema: &str, expected: bool) {
        assert_eq!(is_identifier(schema), expected, "{schema:?}");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        check("cardet", true);
        check("t_1234_abc", true);
        check("_x", true);
        check("", false);
        check("1abc", false);
        check("a-b", false);
        check("a; drop table x", false);
        check("Upper", false);
        check(&"a".repeat(64), false);
    }

    #[test]
    fn labels_json_lists_the_boxes_with_their_fields() {
        let labels = cardet_record::Labels::parse("3 0.5 0.25 0.1 0.2\n0 0.1 0.2 0.3 0.4\n")
            .expect("labels");
        let record =
            Record::new(vec![1, 2, 3], Some(labels), None, "a.jpg".into(), (1, 1)).expect("record");
        let json: serde_json::Value =
            serde_json::from_str(&labels_json(&record).expect("boxes")).expect("json");
        assert_eq!(
            json,
            serde_json::json!([
                {"class": 3, "cx": 0.5, "cy": 0.25, "w": 0.1, "h": 0.2},
                {"class": 0, "cx": 0.1, "cy": 0.2, "w": 0.3, "h": 0.4},
            ])
        );
        let unlabelled = Record::new(vec![1], None, None, "b.jpg".into(), (1, 1)).expect("record");
        assert_eq!(labels_json(&unlabelled), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://cardet:secret@127.0.0.1:5432/cardet"),
            "postgres://cardet@127.0.0.1:5432/cardet"
        );
        assert_eq!(redact("host=x"), "host=x");
    }
}
