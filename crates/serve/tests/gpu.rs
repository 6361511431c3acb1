//! Instances on a GPU (`instance_group { kind: KIND_GPU }`, or `--gpu`), and the
//! batch padding GPU models get by default.
//!
//! Without CUDA (the CPU build of ONNX Runtime, which the suite uses), a model that
//! asks for a GPU must fail to load with an error that names the cause and the way
//! out, never run quietly on the CPU. With CUDA (the onnxruntime-gpu library on a
//! GPU machine, `cargo test -p cardet-serve --test gpu -- --ignored`), the GPU's
//! answer must equal a CPU session's within the precision CUDA's kernels keep.

mod common;

use std::path::Path;

use ort::ep::ExecutionProvider;
use serde_json::Value;

const IMAGE_VALUES: usize = 3 * 640 * 640;

/// `yolov8n` at 640 with its one instance on CUDA device 0.
fn gpu_repository(root: &Path) {
    common::yolo_model(
        root,
        "yolov8n",
        640,
        "dynamic_batching { max_queue_delay_microseconds: 1000 }\n\
         instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]\n",
    );
    // One image padded to a batch of 8: merged into the instance's page-locked buffer.
    common::yolo_model(
        root,
        "yolov8n_padded",
        640,
        "dynamic_batching { max_queue_delay_microseconds: 0 }\n\
         instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]\n\
         parameters { key: \"cardet_pad_batch\" value: { string_value: \"max\" } }\n",
    );
}

fn image() -> Vec<f32> {
    (0..IMAGE_VALUES)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect()
}

/// Whether the loaded ONNX Runtime library has the CUDA provider at all.
fn library_has_cuda() -> bool {
    let _runtime = common::runtime();
    ort::ep::CUDA::is_available().unwrap_or(false)
}

/// Serves every model of the repository, with room for a batch of images.
async fn serve_all(repository: &Path) -> cardet_serve::Server {
    start(common::config(
        repository,
        cardet_serve::ControlMode::None,
        64 << 20,
    ))
    .await
}

async fn start(config: cardet_serve::Config) -> cardet_serve::Server {
    cardet_serve::start(common::runtime(), config)
        .await
        .expect("server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_gpu_without_cuda_fails_to_load_and_says_how_to_get_it() {
    if library_has_cuda() {
        eprintln!("skipped: this ONNX Runtime has the CUDA provider (the ignored test covers it)");
        return;
    }
    let repository = tempfile::tempdir().expect("tempdir");
    gpu_repository(repository.path());
    let mut config = common::config(
        repository.path(),
        cardet_serve::ControlMode::Explicit,
        16 << 20,
    );
    config.load_models.clear();
    let server = start(config).await;
    let base = format!("http://{}", server.http);
    let client = reqwest::Client::new();

    let response = client
        .post(format!("{base}/v2/repository/models/yolov8n/load"))
        .send()
        .await
        .expect("load answers");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    let message = body["error"].as_str().unwrap_or_default();
    assert_eq!(status, 400, "{body}");
    eprintln!("{message}");
    for needle in [
        "yolov8n",
        "CUDA device 0",
        "KIND_GPU",
        "cargo xtask setup --gpu",
    ] {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    let ready = client
        .get(format!("{base}/v2/models/yolov8n/ready"))
        .send()
        .await
        .expect("ready answers");
    assert!(
        !ready.status().is_success(),
        "a model that failed to load is not ready: {}",
        ready.status()
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a CUDA GPU and onnxruntime-gpu's library in ORT_DYLIB_PATH"]
async fn gpu_instances_answer_like_a_cpu_session() {
    assert!(
        library_has_cuda(),
        "ORT_DYLIB_PATH must be onnxruntime-gpu's library"
    );
    let repository = tempfile::tempdir().expect("tempdir");
    gpu_repository(repository.path());
    let server = serve_all(repository.path()).await;
    let base = format!("http://{}", server.http);
    let client = reqwest::Client::new();

    let config: Value = client
        .get(format!("{base}/v2/models/yolov8n/config"))
        .send()
        .await
        .expect("config answers")
        .json()
        .await
        .expect("config is JSON");
    assert_eq!(config["instance_group"][0]["kind"], "KIND_GPU", "{config}");

    let expected = cpu_session_output();
    // The padded model twice: the second batch reuses the first one's pinned buffer.
    for (model, round) in [("yolov8n", 1), ("yolov8n_padded", 1), ("yolov8n_padded", 2)] {
        let served = infer_one_image(&client, &base, model).await;
        // CUDA's convolutions (TF32 where ONNX Runtime allows it) round differently
        // from the CPU's: boxes are pixels up to 640, scores 0..1.
        let worst = worst_difference(&served, &expected);
        eprintln!(
            "{model} ({round}): largest difference from the CPU session, relative to max(1, |value|): {worst:e}"
        );
        assert!(
            worst < 1e-2,
            "{model}: GPU output differs from the CPU session's by {worst}"
        );
    }
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_padded_batch_answers_only_its_own_rows() {
    // The padding GPU models get by default, asked for on the CPU: one image runs as
    // a batch of 8 and must come back as exactly its own row.
    let repository = tempfile::tempdir().expect("tempdir");
    common::yolo_model(
        repository.path(),
        "yolov8n",
        640,
        "dynamic_batching { max_queue_delay_microseconds: 0 }\n\
         parameters { key: \"cardet_pad_batch\" value: { string_value: \"max\" } }\n",
    );
    let server = serve_all(repository.path()).await;
    let base = format!("http://{}", server.http);
    let served = infer_one_image(&reqwest::Client::new(), &base, "yolov8n").await;
    let worst = worst_difference(&served, &cpu_session_output());
    assert!(
        worst < 1e-4,
        "a padded batch's row differs from a batch-1 session's by {worst}"
    );
    let stats: Value = reqwest::get(format!("{base}/v2/models/yolov8n/stats"))
        .await
        .expect("stats answer")
        .json()
        .await
        .expect("stats are JSON");
    let batches = &stats["model_stats"][0]["batch_stats"];
    assert_eq!(
        batches[0]["batch_size"], 1,
        "statistics count the request's rows, not the padding: {stats}"
    );
    server.shutdown().await.expect("shutdown");
}

/// `output0` of one image sent over REST with binary tensor data.
async fn infer_one_image(client: &reqwest::Client, base: &str, model: &str) -> Vec<f32> {
    let image: Vec<u8> = image().iter().flat_map(|v| v.to_le_bytes()).collect();
    let url = format!("{base}/v2/models/{model}/infer");
    let (shape, values) = common::infer_binary_image(client, &url, 640, &image).await;
    assert_eq!(shape, serde_json::json!([1, 84, 8400]));
    values
}

/// `output0` of the same image from a plain ONNX Runtime session on the CPU.
fn cpu_session_output() -> Vec<f32> {
    let runtime = common::runtime();
    let mut session = ort::session::Session::builder(&runtime.environment)
        .expect("builder")
        .commit_from_file(cardet_testkit::ultralytics_yolov8n_onnx())
        .expect("CPU session");
    let tensor = ort::value::Tensor::from_array(([1usize, 3, 640, 640], image())).expect("tensor");
    let outputs = session
        .run(ort::inputs!["images" => tensor])
        .expect("CPU run");
    let (_, expected) = outputs["output0"]
        .try_extract_tensor::<f32>()
        .expect("output0");
    expected.to_vec()
}

/// The largest difference, relative to max(1, |expected|).
fn worst_difference(served: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(served.len(), expected.len());
    served
        .iter()
        .zip(expected)
        .map(|(got, want)| (got - want).abs() / want.abs().max(1.0))
        .fold(0.0_f32, f32::max)
}
