//! Batches of new images are written with `COPY`; a batch that meets an image
//! already stored falls back to the upsert, and its effect is the same as if every
//! batch had been upserted. Against the stack's PostgreSQL.

use cardet_record::{Labels, Record};
use cardet_store::{Batch, Message, Store};
use cardet_testkit::Stack;

fn record(seed: u8, labels: &str) -> Record {
    Record::new(
        vec![seed; 64 + usize::from(seed)],
        Some(Labels::parse(labels).expect("labels")),
        Some("train".into()),
        format!("images/train/{seed}.jpg"),
        (64, 48),
    )
    .expect("record")
}

/// Records of the images `seeds`, each with one box of class `class`.
fn labelled(seeds: &[u8], class: u32) -> Vec<Record> {
    seeds
        .iter()
        .map(|&seed| record(seed, &format!("{class} 0.5 0.5 0.1 0.2\n")))
        .collect()
}

/// Writes `records` at offsets from `first_offset` of partition 0.
async fn write(
    store: &mut Store,
    first_offset: i64,
    records: Vec<Record>,
) -> cardet_store::BatchOutcome {
    store
        .write_batch("g", &batch(first_offset, records))
        .await
        .expect("writes the batch")
}

/// `(images, deliveries)` in the store.
async fn counts(store: &Store) -> (i64, i64) {
    let counts = store.counts().await.expect("counts");
    (counts.n_images, counts.n_deliveries)
}

fn batch(first_offset: i64, records: Vec<Record>) -> Batch {
    Batch {
        topic: "copy-then-upsert".into(),
        messages: records
            .into_iter()
            .zip(first_offset..)
            .map(|(record, offset)| Message {
                partition: 0,
                offset,
                content: Ok(record),
            })
            .collect(),
    }
}

#[test]
fn new_images_are_copied_and_repeats_are_upserted() {
    let stack = Stack::from_env();
    let schema = cardet_testkit::unique_name("store_copy").replace('-', "_");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut store = Store::connect(&stack.database_url, &schema)
            .await
            .expect("connects");
        store.migrate().await.expect("migrates");
        let (sql, connection) = tokio_postgres::connect(&stack.database_url, tokio_postgres::NoTls)
            .await
            .expect("second connection");
        tokio::spawn(connection);
        let row_of = |seed: u8| {
            let id = cardet_record::ImageId::of(&vec![seed; 64 + usize::from(seed)]);
            let (sql, schema) = (&sql, &schema);
            async move {
                let row = sql
                    .query_one(
                        &format!(
                            "SELECT label_text, n_deliveries, seq, labels->0->>'class'
                             FROM {schema}.images WHERE image_id = $1"
                        ),
                        &[&id.as_bytes().as_slice()],
                    )
                    .await
                    .expect("row");
                (
                    row.get::<_, String>(0),
                    row.get::<_, i32>(1),
                    row.get::<_, i64>(2),
                    row.get::<_, String>(3),
                )
            }
        };

        // All new: one COPY.
        let outcome = write(&mut store, 0, labelled(&[0, 1, 2, 3], 0)).await;
        assert_eq!(outcome.n_records, 4);
        assert_eq!(counts(&store).await, (4, 4));
        let (_, _, seq_before, class) = row_of(1).await;
        assert_eq!(class, "0", "labels are stored as jsonb boxes");

        // Image 1 again with other labels, and a new image 4: the COPY meets image 1,
        // is undone, and the upsert writes both.
        let second = [labelled(&[1], 2), labelled(&[4], 0)].concat();
        assert_eq!(write(&mut store, 4, second).await.n_records, 2);
        assert_eq!(counts(&store).await, (5, 6));
        let (label_text, n_deliveries, seq_after, class) = row_of(1).await;
        assert_eq!(label_text, "2 0.5 0.5 0.1 0.2\n");
        assert_eq!(n_deliveries, 2);
        assert_eq!(class, "2");
        assert!(
            seq_after > seq_before,
            "changed labels move the row up for export"
        );

        // The next batches go through the upsert for a while; new rows land the same.
        write(&mut store, 6, labelled(&[5, 6], 1)).await;
        assert_eq!(counts(&store).await, (7, 8));
        assert_eq!(row_of(6).await.1, 1);

        // A batch written again (a crash before the offsets were committed to Kafka)
        // has no effect: its offsets are below the stored ones.
        let outcome = write(&mut store, 6, labelled(&[5, 6], 1)).await;
        assert_eq!(outcome.n_already_stored, 2);
        let offsets = store
            .stored_offsets("g", "copy-then-upsert", &[0])
            .await
            .expect("offsets");
        assert_eq!(offsets.get(&0), Some(&8));
        assert_eq!(counts(&store).await, (7, 8));

        sql.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .expect("drops the schema");
    });
}
