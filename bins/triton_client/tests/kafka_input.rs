//! The client reading a Kafka topic on the stack's broker. The validation split of
//! a synthetic dataset goes into a new two-partition topic through `produce`'s own
//! streaming code, followed by two records nobody can run: garbage bytes, and a
//! well-formed record whose image is garbage. `triton_client --kafka-topic`, against
//! `serve` with the model from the stack's S3 server, must answer each good record
//! once with the detections the dataset input gives for the same image, print the
//! mAP of the dataset run, and skip each bad record with a warning naming its
//! offset; the run answers the rest and exits 2, as a run with skipped files does. `--max-records` stops early;
//! `--follow` answers a record sent after the start and ends cleanly on SIGINT.
//!
//! The model is the random-weight YOLOv8n of `end_to_end.rs` (deterministic, scores
//! near 1e-5, hence the tiny threshold). It is the only test in this file because it
//! points the process's AWS variables at the stack before anything reads them.

mod common;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use cardet_record::{Format, Labels, Record};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

/// How long the `--follow` part waits for an answer before it fails (a guard
/// against a hang, not a timing: the answers take about a second).
const ANSWER_DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn a_topic_gives_the_detections_and_map_of_the_split_it_was_streamed_from() {
    let work = tempfile::tempdir().expect("tempdir");
    let data_yaml = common::synthetic_dataset(&work.path().join("synth"));
    // SAFETY: the only test of this binary, before any other thread exists.
    let served = unsafe { common::serve_from_s3(work.path()) };
    let stack = cardet_testkit::Stack::from_env();
    let bootstrap = stack.kafka_bootstrap.as_str();
    let topic = cardet_testkit::unique_name("test-client-topic");
    produce::kafka::setup(&produce::SetupConfig {
        bootstrap: bootstrap.to_string(),
        topic: topic.clone(),
        partitions: 2,
        replication: 1,
        recreate: false,
        connect_timeout: Duration::from_secs(10),
    })
    .expect("creating the topic");

    // `produce` streams a whole dataset folder, so it gets one holding `val` only.
    let val_only = work.path().join("val-only");
    copy_split(&work.path().join("synth"), &val_only, "val");
    let streamed = produce::stream::stream(
        &produce::StreamConfig::new(bootstrap, &topic, val_only),
        &AtomicBool::new(false),
    )
    .expect("streaming the split");
    assert_eq!(streamed.n_delivered, 6, "{streamed:?}");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    let send = |value: Vec<u8>| -> (i32, i64) {
        let delivery = served
            .runtime
            .block_on(producer.send(
                FutureRecord::<[u8], [u8]>::to(&topic).payload(value.as_slice()),
                Duration::from_secs(30),
            ))
            .expect("delivered");
        (delivery.partition, delivery.offset)
    };
    let garbage = send(b"\x00\x01 not a record at all".to_vec());
    let broken_image = send(cardet_record::encode(
        &Record::new(
            b"\x89PNG\r\n\x1a\n and then nothing like a PNG".to_vec(),
            Some(Labels::parse("2 0.5 0.5 0.2 0.2\n").expect("labels")),
            Some("val".into()),
            "images/val/broken.png".into(),
            (400, 300),
        )
        .expect("record"),
        Format::Binary,
    ));

    let common_args = |input: &[&str]| -> Vec<String> {
        [
            "--url",
            served.http.as_str(),
            "--model",
            "car",
            "--conf",
            "0.000001",
            "--concurrency",
            "2",
            "--batch",
            "2",
        ]
        .iter()
        .chain(input)
        .map(|arg| arg.to_string())
        .collect()
    };
    let data_yaml = data_yaml.to_str().expect("UTF-8 path");
    let topic_input = [
        "--kafka-topic",
        topic.as_str(),
        "--bootstrap-servers",
        bootstrap,
        "--names",
        data_yaml,
    ];
    let split = common::run_client(
        &common_args(&["--dataset", data_yaml, "--split", "val"]),
        work.path(),
        "split",
    );
    let from_topic = common::run_client(&common_args(&topic_input), work.path(), "topic");

    // Every good record answered once, named by its file name, with its place.
    let places: BTreeSet<(i64, i64)> = from_topic
        .lines
        .iter()
        .map(|line| {
            assert_eq!(line["topic"], topic.as_str(), "{line}");
            (
                line["partition"].as_i64().expect("partition"),
                line["offset"].as_i64().expect("offset"),
            )
        })
        .collect();
    assert_eq!(from_topic.lines.len(), 6, "{}", from_topic.stderr);
    assert_eq!(places.len(), 6, "a record answered twice: {places:?}");
    let by_file_name: Vec<(String, Value)> = split
        .detections_by_image()
        .into_iter()
        .map(|(name, detections)| (file_name(&name).to_string(), detections))
        .collect();
    assert_eq!(
        from_topic.detections_by_image(),
        by_file_name,
        "the topic's detections differ from the split's"
    );
    let n_detections: usize = by_file_name
        .iter()
        .map(|(_, detections)| detections.as_array().map_or(0, Vec::len))
        .sum();
    assert!(n_detections > 0, "no detections: nothing was compared");

    // The labels travelled with the images: the same mAP, printed and written. The
    // random-weight model scores 0 on the synthetic scenes, so the counts are what
    // make this bite: every labelled box is ground truth, scored against the same
    // predictions.
    assert_eq!(map_line(&from_topic.stderr), map_line(&split.stderr));
    assert_eq!(from_topic.metrics, split.metrics);
    let metrics = from_topic
        .metrics
        .as_ref()
        .expect("labelled records give mAP");
    let n_ground_truth: u64 = metrics["per_class"]
        .as_array()
        .expect("per class")
        .iter()
        .map(|class| class["n_ground_truth"].as_u64().expect("n_ground_truth"))
        .sum();
    assert!(n_ground_truth > 0, "{metrics}");
    assert_eq!(
        n_ground_truth,
        n_label_lines(&work.path().join("val-only/labels/val"))
    );

    // The two bad records: one warning each, naming its place, and counted.
    assert_eq!(from_topic.summary["n_skipped"], 2, "{}", from_topic.stderr);
    assert_eq!(split.summary["n_skipped"], 0);
    for (partition, offset) in [garbage, broken_image] {
        let place = format!("topic {topic} partition {partition} offset {offset}");
        let warnings: Vec<&str> = from_topic
            .stderr
            .lines()
            .filter(|line| line.contains("WARN") && line.contains(&place))
            .collect();
        assert_eq!(warnings.len(), 1, "{place}:\n{}", from_topic.stderr);
    }
    assert!(
        from_topic.stderr.contains("not a cardet record"),
        "{}",
        from_topic.stderr
    );
    assert!(
        from_topic
            .stderr
            .contains("broken.png): cannot decode image"),
        "{}",
        from_topic.stderr
    );

    // --max-records counts records read, bad ones included.
    let mut limited_input = topic_input.to_vec();
    limited_input.extend(["--max-records", "3"]);
    let limited = common::run_client(&common_args(&limited_input), work.path(), "limited");
    let n_skipped = limited.summary["n_skipped"].as_u64().expect("n_skipped") as usize;
    assert_eq!(limited.lines.len() + n_skipped, 3, "{}", limited.stderr);
    for (name, detections) in limited.detections_by_image() {
        let expected = by_file_name.iter().find(|(other, _)| *other == name);
        assert_eq!(expected.map(|(_, d)| d), Some(&detections), "{name}");
    }

    follow_answers_a_late_record_and_stops_on_sigint(
        &common_args(&topic_input),
        &send,
        work.path(),
    );
}

/// `--follow`: the topic's six good records, then one sent while the client runs,
/// each answered as it comes; SIGINT ends the run with a summary and exit 0.
fn follow_answers_a_late_record_and_stops_on_sigint(
    args: &[String],
    send: &dyn Fn(Vec<u8>) -> (i32, i64),
    work: &Path,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_triton_client"))
        .args(args)
        .args(["--follow", "--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting triton_client --follow");
    let stdout = child.stdout.take().expect("stdout");
    let (line_sender, lines) = std::sync::mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.expect("a line");
            if line_sender
                .send(serde_json::from_str(&line).expect("a JSON line"))
                .is_err()
            {
                return;
            }
        }
    });
    let mut next_line = |what: &str| -> Value {
        lines.recv_timeout(ANSWER_DEADLINE).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("no answer for {what} within {ANSWER_DEADLINE:?}")
        })
    };
    for _ in 0..6 {
        next_line("the records already in the topic");
    }
    let image = std::fs::read(
        std::fs::read_dir(work.join("val-only/images/val"))
            .expect("val images")
            .next()
            .expect("a val image")
            .expect("an entry")
            .path(),
    )
    .expect("image");
    let record = Record::new(image, None, None, "late.png".into(), (400, 300)).expect("record");
    let (partition, offset) = send(cardet_record::encode(&record, Format::Json));
    let late = next_line("the record sent after the start");
    assert_eq!(late["image"], "late.png", "{late}");
    assert_eq!(
        (late["partition"].as_i64(), late["offset"].as_i64()),
        (Some(i64::from(partition)), Some(offset))
    );

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let output = child.wait_with_output().expect("triton_client ends");
    reader.join().expect("stdout reader");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The two bad records of the topic were skipped: exit 2 after the summary.
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("7 images (") && stderr.contains(" 2 skipped)"),
        "{stderr}"
    );
}

/// Copies `images/<split>` and `labels/<split>` of a YOLO dataset.
fn copy_split(from: &Path, to: &Path, split: &str) {
    for kind in ["images", "labels"] {
        let (source, target) = (from.join(kind).join(split), to.join(kind).join(split));
        std::fs::create_dir_all(&target).expect("split folder");
        for entry in std::fs::read_dir(&source).expect("split") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, target.join(path.file_name().expect("file name"))).expect("copy");
        }
    }
}

/// The boxes of a folder of YOLO label files.
fn n_label_lines(folder: &Path) -> u64 {
    std::fs::read_dir(folder)
        .expect("labels")
        .map(|entry| {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("label file");
            text.lines().filter(|line| !line.trim().is_empty()).count() as u64
        })
        .sum()
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The `mAP@0.5 ...` line of a run's stderr.
fn map_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|line| line.starts_with("mAP@0.5 "))
        .unwrap_or_else(|| panic!("no mAP line in:\n{stderr}"))
}
