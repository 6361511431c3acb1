//! `mwt train` tracked in the stack's real MLflow, read back over REST: params, tags,
//! metric histories, artifacts byte for byte, the registry's `champion` alias; and a
//! run trained while MLflow is down, then sent by `mwt mlflow-sync`.

mod common;

use common::path_str;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cardet_tracking::{MlflowClient, TrackingConfig, sanitize_key};
use sha2::{Digest, Sha256};

/// `mwt` with MLflow's variables cleared, so only what a test sets counts.
fn mwt(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mwt"));
    command
        .args(args)
        .env_remove("MLFLOW_TRACKING_URI")
        .env_remove("MLFLOW_EXPERIMENT_NAME");
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("runs mwt")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn synth_dataset(root: &Path, n_train: usize, n_val: usize, size: (u32, u32)) -> PathBuf {
    common::synth_dataset(root, n_train, n_val, size, 23)
}

/// A short run's flags: `epochs` epochs of 6 images in batches of 2 at 64 px.
fn train_args<'a>(
    data: &'a Path,
    project: &'a Path,
    name: &'a str,
    epochs: &'a str,
) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        path_str(data),
        "--model",
        "n",
        "--epochs",
        epochs,
        "--batch",
        "2",
        "--imgsz",
        "64",
        "--workers",
        "1",
        "--project",
        path_str(project),
        "--name",
        name,
        "--json",
    ]
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn client(uri: &str) -> MlflowClient {
    MlflowClient::new(&TrackingConfig::new(uri)).expect("client")
}

/// Every `results.csv` column (but `epoch`) has exactly one point per epoch in
/// MLflow, at step = epoch, with the CSV's value (written with 6 decimals).
fn assert_epoch_metrics_once(client: &MlflowClient, run_id: &str, results_csv: &Path) {
    let rows = cardet_train::trainer::read_results_csv(results_csv).expect("results.csv");
    assert!(!rows.is_empty(), "no epochs in {}", results_csv.display());
    let columns: Vec<String> = rows[0].iter().map(|(name, _)| name.clone()).collect();
    for column in columns.iter().filter(|c| *c != "epoch") {
        let key = sanitize_key(column);
        let history = client.metric_history(run_id, &key).expect("get-history");
        for (index, row) in rows.iter().enumerate() {
            let epoch = (index + 1) as i64;
            let points: Vec<_> = history.iter().filter(|m| m.step == epoch).collect();
            assert_eq!(points.len(), 1, "{key} at epoch {epoch}: {history:?}");
            let csv_value = row
                .iter()
                .find(|(name, _)| name == column)
                .map(|(_, value)| *value)
                .expect("column");
            assert!(
                (points[0].value - csv_value).abs() <= 1e-6,
                "{key} epoch {epoch}: MLflow {} csv {csv_value}",
                points[0].value
            );
        }
    }
}

#[test]
fn a_tracked_run_is_in_mlflow_and_its_model_is_registered_as_champion() {
    let stack = cardet_testkit::Stack::from_env();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synth_dataset(&dir.path().join("data"), 6, 2, (96, 64));
    let project = dir.path().join("runs");
    let experiment = cardet_testkit::unique_name("mwt-train");
    let model_name = cardet_testkit::unique_name("mwt-car");

    // --register without a server is refused before training starts.
    let mut no_server = train_args(&data, &project, "refused", "1");
    no_server.extend(["--register", &model_name]);
    let refused = mwt(&no_server, &[]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--register needs an MLflow server"),
        "{}",
        stderr(&refused)
    );
    assert!(!project.join("refused").exists());

    let mut args = train_args(&data, &project, "tracked", "1");
    args.extend(["--experiment", &experiment, "--register", &model_name]);
    let train = mwt(&args, &[("MLFLOW_TRACKING_URI", &stack.mlflow_uri)]);
    assert!(train.status.success(), "{}", stderr(&train));
    let summary: serde_json::Value = serde_json::from_slice(&train.stdout).expect("summary JSON");
    let run_dir = project.join("tracked");
    let run_id = summary["mlflow_run_id"]
        .as_str()
        .expect("run id")
        .to_string();
    assert_eq!(summary["mlflow_unsent_events"], 0, "{summary}");
    assert_eq!(summary["registered_model"], model_name.as_str());
    assert_eq!(summary["registered_version"], "1");
    // The first version of a new model has no champion to beat.
    assert_eq!(summary["champion"], true);

    let client = client(&stack.mlflow_uri);
    let run = client.get_run(&run_id).expect("get run");
    let url = summary["mlflow_run_url"].as_str().expect("url");
    assert_eq!(
        url,
        format!(
            "{}/#/experiments/{}/runs/{run_id}",
            stack.mlflow_uri.trim_end_matches('/'),
            run.info.experiment_id
        )
    );
    assert_eq!(run.info.status, cardet_tracking::RunStatus::Finished);
    assert_eq!(run.info.run_name, "tracked");

    // Params: every args.yaml setting with its text.
    let args_yaml = std::fs::read_to_string(run_dir.join("args.yaml")).expect("args.yaml");
    let mut checked = 0;
    for line in args_yaml.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        if key.starts_with(' ') {
            continue;
        }
        assert!(run.param(key).is_some(), "param {key} missing");
        checked += 1;
        if ["epochs", "imgsz", "batch"].contains(&key) {
            assert_eq!(run.param(key), Some(value.trim()), "param {key}");
        }
    }
    assert!(
        checked >= 20,
        "only {checked} params in args.yaml:\n{args_yaml}"
    );

    // Tags: where the run comes from.
    assert_eq!(run.tag("mlflow.source.name"), Some("mwt train"));
    let commit = run.tag("mlflow.source.git.commit").expect("git commit tag");
    assert_eq!(commit.len(), 40, "{commit}");
    let hash = run.tag("dataset_hash").expect("dataset hash tag");
    assert!(
        hash.starts_with("sha256:") && hash.len() == 7 + 64,
        "{hash}"
    );

    // Per-batch metrics: one point per optimiser batch, on distinct increasing steps.
    let losses = client
        .metric_history(&run_id, "step/train/box_loss")
        .expect("history");
    assert!(losses.len() >= 3, "{losses:?}");
    let mut steps: Vec<i64> = losses.iter().map(|m| m.step).collect();
    steps.sort_unstable();
    steps.dedup();
    assert_eq!(steps.len(), losses.len(), "{losses:?}");
    for key in ["step/lr/pg0", "step/lr/pg2", "step/images_per_second"] {
        let history = client.metric_history(&run_id, key).expect("history");
        assert_eq!(history.len(), losses.len(), "{key}: {history:?}");
    }

    // Per-epoch metrics: the results.csv row; then the best checkpoint's final
    // validation after the epochs, which is what the champion comparison reads.
    assert_epoch_metrics_once(&client, &run_id, &run_dir.join("results.csv"));
    let final_map = client
        .metric_history(&run_id, "metrics/mAP50-95B")
        .expect("history")
        .into_iter()
        .find(|m| m.step == 2)
        .expect("final validation at step epochs + 1");
    assert_eq!(
        Some(final_map.value),
        summary["metrics"]["metrics/mAP50-95(B)"].as_f64()
    );

    // Artifacts: downloaded through the proxy, equal to the run folder's files.
    let root: Vec<String> = client
        .list_artifacts(&run_id, None)
        .expect("list")
        .into_iter()
        .map(|f| f.path)
        .collect();
    for expected in ["args.yaml", "results.csv", "weights", "model"] {
        assert!(
            root.iter().any(|p| p == expected),
            "{expected} not in {root:?}"
        );
    }
    let downloads = dir.path().join("downloads");
    for file in [
        "weights/best.safetensors",
        "weights/last.safetensors",
        "results.csv",
        "args.yaml",
        "model/config.pbtxt",
        "model/1/model.onnx",
    ] {
        let local = client
            .download_artifacts(&run.info, file, &downloads)
            .expect("download");
        assert_eq!(sha256(&local), sha256(&run_dir.join(file)), "{file}");
    }

    // The registry: version 1 comes from this run's model folder and is the champion.
    let champion = client
        .get_alias(&model_name, "champion")
        .expect("alias")
        .expect("champion set");
    assert_eq!(champion.version, "1");
    assert_eq!(champion.run_id, run_id);
    assert!(champion.source.ends_with("/model"), "{}", champion.source);
    // The Triton entry carries the registered name, so the folder serves under it.
    let config = std::fs::read_to_string(downloads.join("model/config.pbtxt")).expect("config");
    assert!(
        config.contains(&format!("name: \"{model_name}\"")),
        "{config}"
    );
}

#[test]
fn a_run_trained_while_mlflow_is_down_is_sent_by_mlflow_sync() {
    let stack = cardet_testkit::Stack::from_env();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synth_dataset(&dir.path().join("data"), 4, 2, (96, 64));
    let project = dir.path().join("runs");
    let experiment = cardet_testkit::unique_name("mwt-offline");
    let model_name = cardet_testkit::unique_name("mwt-offline-car");
    // A port nobody listens on: bound, then released.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let dead_uri = format!("http://127.0.0.1:{dead_port}");

    let mut args = train_args(&data, &project, "offline", "2");
    args.extend(["--experiment", &experiment, "--register", &model_name]);
    let train = mwt(&args, &[("MLFLOW_TRACKING_URI", &dead_uri)]);
    let log = stderr(&train);
    assert!(train.status.success(), "{log}");
    assert_eq!(log.matches("is unreachable").count(), 1, "{log}");
    assert!(log.contains(&dead_uri), "{log}");
    let summary: serde_json::Value = serde_json::from_slice(&train.stdout).expect("summary JSON");
    assert!(summary["mlflow_run_id"].is_null(), "{summary}");
    assert!(summary["registered_version"].is_null(), "{summary}");
    assert_eq!(summary["champion"], false, "{summary}");
    assert!(
        summary["mlflow_unsent_events"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{summary}"
    );
    let run_dir = project.join("offline");
    assert!(run_dir.join("mlflow/journal.jsonl").is_file());

    let sync_args = [
        "mlflow-sync",
        path_str(&run_dir),
        "--mlflow-uri",
        &stack.mlflow_uri,
        "--json",
    ];
    let mut register_args = sync_args.to_vec();
    register_args.extend(["--register", &model_name]);
    let sync = mwt(&register_args, &[]);
    assert!(sync.status.success(), "{}", stderr(&sync));
    let report: serde_json::Value = serde_json::from_slice(&sync.stdout).expect("sync JSON");
    let run_id = report["mlflow_run_id"]
        .as_str()
        .expect("run id")
        .to_string();
    assert!(
        report["events_sent"].as_u64().is_some_and(|n| n > 0),
        "{report}"
    );
    assert!(
        report["artifact_files_uploaded"]
            .as_u64()
            .is_some_and(|n| n >= 4),
        "{report}"
    );
    assert_eq!(report["rejected"], serde_json::json!([]), "{report}");
    assert_eq!(report["registered_version"], "1", "{report}");
    assert_eq!(report["champion"], true, "{report}");

    let client = client(&stack.mlflow_uri);
    let run = client.get_run(&run_id).expect("get run");
    assert_eq!(run.info.status, cardet_tracking::RunStatus::Finished);
    assert_eq!(run.info.run_name, "offline");
    assert_epoch_metrics_once(&client, &run_id, &run_dir.join("results.csv"));
    let local = client
        .download_artifacts(&run.info, "model/1/model.onnx", &dir.path().join("dl"))
        .expect("download");
    assert_eq!(sha256(&local), sha256(&run_dir.join("model/1/model.onnx")));

    // A second sync finds everything acknowledged and sends nothing.
    let again = mwt(&sync_args, &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("sync JSON");
    assert_eq!(again["events_sent"], 0, "{again}");
    assert_eq!(again["mlflow_run_id"], run_id.as_str());
    assert!(again["registered_version"].is_null(), "{again}");

    // The same run registered again ties with the champion: a tie keeps it.
    let tie = mwt(&register_args, &[]);
    assert!(tie.status.success(), "{}", stderr(&tie));
    let tie: serde_json::Value = serde_json::from_slice(&tie.stdout).expect("sync JSON");
    assert_eq!(tie["registered_version"], "2", "{tie}");
    assert_eq!(tie["champion"], false, "{tie}");
    let champion = client
        .get_alias(&model_name, "champion")
        .expect("alias")
        .expect("champion set");
    assert_eq!(champion.version, "1");
}

#[test]
fn mlflow_sync_of_a_folder_without_journal_fails_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = mwt(
        &[
            "mlflow-sync",
            path_str(dir.path()),
            "--mlflow-uri",
            "http://127.0.0.1:9",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    let log = stderr(&output);
    assert_eq!(log.trim().lines().count(), 1, "{log}");
    assert!(log.contains("journal.jsonl"), "{log}");
}

#[test]
fn no_mlflow_and_register_conflict() {
    let output = mwt(
        &[
            "train",
            "--data",
            "data.yaml",
            "--no-mlflow",
            "--register",
            "m",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--register"),
        "{}",
        stderr(&output)
    );
    let help = mwt(&["train", "--help"], &[]);
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--mlflow-uri",
        "--no-mlflow",
        "--experiment",
        "--run-name",
        "--register",
    ] {
        assert!(text.contains(flag), "train --help lacks {flag}");
    }
}

#[test]
fn ctrl_c_ends_the_mlflow_run_as_killed_without_registering() {
    let stack = cardet_testkit::Stack::from_env();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = synth_dataset(&dir.path().join("data"), 4, 2, (96, 64));
    let project = dir.path().join("runs");
    let experiment = cardet_testkit::unique_name("mwt-killed");
    let model_name = cardet_testkit::unique_name("mwt-killed-car");
    let mut args = train_args(&data, &project, "killed", "200");
    args.extend(["--experiment", &experiment, "--register", &model_name]);
    let child = Command::new(env!("CARGO_BIN_EXE_mwt"))
        .args(&args)
        .env("MLFLOW_TRACKING_URI", &stack.mlflow_uri)
        .env_remove("MLFLOW_EXPERIMENT_NAME")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mwt");
    // Interrupt once the first epoch is in results.csv (header + one row).
    let results = project.join("killed/results.csv");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while std::fs::read_to_string(&results).map_or(0, |text| text.lines().count()) < 2 {
        assert!(std::time::Instant::now() < deadline, "no epoch finished");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let output = child.wait_with_output().expect("mwt ends");
    assert!(output.status.success(), "{}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("summary JSON");
    assert_eq!(summary["stop_reason"], "stopped", "{summary}");
    assert!(summary["registered_version"].is_null(), "{summary}");
    let run_id = summary["mlflow_run_id"].as_str().expect("run id");

    let client = client(&stack.mlflow_uri);
    let run = client.get_run(run_id).expect("get run");
    assert_eq!(run.info.status, cardet_tracking::RunStatus::Killed);
    assert_epoch_metrics_once(&client, run_id, &results);
    // The checkpoints of the interrupted run are there to resume from.
    let weights: Vec<String> = client
        .list_artifacts(run_id, Some("weights"))
        .expect("list")
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert!(
        weights.iter().any(|p| p == "weights/last.safetensors"),
        "{weights:?}"
    );
}
