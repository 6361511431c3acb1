-- PostgreSQL's cost of the sink's two write paths on 5,000 rows shaped like the
-- streaming benchmark's (about 2 kB of image bytes, two boxes each): the upsert
-- from arrays, with and without the jsonb labels, a plain INSERT, and COPY in the
-- binary format with and without the labels. Needs a superuser (the stack's cardet
-- role is one): the COPY files are written and read by the server, in /tmp.
--   psql "$DATABASE_URL" -f streaming/bench/pg_write_paths.sql
-- Prints one timing per statement; run it several times and take medians.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bench_pg_write_paths CASCADE; CREATE SCHEMA bench_pg_write_paths;
CREATE SEQUENCE bench_pg_write_paths.image_seq;
CREATE TABLE bench_pg_write_paths.src AS SELECT sha256(i::text::bytea) AS id,
  decode((SELECT string_agg(md5(random()::text || i::text || g::text),'') FROM generate_series(1,64) g),'hex') AS img,
  '[{"class":0,"cx":0.2,"cy":0.5,"w":0.1,"h":0.2},{"class":1,"cx":0.35,"cy":0.5,"w":0.1,"h":0.2}]'::text AS labels,
  E'0 0.200000 0.500000 0.100000 0.200000\n1 0.350000 0.500000 0.100000 0.200000\n'::text AS label_text,
  'train'::text AS split, 'images/train/img_' || i || '.jpg' AS path, 64 AS w, 48 AS h, i % 3 AS p, i::bigint AS o, 1 AS n
  FROM generate_series(1,5000) i;
CREATE TABLE bench_pg_write_paths.images (
    image_id     bytea PRIMARY KEY CHECK (octet_length(image_id) = 32),
    image        bytea NOT NULL, labels jsonb, label_text text, split text, source_path text NOT NULL,
    width integer NOT NULL, height integer NOT NULL, topic text NOT NULL, partition integer NOT NULL,
    "offset" bigint NOT NULL, n_deliveries integer NOT NULL DEFAULT 1,
    seq bigint NOT NULL DEFAULT nextval('bench_pg_write_paths.image_seq'), ingested_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON bench_pg_write_paths.images (seq);
ALTER TABLE bench_pg_write_paths.images ALTER COLUMN image SET STORAGE EXTERNAL;
ALTER TABLE bench_pg_write_paths.images SET (toast_tuple_target = 8160);
COPY (SELECT id, img, labels::jsonb, label_text, split, path, w, h, 't', p, o, n FROM bench_pg_write_paths.src) TO '/tmp/bench_pg_write_paths.bin' WITH (FORMAT binary);
COPY (SELECT id, img, NULL::jsonb, label_text, split, path, w, h, 't', p, o, n FROM bench_pg_write_paths.src) TO '/tmp/bench_pg_write_paths_nolabels.bin' WITH (FORMAT binary);
\timing on
TRUNCATE bench_pg_write_paths.images;
\echo upsert_jsonb
INSERT INTO bench_pg_write_paths.images AS i (image_id, image, labels, label_text, split, source_path, width, height, topic, partition, "offset", n_deliveries)
SELECT u.id, u.img, u.labels::jsonb, u.label_text, u.split, u.path, u.w, u.h, 't', u.p, u.o, u.n FROM bench_pg_write_paths.src u
ON CONFLICT (image_id) DO UPDATE SET n_deliveries = i.n_deliveries + excluded.n_deliveries, labels = excluded.labels;
TRUNCATE bench_pg_write_paths.images;
\echo upsert_null
INSERT INTO bench_pg_write_paths.images AS i (image_id, image, labels, label_text, split, source_path, width, height, topic, partition, "offset", n_deliveries)
SELECT u.id, u.img, NULL, u.label_text, u.split, u.path, u.w, u.h, 't', u.p, u.o, u.n FROM bench_pg_write_paths.src u
ON CONFLICT (image_id) DO UPDATE SET n_deliveries = i.n_deliveries + excluded.n_deliveries, labels = excluded.labels;
TRUNCATE bench_pg_write_paths.images;
\echo insert_jsonb
INSERT INTO bench_pg_write_paths.images AS i (image_id, image, labels, label_text, split, source_path, width, height, topic, partition, "offset", n_deliveries)
SELECT u.id, u.img, u.labels::jsonb, u.label_text, u.split, u.path, u.w, u.h, 't', u.p, u.o, u.n FROM bench_pg_write_paths.src u;
TRUNCATE bench_pg_write_paths.images;
\echo copy_jsonb
COPY bench_pg_write_paths.images (image_id, image, labels, label_text, split, source_path, width, height, topic, partition, "offset", n_deliveries) FROM '/tmp/bench_pg_write_paths.bin' WITH (FORMAT binary);
TRUNCATE bench_pg_write_paths.images;
\echo copy_null
COPY bench_pg_write_paths.images (image_id, image, labels, label_text, split, source_path, width, height, topic, partition, "offset", n_deliveries) FROM '/tmp/bench_pg_write_paths_nolabels.bin' WITH (FORMAT binary);
\timing off
DROP SCHEMA bench_pg_write_paths CASCADE;
