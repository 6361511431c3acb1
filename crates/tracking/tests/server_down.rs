//! Nothing is lost when MLflow goes down: against our own `mlflow server` (the
//! venv's, SQLite store, artifact proxy), SIGKILLed mid-run and restarted on the
//! same port and store. The shared stack's MLflow is never touched.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cardet_testkit::cardet_home;
use cardet_tracking::{
    LoggerOptions, MlflowClient, RunLogger, RunSpec, RunStatus, TrackingConfig, sync_run_folder,
};

#[test]
fn killed_server_loses_no_metric_step_and_sync_sends_each_once() {
    let warnings = capture_warnings();
    let store = tempfile::tempdir().expect("temp dir");
    let port = cardet_testkit::free_port();
    let uri = format!("http://127.0.0.1:{port}");
    let config = TrackingConfig::new(&uri);
    let client = MlflowClient::new(&config).expect("client");
    let options = LoggerOptions {
        flush_interval: Duration::from_millis(100),
        max_retry_interval: Duration::from_millis(400),
        finish_timeout: Duration::from_secs(2),
    };

    let mut server = MlflowServer::start(store.path(), port);
    server.wait_until_ready(&client);

    // Run A: starts with the server up, loses it mid-run.
    let run_a = tempfile::tempdir().expect("temp dir");
    let spec = RunSpec::new("server-down").with_run_name("a");
    let mut logger =
        RunLogger::open_with(run_a.path(), &config, &spec, options.clone()).expect("open logger");
    logger.log_params([("epochs", 2)]).expect("params");
    for step in 0..10 {
        logger
            .log_metrics(step, [("loss", 10.0 - step as f64)])
            .expect("metrics");
    }
    wait_for(
        || logger.unsent_events() == 0,
        "the first ten steps reach the server",
    );
    let run_id = logger
        .run_id()
        .expect("run created while the server was up");

    server.kill();
    let weights = run_a.path().join("best.pt");
    std::fs::write(&weights, b"weights of epoch 2").expect("write weights");
    for step in 10..25 {
        logger
            .log_metrics(step, [("loss", 10.0 - step as f64)])
            .expect("metrics journaled");
        // Let the sender meet the dead server several times: still one warning.
        std::thread::sleep(Duration::from_millis(50));
    }
    logger
        .log_artifact(&weights, Some("weights"))
        .expect("artifact journaled");
    let finished = logger.finish(RunStatus::Finished).expect("finish offline");
    assert!(finished.unsent_events >= 17, "{finished:?}");

    // Run B: the server is down from its very first event.
    let run_b = tempfile::tempdir().expect("temp dir");
    let spec_b = RunSpec::new("server-down").with_run_name("b");
    let mut offline = RunLogger::open_with(run_b.path(), &config, &spec_b, options.clone())
        .expect("open logger offline");
    for step in 0..5 {
        offline
            .log_metrics(step, [("loss", step as f64)])
            .expect("metrics");
    }
    let offline_report = offline.finish(RunStatus::Failed).expect("finish offline");
    assert_eq!(offline_report.run_id, None);
    assert_eq!(offline_report.unsent_events, 7);

    let unreachable_lines: Vec<String> = warnings
        .lock()
        .expect("warnings")
        .lines()
        .filter(|line| line.contains("unreachable"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        unreachable_lines.len(),
        2,
        "one warning per logger, naming the server: {unreachable_lines:#?}"
    );
    assert!(unreachable_lines.iter().all(|line| line.contains(&uri)));
    eprintln!("the warning: {}", unreachable_lines[0]);

    let err = sync_run_folder(run_a.path(), &uri).expect_err("server still down");
    assert!(err.is_transient(), "{err}");

    server = MlflowServer::start(store.path(), port);
    server.wait_until_ready(&client);

    let synced = sync_run_folder(run_a.path(), &uri).expect("sync run a");
    assert_eq!(synced.run_id.as_deref(), Some(run_id.as_str()));
    assert_eq!(synced.metric_points_sent, 15, "{synced:?}");
    assert_eq!(synced.artifact_files_uploaded, 1, "{synced:?}");
    let run = client.get_run(&run_id).expect("run a");
    assert_eq!(run.info.status, RunStatus::Finished);
    assert_eq!(run.param("epochs"), Some("2"));
    let history = client.metric_history(&run_id, "loss").expect("history");
    let mut steps: Vec<i64> = history.iter().map(|m| m.step).collect();
    steps.sort_unstable();
    assert_eq!(
        steps,
        (0..25).collect::<Vec<_>>(),
        "every step exactly once"
    );
    assert!(history.iter().all(|m| m.value == 10.0 - m.step as f64));
    let listed = client
        .list_artifacts(&run_id, Some("weights"))
        .expect("list");
    assert_eq!(listed.len(), 1);

    let synced_b = sync_run_folder(run_b.path(), &uri).expect("sync run b");
    let run_b_id = synced_b.run_id.expect("run b created on sync");
    let run_b_info = client.get_run(&run_b_id).expect("run b").info;
    assert_eq!(run_b_info.status, RunStatus::Failed);
    assert_eq!(run_b_info.run_name, "b");
    assert_eq!(
        run_b_info.start_time_ms,
        Some(journal_start_time(run_b.path()))
    );
    let history_b = client.metric_history(&run_b_id, "loss").expect("history b");
    let mut steps_b: Vec<i64> = history_b.iter().map(|m| m.step).collect();
    steps_b.sort_unstable();
    assert_eq!(steps_b, (0..5).collect::<Vec<_>>());
    // Metrics keep the time they were logged, not the time of the sync.
    assert!(
        history_b
            .iter()
            .all(|m| m.timestamp_ms <= run_b_info.end_time_ms.unwrap_or(0))
    );

    for run_dir in [run_a.path(), run_b.path()] {
        let again = sync_run_folder(run_dir, &uri).expect("second sync");
        assert_eq!(again.events_sent, 0, "{again:?}");
    }
    let history = client.metric_history(&run_id, "loss").expect("history");
    assert_eq!(history.len(), 25);
}

/// Our own MLflow server in its own process group, killed as a group.
struct MlflowServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl MlflowServer {
    fn start(store: &Path, port: u16) -> MlflowServer {
        use std::os::unix::process::CommandExt;
        let mlflow = cardet_home().join("venv/bin/mlflow");
        let log = store.join("server.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("server log");
        let child = Command::new(&mlflow)
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", store.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(store.join("artifacts"))
            .args(["--workers", "1"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", mlflow.display()));
        MlflowServer { child, port, log }
    }

    fn wait_until_ready(&mut self, client: &MlflowClient) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            if client.get_or_create_experiment("Default").is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mlflow server exited with {status}:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "mlflow server did not answer in 180 s:\n{}",
            self.log_tail()
        );
    }

    /// SIGKILL to the whole group (the server and its workers), then reap the leader.
    fn kill(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: killpg only sends a signal to the group we created.
        unsafe {
            libc::killpg(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
        // The workers die with the signal; wait until nothing accepts on the port.
        let port = self.port;
        let port_closed = || TcpStream::connect(("127.0.0.1", port)).is_err();
        wait_for(port_closed, "the killed server's port to close");
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        text.get(start..).unwrap_or("").to_string()
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: as in kill(); a group that is gone already makes this a no-op.
        unsafe {
            libc::killpg(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn journal_start_time(run_dir: &Path) -> i64 {
    let journal = std::fs::read_to_string(run_dir.join("mlflow/journal.jsonl")).expect("journal");
    let first: serde_json::Value =
        serde_json::from_str(journal.lines().next().expect("a first line")).expect("json");
    first["start_time_ms"].as_i64().expect("start_time_ms")
}

/// Every warning the crate logs, from any thread, as text.
fn capture_warnings() -> Arc<Mutex<String>> {
    #[derive(Clone)]
    struct Buffer(Arc<Mutex<String>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut text) = self.0.lock() {
                text.push_str(&String::from_utf8_lossy(bytes));
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let text = Arc::new(Mutex::new(String::new()));
    let buffer = Buffer(Arc::clone(&text));
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || buffer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
    text
}
