//! The client against a server that refuses: an unknown model, a batch larger than
//! the model allows, shared memory it does not allow, and no server at all. Each ends
//! the run with a non-zero exit and one line carrying the server's own message; a
//! shared-memory run that fails so leaves no region registered on the server. And
//! against no Kafka broker at all: one line naming the address.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

/// A `car` model at 160x160 that takes one image per request.
fn repository(root: &Path) {
    let onnx = cardet_testkit::cardet_home().join("fixtures/serve/yolov8n-dynamic.onnx");
    assert!(
        onnx.exists(),
        "{} is made by serve's and the end-to-end tests",
        onnx.display()
    );
    let folder = root.join("car");
    std::fs::create_dir_all(folder.join("1")).expect("folder");
    std::fs::write(
        folder.join("config.pbtxt"),
        "name: \"car\"\nbackend: \"onnxruntime\"\nmax_batch_size: 1\n\
         input [ { name: \"images\" data_type: TYPE_FP32 dims: [ 3, 160, 160 ] } ]\n\
         output [ { name: \"output0\" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]\n",
    )
    .expect("config");
    std::fs::copy(onnx, folder.join("1/model.onnx")).expect("model");
}

fn client(args: &[&str], image: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_triton_client"))
        .args(args)
        .args(["--no-progress", "--jsonl", "/dev/null"])
        .arg(image)
        .output()
        .expect("running triton_client");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).trim().to_string(),
    )
}

#[test]
fn server_errors_reach_the_user_with_the_servers_message() {
    let work = tempfile::tempdir().expect("tempdir");
    repository(&work.path().join("repo"));
    let image = work.path().join("street.png");
    cardet_detect::image_io::save(
        &cardet_detect::synth::render_scene(3, 0, (200, 120)).image,
        &image,
    )
    .expect("image");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // One ONNX Runtime environment per process, for both servers.
    let onnx = Arc::new(cardet_onnx::load().expect("onnxruntime"));
    let server = common::serve_local(&runtime, &onnx, &work.path().join("repo"), false);
    let http = format!("http://{}", server.http);
    let grpc = format!("http://{}", server.grpc);

    // The model works: the failures below are the server's answers, not ours.
    let (ok, stderr) = client(&["--url", &http, "--model", "car"], &image);
    assert!(ok, "{stderr}");

    for (url, protocol) in [(&http, "http"), (&grpc, "grpc")] {
        let (ok, stderr) = client(
            &["--url", url, "--protocol", protocol, "--model", "nope"],
            &image,
        );
        assert!(!ok, "an unknown model succeeded over {protocol}");
        assert!(
            stderr.starts_with(&format!("triton_client: model nope is not ready at {url}:"))
                || stderr.starts_with(&format!(
                    "triton_client: the server at {url} refused the readiness check:"
                )),
            "{protocol}: {stderr}"
        );
        assert!(stderr.contains("nope"), "{protocol}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }

    // Two images in one request to a model that takes one: the server's message.
    let (ok, stderr) = client(
        &["--url", &http, "--model", "car", "--batch", "2"],
        &work.path().join("*.png"),
    );
    assert!(
        ok,
        "one image is one request whatever --batch says: {stderr}"
    );
    let second = work.path().join("second.png");
    std::fs::copy(&image, &second).expect("second image");
    for (url, protocol) in [(&http, "http"), (&grpc, "grpc")] {
        let (ok, stderr) = client(
            &[
                "--url",
                url,
                "--protocol",
                protocol,
                "--model",
                "car",
                "--batch",
                "2",
            ],
            work.path(),
        );
        assert!(
            !ok,
            "a batch of 2 for max_batch_size 1 succeeded over {protocol}"
        );
        assert!(
            stderr.starts_with(&format!(
                "triton_client: the server at {url} refused inference on model car:"
            )),
            "{protocol}: {stderr}"
        );
        assert!(stderr.contains("batch"), "{protocol}: {stderr}");
    }

    // Shared memory against a server that does not allow it, over either protocol:
    // its message, which says how to allow it; and with JSON tensors, which cannot
    // name a region.
    for (url, protocol) in [(&http, "http"), (&grpc, "grpc")] {
        let (ok, stderr) = client(
            &[
                "--url",
                url,
                "--protocol",
                protocol,
                "--model",
                "car",
                "--shared-memory",
            ],
            &image,
        );
        assert!(
            !ok,
            "shared memory succeeded over {protocol} against a server that refuses it"
        );
        assert!(
            stderr.starts_with(&format!(
                "triton_client: the server at {url} refused registering shared-memory region"
            )) && stderr.contains("--allow-shared-memory"),
            "{protocol}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{protocol}: {stderr}");
    }
    let (ok, stderr) = client(
        &[
            "--url",
            &http,
            "--model",
            "car",
            "--json",
            "--shared-memory",
        ],
        &image,
    );
    assert!(!ok);
    assert!(
        stderr.contains("--shared-memory needs binary tensors"),
        "{stderr}"
    );

    // A shared-memory run that fails midway (a request of two images to a model that
    // takes one, beside one of a single image) leaves none of its regions registered.
    // Over either protocol: regions are registered over the one the client speaks.
    let shm_server = common::serve_local(&runtime, &onnx, &work.path().join("repo"), true);
    let shm_http = format!("http://{}", shm_server.http);
    let shm_grpc = format!("http://{}", shm_server.grpc);
    let three = work.path().join("three");
    std::fs::create_dir_all(&three).expect("folder");
    for name in ["a.png", "b.png", "c.png"] {
        std::fs::copy(&image, three.join(name)).expect("image");
    }
    for (url, protocol) in [(&shm_http, "http"), (&shm_grpc, "grpc")] {
        let (ok, stderr) = client(
            &[
                "--url",
                url,
                "--protocol",
                protocol,
                "--model",
                "car",
                "--shared-memory",
                "--batch",
                "2",
            ],
            &three,
        );
        assert!(
            !ok,
            "a batch of 2 for max_batch_size 1 succeeded over {protocol}: {stderr}"
        );
        assert!(
            stderr.starts_with(&format!(
                "triton_client: the server at {url} refused inference on model car:"
            )),
            "{protocol}: {stderr}"
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "{protocol}: the error alone, no warning about regions left: {stderr}"
        );
        let regions: serde_json::Value = runtime.block_on(async {
            reqwest::get(format!("{shm_http}/v2/systemsharedmemory/status"))
                .await
                .expect("status")
                .error_for_status()
                .expect("status succeeds")
                .json()
                .await
                .expect("status JSON")
        });
        assert_eq!(
            regions,
            serde_json::json!([]),
            "{protocol}: regions left registered after a failed run"
        );
    }
    drop(shm_server);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port");
    let dead = format!("http://127.0.0.1:{port}");
    let (ok, stderr) = client(&["--url", &dead, "--model", "car"], &image);
    assert!(!ok);
    assert!(
        stderr.starts_with(&format!(
            "triton_client: cannot reach the inference server at {dead}:"
        )),
        "{stderr}"
    );
    drop(server);
    drop(runtime);
}

#[test]
fn an_unreachable_broker_is_one_line_naming_its_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port");
    let bootstrap = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_triton_client"))
        .args(["--model", "car", "--kafka-topic", "images", "--no-progress"])
        .args(["--bootstrap-servers", &bootstrap, "--connect-timeout", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running triton_client");
    // A guard against a hang, not a timing: the connect timeout is 2 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still waiting for {bootstrap} after a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("triton_client ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "triton_client: cannot reach Kafka at {bootstrap} within 2s:"
        )),
        "{stderr}"
    );
}
