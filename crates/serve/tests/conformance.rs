//! Conformance with the reference client: tritonclient (http and grpc) drives every
//! call against `serve` serving a YOLOv8n export, and compares outputs with a direct
//! ONNX Runtime run within 1e-5 (see `conformance.py`), tensors passed as JSON, as
//! binary data, and through system shared memory.

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_http_and_grpc_agree_with_onnxruntime() {
    let repository = tempfile::tempdir().expect("tempdir");
    common::yolo_repository(repository.path());
    common::tiny_repository(repository.path());
    let mut config = common::config(
        repository.path(),
        cardet_serve::ControlMode::Explicit,
        256 << 20,
    );
    config.allow_shared_memory = true;
    let server = common::start_with(config).await;
    let script = cardet_testkit::manifest_dir().join("tests/conformance.py");
    let http = format!("127.0.0.1:{}", server.http.port());
    let grpc = format!("127.0.0.1:{}", server.grpc.port());
    let repository_path = repository.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(common::python())
            .arg(script)
            .arg(http)
            .arg(grpc)
            .arg(repository_path)
            .env("OMP_NUM_THREADS", "1")
            .output()
            .expect("running conformance.py")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "conformance failed:\n{stdout}\n{stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("summary line");
    assert!(summary["checks"].as_u64().unwrap_or(0) >= 105, "{summary}");
    println!("{stdout}");
    server.shutdown().await.expect("shutdown");
}
