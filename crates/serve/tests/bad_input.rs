//! Bad input over REST and gRPC: each case answers 404 / NOT_FOUND or
//! 400 / INVALID_ARGUMENT with a message naming the field, never a 500 or a crash,
//! and the server keeps answering good requests afterwards.

mod common;

use cardet_serve::protocol::grpc::pb::inference as v2;
use serde_json::{Value, json};
use v2::grpc_inference_service_client::GrpcInferenceServiceClient;

const LIMIT: usize = 1 << 20;

/// Path, body, binary header length, and the expected status and message part.
type RestCase = (&'static str, Vec<u8>, Option<usize>, (u16, &'static str));

fn body(name: &str, datatype: &str, shape: &[i64], data: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "inputs": [{ "name": name, "datatype": datatype, "shape": shape, "data": data }]
    }))
    .expect("json")
}

/// One REST case: path, body, optional binary header length, expected status and message part.
async fn check_rest(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: Vec<u8>,
    header_length: Option<usize>,
    expected: (u16, &str),
) {
    let oversized = body.len() > LIMIT;
    let mut request = client.post(format!("{base}{path}")).body(body);
    if let Some(length) = header_length {
        request = request.header("Inference-Header-Content-Length", length.to_string());
    }
    let response = match request.send().await {
        Ok(response) => response,
        // Over the limit the server answers before reading the whole body and closes
        // the connection, so the client may fail writing (broken pipe) before it reads
        // that answer. The server staying up is checked by the requests that follow.
        Err(error) if oversized && error.is_request() => return,
        Err(error) => panic!("{path}: {error}"),
    };
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    assert_eq!(status, expected.0, "{path}: {text}");
    if status != 200 {
        let json: Value = serde_json::from_str(&text).expect("error body is JSON");
        let message = json["error"].as_str().expect("error field");
        assert!(
            message.contains(expected.1),
            "{path}: {message:?} lacks {:?}",
            expected.1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_or_404_over_rest() {
    let repository = tempfile::tempdir().expect("tempdir");
    common::tiny_repository(repository.path());
    let server = common::start(repository.path(), cardet_serve::ControlMode::None, LIMIT).await;
    let base = format!("http://{}", server.http);
    let client = reqwest::Client::new();
    let infer = "/v2/models/tiny/infer";
    let good = || body("x", "FP32", &[1, 4], json!([1, 2, 3, 4]));
    let cases: Vec<RestCase> = vec![
        (infer, good(), None, (200, "")),
        ("/v2/models/nope/infer", good(), None, (404, "unknown model 'nope'")),
        ("/v2/models/tiny/versions/9/infer", good(), None, (404, "has no version '9'")),
        ("/v2/models/tiny/versions/x/infer", good(), None, (404, "has no version 'x'")),
        (infer, body("z", "FP32", &[1, 4], json!([1, 2, 3, 4])), None, (400, "unknown input 'z' for model 'tiny'; it expects 'x'")),
        (infer, body("x", "INT32", &[1, 4], json!([1, 2, 3, 4])), None, (400, "input 'x': datatype INT32 but the model expects FP32")),
        (infer, body("x", "FLOAT", &[1, 4], json!([1, 2, 3, 4])), None, (400, "unknown datatype 'FLOAT'")),
        (infer, body("x", "FP32", &[1, 5], json!([1, 2, 3, 4, 5])), None, (400, "input 'x': shape [1, 5] does not match the model's [-1, 4]")),
        (infer, body("x", "FP32", &[9, 4], json!(vec![0; 36])), None, (400, "batch size 9 is not in 1..=8")),
        (infer, body("x", "FP32", &[1, 4], json!([1, 2, 3])), None, (400, "input 'x': shape needs 4 elements, data has 3")),
        (infer, body("x", "FP32", &[1, 4], json!([1, 2, "3", 4])), None, (400, "data element 2")),
        (infer, b"{\"inputs\": [".to_vec(), None, (400, "malformed request JSON")),
        (infer, b"{\"inputs\": [{\"name\": \"x\"}]}".to_vec(), None, (400, "missing field `shape`")),
        (infer, vec![b' '; LIMIT + 1], None, (400, "over the 1048576-byte limit")),
        (
            infer,
            serde_json::to_vec(&json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}], "outputs": [{"name": "nope"}]})).expect("json"),
            None,
            (400, "no 'data'"),
        ),
        (
            infer,
            serde_json::to_vec(&json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}], "outputs": [{"name": "nope"}]})).expect("json"),
            None,
            (400, "unknown output 'nope'"),
        ),
    ];
    for (path, body, header_length, expected) in cases {
        check_rest(&client, &base, path, body, header_length, expected).await;
    }

    // The binary extension: a body cut short, and a header length past the end.
    let header = serde_json::to_vec(&json!({
        "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": { "binary_data_size": 16 } }]
    }))
    .expect("json");
    let mut full = header.clone();
    full.extend_from_slice(&[0u8; 16]);
    check_rest(
        &client,
        &base,
        infer,
        full.clone(),
        Some(header.len()),
        (200, ""),
    )
    .await;
    check_rest(
        &client,
        &base,
        infer,
        full[..full.len() - 4].to_vec(),
        Some(header.len()),
        (
            400,
            "binary_data_size 16 but only 12 bytes of binary data remain (truncated body?)",
        ),
    )
    .await;
    check_rest(
        &client,
        &base,
        infer,
        full.clone(),
        Some(full.len() + 1),
        (400, "past the end"),
    )
    .await;

    // Unknown models elsewhere, and the repository API outside explicit mode.
    let response = client
        .get(format!("{base}/v2/models/nope"))
        .send()
        .await
        .expect("metadata");
    assert_eq!(response.status().as_u16(), 404);
    let response = client
        .get(format!("{base}/v2/models/nope/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(response.status().as_u16(), 404);
    let response = client
        .post(format!("{base}/v2/repository/models/tiny/unload"))
        .send()
        .await
        .expect("unload");
    assert_eq!(response.status().as_u16(), 400);
    // Still serving good requests.
    check_rest(&client, &base, infer, good(), None, (200, "")).await;
    server.shutdown().await.expect("shutdown");
}

fn grpc_request(
    name: &str,
    datatype: &str,
    shape: Vec<i64>,
    raw: Vec<u8>,
) -> v2::ModelInferRequest {
    v2::ModelInferRequest {
        model_name: "tiny".into(),
        inputs: vec![v2::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents: None,
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_argument_or_not_found_over_grpc() {
    let repository = tempfile::tempdir().expect("tempdir");
    common::tiny_repository(repository.path());
    let server = common::start(repository.path(), cardet_serve::ControlMode::None, LIMIT).await;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .expect("connect")
        .max_encoding_message_size(16 << 20);
    let good = || grpc_request("x", "FP32", vec![1, 4], vec![0; 16]);
    let with = |change: &dyn Fn(&mut v2::ModelInferRequest)| {
        let mut request = good();
        change(&mut request);
        request
    };
    use tonic::Code;
    let cases: Vec<(v2::ModelInferRequest, Code, &str)> = vec![
        (good(), Code::Ok, ""),
        (
            with(&|r| r.model_name = "nope".into()),
            Code::NotFound,
            "unknown model 'nope'",
        ),
        (
            with(&|r| r.model_version = "9".into()),
            Code::NotFound,
            "has no version '9'",
        ),
        (
            grpc_request("z", "FP32", vec![1, 4], vec![0; 16]),
            Code::InvalidArgument,
            "unknown input 'z'",
        ),
        (
            grpc_request("x", "INT32", vec![1, 4], vec![0; 16]),
            Code::InvalidArgument,
            "datatype INT32 but the model expects FP32",
        ),
        (
            grpc_request("x", "FP32", vec![1, 5], vec![0; 20]),
            Code::InvalidArgument,
            "shape [1, 5] does not match",
        ),
        (
            grpc_request("x", "FP32", vec![1, 4], vec![0; 12]),
            Code::InvalidArgument,
            "needs 16 bytes of FP32 data, got 12",
        ),
        (
            grpc_request("x", "FP32", vec![0, 4], vec![]),
            Code::InvalidArgument,
            "batch size 0",
        ),
        (
            with(&|r| r.raw_input_contents.clear()),
            Code::InvalidArgument,
            "no contents and no raw_input_contents",
        ),
        (
            with(&|r| {
                r.outputs
                    .push(v2::model_infer_request::InferRequestedOutputTensor {
                        name: "nope".into(),
                        parameters: Default::default(),
                    })
            }),
            Code::InvalidArgument,
            "unknown output 'nope'",
        ),
        // tonic refuses a message over its limit before any handler runs, with its own code.
        (
            grpc_request("x", "FP32", vec![1, 4], vec![0; LIMIT + 1]),
            Code::OutOfRange,
            "message length too large",
        ),
    ];
    for (request, code, message) in cases {
        let answer = client.model_infer(request).await;
        match answer {
            Ok(_) => assert_eq!(code, Code::Ok),
            Err(status) => {
                assert_eq!(status.code(), code, "{status:?}");
                assert!(
                    status.message().contains(message),
                    "{:?} lacks {message:?}",
                    status.message()
                );
            }
        }
    }
    let metadata = client
        .model_metadata(v2::ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await;
    assert_eq!(
        metadata.map(|_| ()).map_err(|s| s.code()),
        Err(Code::NotFound)
    );
    let config = client
        .model_config(v2::ModelConfigRequest {
            name: "tiny".into(),
            version: "7".into(),
        })
        .await;
    assert_eq!(
        config.map(|_| ()).map_err(|s| s.code()),
        Err(Code::NotFound)
    );
    assert!(client.model_infer(good()).await.is_ok(), "still serving");
    server.shutdown().await.expect("shutdown");
}
