//! The `serve` binary: Triton's flags, `--help`, a model repository in the stack's
//! S3 server followed in poll mode, and a graceful stop on SIGTERM.

#[path = "../../../crates/serve/tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running `serve` that is killed if the test fails before stopping it.
struct Serve {
    child: Child,
    http: String,
}

impl Serve {
    fn start(args: &[&str], envs: &[(&str, String)]) -> Serve {
        let (http, grpc, metrics) = (
            cardet_testkit::free_port(),
            cardet_testkit::free_port(),
            cardet_testkit::free_port(),
        );
        let child = Command::new(env!("CARGO_BIN_EXE_serve"))
            .args(["--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1"])
            .args([
                "--http-port",
                &http.to_string(),
                "--grpc-port",
                &grpc.to_string(),
            ])
            .args([
                "--metrics-port",
                &metrics.to_string(),
                "--intra-op-threads",
                "2",
            ])
            .args(args)
            .envs(envs.iter().map(|(name, value)| (*name, value.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting serve");
        let serve = Serve {
            child,
            http: format!("http://127.0.0.1:{http}"),
        };
        let started = Instant::now();
        let client = reqwest::blocking::Client::new();
        while !client
            .get(format!("{}/v2/health/ready", serve.http))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "serve did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        serve
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let status = self.child.wait().expect("wait");
        std::mem::forget(self);
        status
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The manifest the uploader writes last: `model.onnx` with its size and SHA-256.
fn version_manifest(version: u64, model: &[u8]) -> Vec<u8> {
    cardet_model_store::Manifest {
        format: cardet_model_store::MANIFEST_FORMAT,
        model: "tiny".into(),
        version,
        created_unix_s: 0,
        files: vec![cardet_model_store::ManifestFile {
            path: "model.onnx".into(),
            size: model.len() as u64,
            sha256: cardet_model_store::sha256_hex(model),
        }],
    }
    .to_json()
}

fn tiny_request(x: [f32; 4]) -> Value {
    json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 4], "data": x }] })
}

#[test]
fn help_names_the_triton_flags_and_message_limits() {
    let output = Command::new(env!("CARGO_BIN_EXE_serve"))
        .arg("--help")
        .output()
        .expect("serve --help");
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--model-repository",
        "--http-port",
        "--grpc-port",
        "--metrics-port",
        "--http-address",
        "--model-control-mode",
        "--repository-poll-secs",
        "--load-model",
        "--max-message-bytes",
        "4.9 MB",
        "Examples:",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn sigterm_finishes_the_request_in_flight() {
    let repository = tempfile::tempdir().expect("tempdir");
    common::yolo_repository(repository.path());
    let serve = Serve::start(
        &[
            "--model-repository",
            &repository.path().display().to_string(),
        ],
        &[],
    );
    let url = format!("{}/v2/models/yolov8n/infer", serve.http);
    let header = json!({
        "inputs": [{ "name": "images", "datatype": "FP32", "shape": [8, 3, 640, 640],
                     "parameters": { "binary_data_size": 8 * 3 * 640 * 640 * 4 } }],
        "outputs": [{ "name": "output0", "parameters": { "binary_data": true } }],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.resize(header.len() + 8 * 3 * 640 * 640 * 4, 0);
    let in_flight = std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client")
            .post(url)
            .header("Inference-Header-Content-Length", header.len().to_string())
            .body(body)
            .send()
            .map(|response| response.status().as_u16())
    });
    // A batch of 8 at 640 takes well over a second on two cores: stop in the middle.
    std::thread::sleep(Duration::from_millis(700));
    let status = serve.stop();
    let answer = in_flight.join().expect("client thread");
    assert_eq!(answer.ok(), Some(200), "the request in flight is answered");
    assert!(status.success(), "serve exits 0 after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_s3_version_is_picked_up_while_requests_run() {
    let stack = cardet_testkit::Stack::from_env();
    assert!(
        !stack.s3_access_key.is_empty(),
        "no S3 credentials: run `cargo xtask stack up s3` (it writes them into .env)"
    );
    let credentials = aws_sdk_s3::config::Credentials::new(
        &stack.s3_access_key,
        &stack.s3_secret_key,
        None,
        None,
        "stack",
    );
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&stack.s3_endpoint)
            .region(aws_sdk_s3::config::Region::new(stack.s3_region.clone()))
            .credentials_provider(credentials)
            .force_path_style(true)
            .build(),
    );
    let bucket = cardet_testkit::unique_name("serve-s3").to_lowercase();
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let models = tempfile::tempdir().expect("tempdir");
    let put = |key: String, bytes: Vec<u8>| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            s3.put_object()
                .bucket(&bucket)
                .key(&key)
                .body(bytes.into())
                .send()
                .await
                .unwrap_or_else(|error| panic!("put {key}: {error:?}"));
        }
    };
    for factor in [2.0f32, 3.0] {
        common::write_tiny_model(&models.path().join(format!("{factor}.onnx")), factor);
    }
    let model_bytes =
        |factor: f32| std::fs::read(models.path().join(format!("{factor}.onnx"))).expect("model");
    put(
        "repo/tiny/config.pbtxt".into(),
        common::TINY_CONFIG.as_bytes().to_vec(),
    )
    .await;
    put("repo/tiny/1/model.onnx".into(), model_bytes(2.0)).await;
    put(
        "repo/tiny/1/manifest.json".into(),
        version_manifest(1, &model_bytes(2.0)),
    )
    .await;

    let repository = format!("s3://{bucket}/repo");
    let envs = [
        ("AWS_ENDPOINT_URL", stack.s3_endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", stack.s3_access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", stack.s3_secret_key.clone()),
        ("AWS_REGION", stack.s3_region.clone()),
    ];
    let cache = tempfile::tempdir().expect("cache");
    let serve = tokio::task::spawn_blocking({
        let cache = cache.path().display().to_string();
        move || {
            Serve::start(
                &[
                    "--model-repository",
                    &repository,
                    "--model-control-mode",
                    "poll",
                    "--repository-poll-secs",
                    "1",
                    "--cache-dir",
                    &cache,
                ],
                &envs,
            )
        }
    })
    .await
    .expect("start");

    // A client sends requests back to back the whole time, counting versions and failures.
    let url = format!("{}/v2/models/tiny/infer", serve.http);
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, by_version) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
    );
    let client_task = {
        let (stop, failures, by_version, url) = (
            stop.clone(),
            failures.clone(),
            by_version.clone(),
            url.clone(),
        );
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let answer = client
                    .post(&url)
                    .json(&tiny_request([1.0, 2.0, 3.0, 4.0]))
                    .send()
                    .await;
                let Ok(response) = answer else {
                    failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if !response.status().is_success() {
                    failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let json: Value = response.json().await.unwrap_or_default();
                let y = json["outputs"].as_array().and_then(|outputs| {
                    outputs
                        .iter()
                        .find(|o| o["name"] == "y")
                        .map(|o| o["data"][0].as_f64())
                });
                match (json["model_version"].as_str(), y.flatten()) {
                    (Some("1"), Some(2.0)) => by_version[0].fetch_add(1, Ordering::Relaxed),
                    (Some("2"), Some(3.0)) => by_version[1].fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Version 2's model first, without its manifest: it must not be loaded yet.
    put("repo/tiny/2/model.onnx".into(), model_bytes(3.0)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        by_version[1].load(Ordering::Relaxed),
        0,
        "a version without its manifest was served"
    );
    put(
        "repo/tiny/2/manifest.json".into(),
        version_manifest(2, &model_bytes(3.0)),
    )
    .await;
    let started = Instant::now();
    while by_version[1].load(Ordering::Relaxed) < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "version 2 was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    client_task.await.expect("client");
    let (v1, v2) = (
        by_version[0].load(Ordering::Relaxed),
        by_version[1].load(Ordering::Relaxed),
    );
    assert!(
        v1 > 0 && v2 > 0,
        "versions 1 and 2 answered {v1} and {v2} requests"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed ({v1} on 1, {v2} on 2)"
    );
    let status = tokio::task::spawn_blocking(move || serve.stop())
        .await
        .expect("stop");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_s3_object_is_refused_with_a_checksum_error() {
    let stack = cardet_testkit::Stack::from_env();
    assert!(
        !stack.s3_access_key.is_empty(),
        "no S3 credentials: run `cargo xtask stack up s3` (it writes them into .env)"
    );
    let settings = cardet_model_store::S3Settings {
        endpoint: Some(stack.s3_endpoint.clone()),
        region: stack.s3_region.clone(),
        access_key: Some(stack.s3_access_key.clone()),
        secret_key: Some(stack.s3_secret_key.clone()),
    };
    let bucket = cardet_testkit::unique_name("serve-corrupt").to_lowercase();
    let store = cardet_model_store::ModelStore::connect(&settings, &bucket, "repo").await;
    let models = tempfile::tempdir().expect("tempdir");
    common::tiny_repository(models.path());
    store
        .upload(
            &models.path().join("tiny"),
            "tiny",
            &cardet_model_store::UploadOptions::default(),
            &|_| {},
        )
        .await
        .expect("upload");
    // One byte flipped at rest, same size: only the manifest's SHA-256 can tell.
    let mut corrupted = std::fs::read(models.path().join("tiny/1/model.onnx")).expect("model");
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0x01;
    settings
        .client()
        .await
        .put_object()
        .bucket(&bucket)
        .key("repo/tiny/1/model.onnx")
        .body(corrupted.into())
        .send()
        .await
        .expect("overwriting the model");

    let envs = [
        ("AWS_ENDPOINT_URL", stack.s3_endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", stack.s3_access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", stack.s3_secret_key.clone()),
        ("AWS_REGION", stack.s3_region.clone()),
    ];
    let cache = tempfile::tempdir().expect("cache");
    let repository = format!("s3://{bucket}/repo");
    let cache_text = cache.path().display().to_string();
    let serve = tokio::task::spawn_blocking(move || {
        Serve::start(
            &[
                "--model-repository",
                &repository,
                "--model-control-mode",
                "explicit",
                "--cache-dir",
                &cache_text,
            ],
            &envs,
        )
    })
    .await
    .expect("start");
    let answer = reqwest::Client::new()
        .post(format!("{}/v2/repository/models/tiny/load", serve.http))
        .send()
        .await
        .expect("load request");
    assert!(!answer.status().is_success(), "a corrupted model loaded");
    let body: Value = answer.json().await.expect("a JSON error");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "checksum mismatch for s3://{bucket}/repo/tiny/1/model.onnx"
        )),
        "{body}"
    );
    assert!(
        !cache.path().join("tiny/1/manifest.json").exists(),
        "the cache holds the corrupted version as complete"
    );
}
