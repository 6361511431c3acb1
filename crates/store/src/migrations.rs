//! The store's schema, created and upgraded by the binary that owns it: each
//! migration runs once, in order, under an advisory lock so that two sinks
//! starting together do not race. `{schema}` stands for the (validated) schema name.

/// Version 1: images keyed by id, the consumer offsets stored with them, dead letters.
/// Version 2: image bytes stored without PostgreSQL's compression, small ones inline (see below).
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE SEQUENCE {schema}.image_seq;
CREATE TABLE {schema}.images (
    image_id     bytea PRIMARY KEY CHECK (octet_length(image_id) = 32),
    image        bytea NOT NULL,
    labels       jsonb,
    label_text   text,
    split        text,
    source_path  text NOT NULL,
    width        integer NOT NULL,
    height       integer NOT NULL,
    topic        text NOT NULL,
    partition    integer NOT NULL,
    "offset"     bigint NOT NULL,
    n_deliveries integer NOT NULL DEFAULT 1,
    seq          bigint NOT NULL DEFAULT nextval('{schema}.image_seq'),
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX images_seq_idx ON {schema}.images (seq);
COMMENT ON COLUMN {schema}.images.image_id IS 'SHA-256 of image';
COMMENT ON COLUMN {schema}.images.labels IS 'boxes [{"class","cx","cy","w","h"}], normalised; NULL when the image had no label file';
COMMENT ON COLUMN {schema}.images.label_text IS 'the YOLO label file as sent, for a byte-exact export';
COMMENT ON COLUMN {schema}.images.n_deliveries IS 'how many distinct Kafka records carried this image';
COMMENT ON COLUMN {schema}.images.seq IS 'export order: bumped when labels, split or path change';
CREATE TABLE {schema}.consumer_offsets (
    group_id    text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
CREATE TABLE {schema}.dead_letters (
    topic       text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    reason      text NOT NULL,
    key         bytea,
    payload     bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
"#,
    ),
    // JPEG, PNG and WebP bytes are already compressed: pglz's attempt on every row
    // over 2 kB was CPU for nothing. Measured with `cargo xtask bench streaming`
    // (5,000 64x48 JPEGs): a 1,000-row batch took about 40 ms to write instead of 50.
    // Rows up to a page (8160 bytes) stay in the table instead of moving to the
    // TOAST table: one heap insert per small image instead of three (about 5% more
    // rows/s, inside the run-to-run spread). Rows written before stay as they are;
    // both read back the same.
    (
        2,
        "ALTER TABLE {schema}.images ALTER COLUMN image SET STORAGE EXTERNAL;
         ALTER TABLE {schema}.images SET (toast_tuple_target = 8160);",
    ),
];
