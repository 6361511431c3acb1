//! One CPU instance with two intra-op threads is split while requests wait: two
//! batches run at once on one thread each. Concurrent requests get the same answers
//! as the same images sent one at a time (which run on both threads), the halves did
//! run (`cardet_inference_half_width_exec_count`), and a model configured with
//! `cardet_split_when_busy: "false"` never splits.

mod common;

/// YOLOv8n at 160x160: small enough that a few dozen runs take seconds.
const SIZE: usize = 160;
const IMAGES: usize = 6;

/// Image `seed`'s FP32 bytes.
fn image(seed: usize) -> Vec<u8> {
    (0..3 * SIZE * SIZE)
        .flat_map(|i| ((((i + 1) * (seed + 3) * 7919) % 1000) as f32 / 1000.0).to_le_bytes())
        .collect()
}

/// Sends image `seed` over binary REST and returns `output0`'s values.
async fn infer(client: reqwest::Client, url: String, seed: usize) -> Vec<f32> {
    let (shape, values) = common::infer_binary_image(&client, &url, SIZE, &image(seed)).await;
    assert_eq!(shape[0], 1, "{shape}");
    values
}

/// `model`'s half-width execution count from the Prometheus endpoint.
async fn half_width_executions(client: &reqwest::Client, metrics: &str, model: &str) -> u64 {
    let text = client
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let prefix =
        format!("cardet_inference_half_width_exec_count{{model=\"{model}\",version=\"1\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_run_on_both_halves_with_the_answers_of_lone_ones() {
    let repository = tempfile::tempdir().expect("tempdir");
    // No merging: each request is its own execution, so concurrency must split.
    common::yolo_model(repository.path(), "split", SIZE, "");
    common::yolo_model(
        repository.path(),
        "whole",
        SIZE,
        "parameters { key: \"cardet_split_when_busy\" value: { string_value: \"false\" } }\n",
    );
    let server = common::start(repository.path(), cardet_serve::ControlMode::None, 16 << 20).await;
    let metrics = server.metrics.expect("metrics port").to_string();
    let client = reqwest::Client::new();
    let names = thread_names();
    assert!(
        names.iter().any(|name| name.starts_with("ort-split-1")),
        "ONNX Runtime's pool threads are named after the model they run: {names:?}"
    );

    for model in ["split", "whole"] {
        let url = format!("http://{}/v2/models/{model}/infer", server.http);
        let mut alone = Vec::new();
        for seed in 0..IMAGES {
            alone.push(infer(client.clone(), url.clone(), seed).await);
        }
        assert_eq!(
            half_width_executions(&client, &metrics, model).await,
            0,
            "{model}: requests one at a time run on all threads"
        );
        for _round in 0..3 {
            let together: Vec<_> = (0..IMAGES)
                .map(|seed| tokio::spawn(infer(client.clone(), url.clone(), seed)))
                .collect();
            for (seed, task) in together.into_iter().enumerate() {
                let values = task.await.expect("request task");
                assert_eq!(values.len(), alone[seed].len());
                let worst = values
                    .iter()
                    .zip(&alone[seed])
                    .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                    .fold(0.0f32, f32::max);
                assert!(worst <= 1e-5, "{model}, image {seed}: off by {worst}");
            }
        }
        let halves = half_width_executions(&client, &metrics, model).await;
        if model == "split" {
            assert!(
                halves >= 2,
                "{model}: concurrent requests ran on the halves"
            );
        } else {
            assert_eq!(halves, 0, "{model}: cardet_split_when_busy is false");
        }
    }
    server.shutdown().await.expect("shutdown");
}
