//! Against the stack's real MLflow (3.17.2, SQLite store, artifact proxy): every
//! write is read back over REST.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cardet_testkit::{Stack, unique_name};
use cardet_tracking::{
    Error, LoggerOptions, MetricGoal, MlflowClient, Param, RunInfo, RunLogger, RunSpec, RunStatus,
    Tag, TrackingConfig, sync_run_folder,
};
use sha2::{Digest, Sha256};

fn stack_config() -> TrackingConfig {
    TrackingConfig::new(Stack::from_env().mlflow_uri)
}

fn client() -> MlflowClient {
    MlflowClient::new(&stack_config()).expect("stack MLflow URI is valid")
}

fn new_run(client: &MlflowClient, prefix: &str) -> RunInfo {
    let experiment = client
        .get_or_create_experiment(&unique_name(prefix))
        .expect("experiment");
    client
        .create_run(&experiment, Some("test-run"), 1_700_000_000_000, &[])
        .expect("run")
}

fn fast_options() -> LoggerOptions {
    LoggerOptions {
        flush_interval: std::time::Duration::from_millis(100),
        ..LoggerOptions::default()
    }
}

#[test]
fn run_with_params_tags_and_metric_steps_reads_back() {
    let client = client();
    let experiment = unique_name("tracking-run");
    let experiment_id = client
        .get_or_create_experiment(&experiment)
        .expect("create experiment");
    assert_eq!(
        client
            .get_or_create_experiment(&experiment)
            .expect("get experiment"),
        experiment_id,
        "a second get-or-create finds the same experiment"
    );
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let run = client
        .create_run(
            &experiment_id,
            Some("yolov8n"),
            1_700_000_000_000,
            &[
                Tag::new("mlflow.source.git.commit", commit),
                Tag::new("dataset_hash", "sha256:feed"),
            ],
        )
        .expect("create run");
    assert!(
        run.artifact_uri.starts_with("mlflow-artifacts:/"),
        "{}",
        run.artifact_uri
    );

    // 2500 points of one key: three log-batch calls under the 1000-metric limit.
    let loss: Vec<cardet_tracking::Metric> = (0..2500)
        .map(|step| cardet_tracking::Metric {
            key: "train/box_loss".into(),
            value: 3.0 / (step + 1) as f64,
            timestamp_ms: 1_700_000_000_000 + step,
            step,
        })
        .collect();
    let mut metrics = loss.clone();
    metrics.push(cardet_tracking::Metric {
        key: "train/cls_loss".into(),
        value: f64::NAN,
        timestamp_ms: 1_700_000_000_000,
        step: 0,
    });
    // 150 params: two calls under the 100-param limit.
    let params: Vec<Param> = (0..150)
        .map(|i| Param::new(format!("p{i:03}"), i.to_string()))
        .collect();
    client
        .log_batch(
            &run.run_id,
            &metrics,
            &params,
            &[Tag::new("stage", "train")],
        )
        .expect("log batch");
    client
        .update_run(&run.run_id, RunStatus::Finished, Some(1_700_000_100_000))
        .expect("finish run");

    let read = client.get_run(&run.run_id).expect("get run");
    assert_eq!(read.info.status, RunStatus::Finished);
    assert_eq!(read.info.start_time_ms, Some(1_700_000_000_000));
    assert_eq!(read.info.end_time_ms, Some(1_700_000_100_000));
    assert_eq!(read.info.run_name, "yolov8n");
    assert_eq!(read.tag("mlflow.source.git.commit"), Some(commit));
    assert_eq!(read.tag("dataset_hash"), Some("sha256:feed"));
    assert_eq!(read.tag("stage"), Some("train"));
    assert_eq!(read.params.len(), 150);
    assert_eq!(read.param("p149"), Some("149"));
    assert!(read.metric("train/cls_loss").is_some_and(f64::is_nan));

    let mut history = client
        .metric_history(&run.run_id, "train/box_loss")
        .expect("history");
    history.sort_by_key(|m| m.step);
    assert_eq!(history.len(), loss.len());
    // Bit for bit: values survive JSON both ways (serde_json's float_roundtrip).
    let first_difference = history.iter().zip(&loss).find(|(got, sent)| got != sent);
    assert_eq!(first_difference, None);
}

#[test]
fn server_errors_carry_mlflow_error_code_and_message() {
    let client = client();
    let err = client
        .get_run("0000000000000000000000000000dead")
        .expect_err("no such run");
    assert_eq!(err.error_code(), Some("RESOURCE_DOES_NOT_EXIST"), "{err}");
    assert!(!err.is_transient());

    let run = new_run(&client, "tracking-errors");
    client
        .log_batch(&run.run_id, &[], &[Param::new("lr", "0.01")], &[])
        .expect("first value");
    client
        .log_batch(&run.run_id, &[], &[Param::new("lr", "0.01")], &[])
        .expect("the same value again is accepted");
    let err = client
        .log_batch(&run.run_id, &[], &[Param::new("lr", "0.02")], &[])
        .expect_err("a param cannot change");
    assert_eq!(err.error_code(), Some("INVALID_PARAMETER_VALUE"), "{err}");
    assert!(err.to_string().contains("lr"), "{err}");

    let err = client
        .log_batch(
            &run.run_id,
            &[],
            &[Param::new("yaml", "y".repeat(6001))],
            &[],
        )
        .expect_err("over 6000 characters");
    assert!(matches!(err, Error::TooLong { .. }), "{err}");
}

#[test]
fn artifacts_files_and_folders_round_trip_byte_for_byte() {
    let client = client();
    let run = new_run(&client, "tracking-artifacts");
    let work = tempfile::tempdir().expect("temp dir");
    let weights = work.path().join("best.pt");
    // 3 MiB of varied bytes: more than one read buffer of the streaming upload.
    let content: Vec<u8> = (0u32..3 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&weights, &content).expect("write weights");
    let folder = work.path().join("plots");
    std::fs::create_dir_all(folder.join("val batch")).expect("mkdir");
    std::fs::write(folder.join("results.csv"), "epoch,mAP\n0,0.1\n").expect("write csv");
    std::fs::write(folder.join("val batch/labels 0.txt"), "0 0.5 0.5 0.1 0.1\n").expect("write");

    let file_report = client
        .upload_artifacts(&run, &weights, Some("weights"))
        .expect("upload file");
    assert_eq!(
        (file_report.files, file_report.bytes),
        (1, content.len() as u64)
    );
    let folder_report = client
        .upload_artifacts(&run, &folder, Some("plots"))
        .expect("upload folder");
    assert_eq!(folder_report.files, 2);

    let root: Vec<(String, bool)> = client
        .list_artifacts(&run.run_id, None)
        .expect("list root")
        .into_iter()
        .map(|f| (f.path, f.is_dir))
        .collect();
    assert_eq!(
        root,
        [("plots".to_string(), true), ("weights".to_string(), true)]
    );

    let download = tempfile::tempdir().expect("temp dir");
    let got_weights = client
        .download_artifacts(&run, "weights/best.pt", download.path())
        .expect("download file");
    assert_eq!(sha256_of(&got_weights), sha256_of(&weights));
    let got_folder = client
        .download_artifacts(&run, "plots", download.path())
        .expect("download folder");
    assert_eq!(tree_hashes(&got_folder), tree_hashes(&folder));
}

#[test]
fn registry_alias_moves_only_to_a_better_version() {
    let client = client();
    let model = unique_name("cardet-yolov8n");
    client
        .ensure_registered_model(&model)
        .expect("create model");
    client
        .ensure_registered_model(&model)
        .expect("an existing model is fine");
    assert_eq!(
        client.get_alias(&model, "champion").expect("no alias"),
        None
    );

    let register = |map50_95: f64| {
        let run = new_run(&client, "tracking-registry");
        // Logged under the sanitized name the RunLogger uses for Ultralytics' key.
        client
            .log_batch(
                &run.run_id,
                &[cardet_tracking::Metric {
                    key: "metrics/mAP50-95B".into(),
                    value: map50_95,
                    timestamp_ms: 1_700_000_000_000,
                    step: 9,
                }],
                &[],
                &[],
            )
            .expect("log metric");
        let onnx = tempfile::tempdir().expect("temp dir");
        std::fs::write(onnx.path().join("model.onnx"), b"not really onnx").expect("write");
        client
            .upload_artifacts(&run, onnx.path(), Some("model"))
            .expect("upload model");
        let version = client
            .create_model_version(&model, &run, "model")
            .expect("create version");
        assert_eq!(version.run_id, run.run_id);
        assert!(
            version.source.ends_with("/artifacts/model"),
            "{}",
            version.source
        );
        version.version
    };
    let promote = |version: &str| {
        client
            .promote_if_better(
                &model,
                "champion",
                version,
                "metrics/mAP50-95(B)",
                MetricGoal::Maximize,
            )
            .expect("promote")
    };

    let first = register(0.50);
    let promotion = promote(&first);
    assert!(
        promotion.promoted && promotion.previous_champion.is_none(),
        "{promotion:?}"
    );

    let worse = register(0.40);
    let promotion = promote(&worse);
    assert!(!promotion.promoted, "{promotion:?}");
    assert_eq!(
        promotion.previous_champion,
        Some((first.clone(), Some(0.50)))
    );
    let champion = client.get_alias(&model, "champion").expect("alias");
    assert_eq!(champion.map(|v| v.version), Some(first.clone()));

    let better = register(0.60);
    let promotion = promote(&better);
    assert!(promotion.promoted, "{promotion:?}");
    assert_eq!(promotion.candidate_value, 0.60);
    let champion = client
        .get_alias(&model, "champion")
        .expect("alias")
        .expect("champion set");
    assert_eq!(champion.version, better);
    assert_eq!(champion.aliases, ["champion"]);
}

#[test]
fn run_logger_delivers_live_and_a_later_sync_sends_nothing_twice() {
    let run_dir = tempfile::tempdir().expect("temp dir");
    let experiment = unique_name("tracking-logger");
    let spec = RunSpec::new(&experiment)
        .with_run_name("live")
        .with_tags([Tag::new("host", "test-host")]);
    let mut logger = RunLogger::open_with(run_dir.path(), &stack_config(), &spec, fast_options())
        .expect("open logger");
    logger
        .log_params([("batch_size", "16"), ("epochs", "3")])
        .expect("params");
    for step in 0..30 {
        logger
            .log_metrics(
                step,
                [
                    ("train/box_loss", 1.0 / (step + 1) as f64),
                    ("metrics/mAP50-95(B)", step as f64 / 100.0),
                ],
            )
            .expect("metrics");
    }
    // A param changed mid-run is refused by the server; the rest still goes through.
    logger.log_params([("epochs", "4")]).expect("journaled");
    let weights = run_dir.path().join("weights");
    std::fs::create_dir_all(&weights).expect("mkdir");
    std::fs::write(weights.join("last.pt"), b"weights").expect("write");
    logger
        .log_artifact(&weights, Some("weights"))
        .expect("artifact");
    let finished = logger.finish(RunStatus::Finished).expect("finish");
    assert_eq!(finished.unsent_events, 0, "{finished:?}");
    assert_eq!(finished.sent.rejected.len(), 1, "{finished:?}");
    assert!(
        finished.sent.rejected[0]
            .1
            .contains("INVALID_PARAMETER_VALUE"),
        "{finished:?}"
    );
    let run_id = finished.run_id.expect("run created");

    let client = client();
    let run = client.get_run(&run_id).expect("run");
    assert_eq!(run.info.status, RunStatus::Finished);
    assert_eq!(run.param("epochs"), Some("3"));
    assert_eq!(run.tag("host"), Some("test-host"));
    let steps: Vec<i64> = client
        .metric_history(&run_id, "metrics/mAP50-95B")
        .expect("history")
        .iter()
        .map(|m| m.step)
        .collect();
    assert_eq!(sorted(steps), (0..30).collect::<Vec<_>>());
    let listed = client
        .list_artifacts(&run_id, Some("weights"))
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, "weights/last.pt");

    let again = sync_run_folder(run_dir.path(), &Stack::from_env().mlflow_uri).expect("sync");
    assert_eq!(again.events_sent, 0, "{again:?}");
    assert_eq!(again.already_acknowledged, 35, "{again:?}");
    assert_eq!(again.run_id.as_deref(), Some(run_id.as_str()));
}

#[test]
fn the_server_keeps_one_point_when_the_same_metric_is_sent_twice() {
    // A sync that crashed between a request and its acknowledgement sends the
    // batch again; replay is only idempotent because the server keeps one copy.
    let client = client();
    let run = new_run(&client, "tracking-twice");
    let point = cardet_tracking::Metric {
        key: "loss".into(),
        value: 0.25,
        timestamp_ms: 1_700_000_000_123,
        step: 7,
    };
    for _ in 0..2 {
        client
            .log_batch(&run.run_id, std::slice::from_ref(&point), &[], &[])
            .expect("log");
    }
    let history = client.metric_history(&run.run_id, "loss").expect("history");
    assert_eq!(history, [point]);
}

#[test]
fn reopening_a_run_folder_continues_the_same_run() {
    let run_dir = tempfile::tempdir().expect("temp dir");
    let spec = RunSpec::new(unique_name("tracking-resume"));
    let mut first =
        RunLogger::open_with(run_dir.path(), &stack_config(), &spec, fast_options()).expect("open");
    for step in 0..5 {
        first
            .log_metrics(step, [("loss", step as f64)])
            .expect("log");
    }
    let busy = sync_run_folder(run_dir.path(), &Stack::from_env().mlflow_uri)
        .expect_err("the live logger holds the folder");
    assert!(matches!(busy, Error::FolderBusy { .. }), "{busy}");
    // Dropped without `finish`, as in a crash: its thread may still be creating
    // the run while the next logger opens, which waits for it instead of racing it.
    drop(first);
    let mut resumed = RunLogger::open_with(run_dir.path(), &stack_config(), &spec, fast_options())
        .expect("reopen");
    for step in 5..10 {
        resumed
            .log_metrics(step, [("loss", step as f64)])
            .expect("log");
    }
    let finished = resumed.finish(RunStatus::Finished).expect("finish");
    assert_eq!(finished.unsent_events, 0, "{finished:?}");
    let run_id = finished.run_id.expect("run id");
    let client = client();
    let steps: Vec<i64> = client
        .metric_history(&run_id, "loss")
        .expect("history")
        .iter()
        .map(|m| m.step)
        .collect();
    assert_eq!(sorted(steps), (0..10).collect::<Vec<_>>());
    let experiment_id = client.get_run(&run_id).expect("run").info.experiment_id;
    let runs = client
        .search_runs_by_tag(
            &experiment_id,
            cardet_tracking::RUN_KEY_TAG,
            &run_key(run_dir.path()),
        )
        .expect("search");
    assert_eq!(runs.len(), 1, "one run for one journal");
}

fn run_key(run_dir: &Path) -> String {
    let journal = std::fs::read_to_string(run_dir.join("mlflow/journal.jsonl")).expect("journal");
    let first: serde_json::Value =
        serde_json::from_str(journal.lines().next().expect("first line")).expect("json");
    first["run_key"].as_str().expect("run_key").to_string()
}

fn sorted(mut steps: Vec<i64>) -> Vec<i64> {
    steps.sort_unstable();
    steps
}

fn sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read file");
    format!("{:x}", Sha256::digest(bytes))
}

/// Relative path to SHA-256 of every file under `root`.
fn tree_hashes(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut hashes = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(root).expect("under root").to_path_buf();
                hashes.insert(relative, sha256_of(&path));
            }
        }
    }
    hashes
}
