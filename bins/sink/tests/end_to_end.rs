//! produce → Kafka → sink → PostgreSQL → export, against the stack's broker and
//! database, each test on a topic and schema of its own.

mod common;

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use cardet_testkit::Stack;
use common::*;

/// 2,000 images through the whole loop; the export equals the source byte for byte.
#[test]
fn exported_dataset_equals_the_source_byte_for_byte() {
    let stack = Stack::from_env();
    let names = Names::new("e2e");
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source");
    make_dataset(&source, 2000, 1);
    create_topic(&stack.kafka_bootstrap, &names.topic, 3);

    let summary = produce::stream::stream(
        &stream_config(&stack.kafka_bootstrap, &names.topic, &source),
        &AtomicBool::new(false),
    )
    .expect("streams");
    summary.check().expect("every record delivered");
    assert_eq!((summary.n_records, summary.n_delivered), (2000, 2000));
    assert!(summary.skipped.is_empty(), "{:?}", summary.skipped);

    let sink = run_sink(&stack, &names, &["--until-idle", "3"]);
    assert_eq!(sink["n_records"], 2000, "{sink}");
    let counts = counts(&stack, &names);
    assert_eq!(
        (counts.n_images, counts.n_deliveries, counts.n_dead_letters),
        (2000, 2000, 0)
    );
    // Migration 2: image bytes are kept as sent, without pglz ("e", external).
    assert_eq!(image_column_storage(&stack, &names), "e");

    // As the source was split: the same tree, file for file.
    let out = dir.path().join("export");
    let exported = export(&stack, &names, &out, &["--split", "source"]);
    assert_eq!(exported["n_images"], 2000, "{exported}");
    let (expected, actual) = (tree(&source), tree(&out));
    assert_eq!(expected.len(), actual.len());
    for ((expected_path, expected_bytes), (actual_path, actual_bytes)) in
        expected.iter().zip(&actual)
    {
        assert_eq!(expected_path, actual_path);
        assert!(expected_bytes == actual_bytes, "{actual_path} differs");
    }
    let data_yaml = std::fs::read_to_string(out.join("data.yaml")).expect("data.yaml");
    assert!(
        data_yaml.contains("train: images/train") && data_yaml.contains("2: \"class_2\""),
        "{data_yaml}"
    );

    // Incremental: nothing new, nothing written.
    let again = export(&stack, &names, &out, &["--split", "source"]);
    assert_eq!(again["n_images"], 0, "{again}");
    // A different split rule into the same folder is refused.
    let refused = Command::new(env!("CARGO_BIN_EXE_sink"))
        .args([
            "export",
            "--schema",
            &names.schema,
            "--database-url",
            &stack.database_url,
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("new folder"));

    // By the stable hash of the id: about 20% in val, the same files.
    let hashed = dir.path().join("hashed");
    let exported = export(&stack, &names, &hashed, &["--val-fraction", "0.2"]);
    let n_val = exported["per_split"]["val"].as_u64().unwrap_or(0);
    assert!((300..500).contains(&n_val), "{exported}");
    let mut by_content: Vec<Vec<u8>> = tree(&hashed)
        .into_iter()
        .filter(|(p, _)| p.starts_with("images"))
        .map(|(_, b)| b)
        .collect();
    let mut source_images: Vec<Vec<u8>> = expected
        .into_iter()
        .filter(|(p, _)| p.starts_with("images"))
        .map(|(_, b)| b)
        .collect();
    by_content.sort();
    source_images.sort();
    assert!(by_content == source_images);
}

/// The compact binary format goes through the same sink; an image sent twice (two
/// passes of the folder) is one row with two deliveries; an export picks up only
/// what is new.
#[test]
fn binary_records_and_repeats_are_absorbed() {
    let stack = Stack::from_env();
    let names = Names::new("binary");
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source");
    make_dataset(&source, 40, 2);
    create_topic(&stack.kafka_bootstrap, &names.topic, 2);
    let mut config = stream_config(&stack.kafka_bootstrap, &names.topic, &source);
    config.format = produce::Format::Binary;
    config.repeat_forever = true;
    config.max_records = Some(60);
    let summary = produce::stream::stream(&config, &AtomicBool::new(false)).expect("streams");
    assert_eq!(summary.n_delivered, 60);

    let out = dir.path().join("export");
    run_sink(&stack, &names, &["--until-idle", "2"]);
    let counts = counts(&stack, &names);
    assert_eq!((counts.n_images, counts.n_deliveries), (40, 60));
    assert_eq!(export(&stack, &names, &out, &[])["n_images"], 40);

    let more = dir.path().join("more");
    make_dataset(&more, 5, 3);
    produce::stream::stream(
        &stream_config(&stack.kafka_bootstrap, &names.topic, &more),
        &AtomicBool::new(false),
    )
    .expect("streams")
    .check()
    .expect("delivered");
    run_sink(&stack, &names, &["--until-idle", "2"]);
    assert_eq!(export(&stack, &names, &out, &[])["n_images"], 5);
    assert_eq!(
        tree(&out)
            .iter()
            .filter(|(p, _)| p.starts_with("images"))
            .count(),
        45
    );
}

/// A truncated JPEG and a malformed label file are reported by name and skipped;
/// records that are not ours land in the dead-letter table with their reason.
#[test]
fn bad_input_is_reported_skipped_or_dead_lettered() {
    let stack = Stack::from_env();
    let names = Names::new("bad");
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source");
    make_dataset(&source, 10, 4);
    let truncated = source.join("images/train/img_4_00002.jpg");
    let bytes = std::fs::read(&truncated).expect("read");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("truncate");
    let bad_labels = source.join("labels/train/img_4_00003.txt");
    std::fs::write(&bad_labels, "0 0.5 0.5 0.1\n").expect("write");
    create_topic(&stack.kafka_bootstrap, &names.topic, 1);

    let summary = produce::stream::stream(
        &stream_config(&stack.kafka_bootstrap, &names.topic, &source),
        &AtomicBool::new(false),
    )
    .expect("streams");
    let skipped: Vec<(String, String)> = summary
        .skipped
        .iter()
        .map(|s| {
            (
                s.path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                s.reason.clone(),
            )
        })
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert_eq!(skipped[0].0, "img_4_00002.jpg");
    assert!(skipped[0].1.contains("truncated JPEG"), "{skipped:?}");
    assert_eq!(skipped[1].0, "img_4_00003.jpg");
    assert!(
        skipped[1].1.contains("img_4_00003.txt") && skipped[1].1.contains("line 1"),
        "{skipped:?}"
    );
    assert_eq!(summary.n_delivered, 8);
    summary
        .check()
        .expect("skipped files are not delivery failures");

    send_raw(
        &stack.kafka_bootstrap,
        &names.topic,
        &[
            b"not a record",
            br#"{"schema":{"type":"struct","name":"other"},"payload":{}}"#,
        ],
    );
    let sink = run_sink(&stack, &names, &["--until-idle", "2"]);
    assert_eq!(
        (sink["n_records"].as_u64(), sink["n_dead_letters"].as_u64()),
        (Some(8), Some(2)),
        "{sink}"
    );
    let letters = dead_letters(&stack, &names);
    assert_eq!(letters.len(), 2);
    assert_eq!((letters[0].0, letters[0].1), (0, 8));
    assert!(
        letters[0]
            .2
            .contains("neither a JSON envelope nor the binary magic"),
        "{letters:?}"
    );
    assert!(
        letters[1].2.contains("not a cardet record") && letters[1].2.contains("other"),
        "{letters:?}"
    );
}

/// A wrong bootstrap address fails within seconds, naming the address.
#[test]
fn wrong_bootstrap_address_fails_fast() {
    let stack = Stack::from_env();
    let dir = tempfile::tempdir().expect("tempdir");
    make_dataset(dir.path(), 1, 5);
    let cases: [(&str, Vec<String>); 2] = [
        (
            env!("CARGO_BIN_EXE_sink"),
            vec![
                "run".into(),
                "--database-url".into(),
                stack.database_url.clone(),
            ],
        ),
        (
            "produce",
            vec!["stream".into(), dir.path().display().to_string()],
        ),
    ];
    for (binary, args) in cases {
        let started = Instant::now();
        let output = if binary == "produce" {
            let config = produce::StreamConfig {
                connect_timeout: Duration::from_secs(3),
                ..stream_config("127.0.0.1:1", "nowhere", dir.path())
            };
            let error =
                produce::stream::stream(&config, &AtomicBool::new(false)).expect_err("fails");
            error.to_string()
        } else {
            let output = Command::new(binary)
                .args(&args)
                .args([
                    "--bootstrap-servers",
                    "127.0.0.1:1",
                    "--connect-timeout",
                    "3",
                ])
                .output()
                .expect("runs");
            assert_eq!(output.status.code(), Some(2));
            String::from_utf8_lossy(&output.stderr).into_owned()
        };
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(
            output.contains("cannot reach Kafka at 127.0.0.1:1"),
            "{output}"
        );
    }
}
