//! Compressed bodies, as tritonclient sends and asks for them: REST requests with
//! `Content-Encoding: gzip | deflate` and answers by `Accept-Encoding`, gRPC
//! requests with `grpc-encoding`. A compressed request answers exactly what the
//! plain one does; a bad coding, corrupt data or a body that expands past the
//! limit is a 400 naming it, and the server goes on serving.

mod common;

use std::io::Write;

use cardet_serve::protocol::grpc::pb::inference as v2;
use flate2::Compression;
use flate2::write::{GzEncoder, ZlibEncoder};
use serde_json::{Value, json};
use tonic::codec::CompressionEncoding;
use v2::grpc_inference_service_client::GrpcInferenceServiceClient;

const LIMIT: usize = 1 << 20;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("zlib");
    encoder.finish().expect("zlib")
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out).expect("gunzip");
    out
}

fn unzlib(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(data), &mut out)
        .expect("unzlib");
    out
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A binary-extension request for `tiny` (x = 1, 2, 3, 4 as FP32, `y` asked back
/// in binary) and its JSON header's length.
fn binary_request() -> (Vec<u8>, usize) {
    let header = serde_json::to_vec(&json!({
        "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": { "binary_data_size": 16 } }],
        "outputs": [{ "name": "y", "parameters": { "binary_data": true } }]
    }))
    .expect("json");
    let mut body = header.clone();
    body.extend_from_slice(&le_bytes(&[1.0, 2.0, 3.0, 4.0]));
    (body, header.len())
}

struct Answer {
    status: u16,
    content_encoding: Option<String>,
    header_length: Option<String>,
    body: Vec<u8>,
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    header_length: usize,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = client
        .post(url)
        .header("Inference-Header-Content-Length", header_length.to_string())
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("text").to_string())
    };
    Answer {
        status: response.status().as_u16(),
        content_encoding: header("content-encoding"),
        header_length: header("inference-header-content-length"),
        body: response.bytes().await.expect("body").to_vec(),
    }
}

fn error_message(answer: &Answer) -> String {
    let json: Value = serde_json::from_slice(&answer.body).expect("error body is JSON");
    json["error"].as_str().expect("error field").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_requests_and_answers_over_rest() {
    let repository = tempfile::tempdir().expect("tempdir");
    common::tiny_repository(repository.path());
    let server = common::start(repository.path(), cardet_serve::ControlMode::None, LIMIT).await;
    let url = format!("http://{}/v2/models/tiny/infer", server.http);
    let client = reqwest::Client::new();
    let (body, header_length) = binary_request();

    let plain = post(&client, &url, body.clone(), header_length, &[]).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.content_encoding, None);
    assert!(
        plain.body.ends_with(&le_bytes(&[2.0, 4.0, 6.0, 8.0])),
        "y = 2x in binary"
    );

    for (coding, compressed) in [("gzip", gzip(&body)), ("deflate", zlib(&body))] {
        let answer = post(
            &client,
            &url,
            compressed,
            header_length,
            &[("Content-Encoding", coding)],
        )
        .await;
        assert_eq!(answer.status, 200, "{coding}: {:?}", error_message(&answer));
        assert_eq!(answer.body, plain.body, "{coding} request");
        assert_eq!(answer.header_length, plain.header_length);
    }

    for (accept, decode) in [
        ("gzip", gunzip as fn(&[u8]) -> Vec<u8>),
        ("deflate", unzlib),
    ] {
        let answer = post(
            &client,
            &url,
            body.clone(),
            header_length,
            &[("Accept-Encoding", accept)],
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.content_encoding.as_deref(), Some(accept));
        // The header length counts the decoded body's JSON, as in Triton.
        assert_eq!(answer.header_length, plain.header_length);
        assert_eq!(decode(&answer.body), plain.body, "{accept} answer");
    }

    let mut truncated = gzip(&body);
    truncated.truncate(truncated.len() / 2);
    let bomb_json = format!("{{\"inputs\": []{}}}", " ".repeat(LIMIT));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("br", body.clone(), "unsupported Content-Encoding 'br'"),
        ("gzip, deflate", body.clone(), "one coding at most"),
        ("gzip", body.clone(), "not valid gzip data"),
        ("gzip", truncated, "not valid gzip data"),
        ("deflate", gzip(&body), "not valid deflate data"),
        (
            "gzip",
            gzip(bomb_json.as_bytes()),
            "over the 1048576-byte limit once decoded from gzip",
        ),
    ];
    for (coding, data, expected) in cases {
        let answer = post(
            &client,
            &url,
            data,
            header_length,
            &[("Content-Encoding", coding)],
        )
        .await;
        assert_eq!(answer.status, 400, "{coding}: {expected}");
        let message = error_message(&answer);
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }

    let again = post(&client, &url, body, header_length, &[]).await;
    assert_eq!(again.body, plain.body, "still serving");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_requests_over_grpc() {
    let repository = tempfile::tempdir().expect("tempdir");
    common::tiny_repository(repository.path());
    let server = common::start(repository.path(), cardet_serve::ControlMode::None, LIMIT).await;
    let connect = || async {
        GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc))
            .await
            .expect("connect")
            .max_encoding_message_size(16 << 20)
    };
    let request = |values: Vec<u8>, width: i64| v2::ModelInferRequest {
        model_name: "tiny".into(),
        inputs: vec![v2::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, width],
            parameters: Default::default(),
            contents: None,
        }],
        raw_input_contents: vec![values.into()],
        ..Default::default()
    };
    let x = le_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let plain = connect()
        .await
        .model_infer(request(x.clone(), 4))
        .await
        .expect("plain")
        .into_inner();
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Deflate] {
        let answer = connect()
            .await
            .send_compressed(encoding)
            .model_infer(request(x.clone(), 4))
            .await
            .unwrap_or_else(|status| panic!("{encoding:?}: {status:?}"))
            .into_inner();
        assert_eq!(answer.raw_output_contents, plain.raw_output_contents);
    }
    // A message that expands past the limit: tonic refuses it while decoding.
    let zeros = vec![0u8; LIMIT + 64];
    let status = connect()
        .await
        .send_compressed(CompressionEncoding::Gzip)
        .model_infer(request(zeros, (LIMIT as i64 + 64) / 4))
        .await
        .expect_err("over the limit once decoded");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("size limit"), "{status:?}");
    let again = connect()
        .await
        .model_infer(request(x, 4))
        .await
        .expect("still serving");
    assert_eq!(
        again.into_inner().raw_output_contents,
        plain.raw_output_contents
    );
    server.shutdown().await.expect("shutdown");
}
