//! A model whose queue is full refuses more work instead of growing: a flood of
//! concurrent requests against a YOLOv8n with `default_queue_policy { max_queue_size: 2 }`
//! gets 503 over REST and UNAVAILABLE over gRPC with a message naming the model and
//! its queue, every request gets an answer, and the server answers normally after.

mod common;

use std::path::Path;

use cardet_serve::protocol::grpc::pb::inference as v2;
use serde_json::Value;
use v2::grpc_inference_service_client::GrpcInferenceServiceClient;

/// Requests sent at once; far more than the queue holds while one runs.
const FLOOD: usize = 24;
const IMAGE_VALUES: usize = 3 * 640 * 640;
/// `output0` of YOLOv8n at 640 for one image: 84 rows of 8400 anchors.
const OUTPUT_BYTES: usize = 84 * 8400 * 4;

/// `yolov8n` at 640, batching to 8, at most 2 requests waiting or running.
fn queue_limited_repository(root: &Path) {
    common::yolo_model(
        root,
        "yolov8n",
        640,
        "dynamic_batching {\n  max_queue_delay_microseconds: 0\n  default_queue_policy { max_queue_size: 2 }\n}\n",
    );
}

fn image_bytes() -> Vec<u8> {
    (0..IMAGE_VALUES)
        .flat_map(|i| (((i * 7919) % 1000) as f32 / 1000.0).to_le_bytes())
        .collect()
}

/// A binary-data REST request for one image, and its JSON header's length.
fn rest_body() -> (bytes::Bytes, usize) {
    let header = format!(
        r#"{{"inputs":[{{"name":"images","shape":[1,3,640,640],"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"outputs":[{{"name":"output0","parameters":{{"binary_data":true}}}}]}}"#,
        IMAGE_VALUES * 4
    );
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(&image_bytes());
    (body.into(), header.len())
}

/// Checks a refusal's message: it names the model and says its queue is full.
fn assert_names_model_and_queue(message: &str) {
    assert!(
        message.contains("model 'yolov8n'") && message.contains("queue is full"),
        "the refusal should name the model and its queue: {message:?}"
    );
}

/// One REST request; `true` when it ran, `false` when it was refused for a full queue.
async fn rest_infer(
    client: reqwest::Client,
    url: String,
    body: bytes::Bytes,
    header: usize,
) -> bool {
    let response = client
        .post(&url)
        .header("Inference-Header-Content-Length", header.to_string())
        .body(body)
        .send()
        .await
        .expect("every request gets an answer");
    let status = response.status().as_u16();
    let json_length: Option<usize> = response
        .headers()
        .get("inference-header-content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let bytes = response.bytes().await.expect("body");
    match status {
        200 => {
            let json_length = json_length.expect("binary output has a header length");
            let header: Value = serde_json::from_slice(&bytes[..json_length]).expect("json");
            assert_eq!(
                header["outputs"][0]["shape"],
                serde_json::json!([1, 84, 8400])
            );
            assert_eq!(bytes.len() - json_length, OUTPUT_BYTES);
            true
        }
        503 => {
            let error: Value = serde_json::from_slice(&bytes).expect("error body is JSON");
            assert_names_model_and_queue(error["error"].as_str().expect("error field"));
            false
        }
        other => panic!(
            "status {other} under a flood: {}",
            String::from_utf8_lossy(&bytes)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_over_rest_and_the_server_recovers() {
    let repository = tempfile::tempdir().expect("tempdir");
    queue_limited_repository(repository.path());
    let server = common::start(repository.path(), cardet_serve::ControlMode::None, 16 << 20).await;
    let base = format!("http://{}", server.http);
    let url = format!("{base}/v2/models/yolov8n/infer");
    let (body, header) = rest_body();
    let client = reqwest::Client::new();

    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            tokio::spawn(rest_infer(
                client.clone(),
                url.clone(),
                body.clone(),
                header,
            ))
        })
        .collect();
    let mut ran = 0;
    for request in flood {
        if request.await.expect("request task") {
            ran += 1;
        }
    }
    let refused = FLOOD - ran;
    assert!(ran >= 1, "the queue holds 2, so some requests run");
    assert!(
        refused >= 1,
        "{FLOOD} requests at once against a queue of 2: none refused"
    );

    let ready = client
        .get(format!("{base}/v2/health/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status().as_u16(), 200);
    assert!(
        rest_infer(client.clone(), url.clone(), body.clone(), header).await,
        "a request after the flood runs"
    );

    // The statistics count what ran and what was refused; none went missing.
    let stats: Value = client
        .get(format!("{base}/v2/models/yolov8n/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json");
    let inference = &stats["model_stats"][0]["inference_stats"];
    assert_eq!(inference["success"]["count"], (ran + 1) as u64, "{stats}");
    assert_eq!(inference["fail"]["count"], refused as u64, "{stats}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_unavailable_over_grpc_and_the_server_recovers() {
    let repository = tempfile::tempdir().expect("tempdir");
    queue_limited_repository(repository.path());
    let server = common::start(repository.path(), cardet_serve::ControlMode::None, 16 << 20).await;
    let client = GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .expect("connect")
        .max_encoding_message_size(16 << 20)
        .max_decoding_message_size(16 << 20);
    let image = bytes::Bytes::from(image_bytes());
    let request = move || v2::ModelInferRequest {
        model_name: "yolov8n".into(),
        inputs: vec![v2::model_infer_request::InferInputTensor {
            name: "images".into(),
            datatype: "FP32".into(),
            shape: vec![1, 3, 640, 640],
            parameters: Default::default(),
            contents: None,
        }],
        raw_input_contents: vec![image.clone()],
        ..Default::default()
    };
    // `true` when it ran, `false` when it was refused for a full queue.
    let infer = |mut client: GrpcInferenceServiceClient<tonic::transport::Channel>,
                 request: v2::ModelInferRequest| async move {
        match client.model_infer(request).await {
            Ok(response) => {
                let response = response.into_inner();
                assert_eq!(response.outputs[0].shape, vec![1, 84, 8400]);
                assert_eq!(response.raw_output_contents[0].len(), OUTPUT_BYTES);
                true
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                assert_names_model_and_queue(status.message());
                false
            }
            Err(status) => panic!("{status:?} under a flood"),
        }
    };

    let flood: Vec<_> = (0..FLOOD)
        .map(|_| tokio::spawn(infer(client.clone(), request())))
        .collect();
    let mut ran = 0;
    for call in flood {
        if call.await.expect("call task") {
            ran += 1;
        }
    }
    assert!(ran >= 1, "the queue holds 2, so some requests run");
    assert!(
        FLOOD - ran >= 1,
        "{FLOOD} calls at once against a queue of 2: none refused"
    );
    let mut health = client.clone();
    let ready = health
        .server_ready(v2::ServerReadyRequest {})
        .await
        .expect("server ready");
    assert!(ready.into_inner().ready);
    assert!(
        infer(client.clone(), request()).await,
        "a call after the flood runs"
    );
    server.shutdown().await.expect("shutdown");
}
