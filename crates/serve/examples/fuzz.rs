//! A stable-toolchain fuzz loop for serve's parsers (`cargo fuzz` needs nightly).
//!
//! ```text
//! cargo run --release -p cardet-serve --example fuzz -- rest 600
//! cargo run --release -p cardet-serve --example fuzz -- pbtxt 600
//! cargo run --release -p cardet-serve --example fuzz -- grpc 600
//! ```
//! Each target starts from a corpus of valid inputs and applies random mutations
//! (bit flips, byte and token insertions, deletions, duplications, splices) for the
//! given number of seconds. Every input goes through the same parser the server uses
//! (`parse_infer_request` with and without the binary header, `ModelConfig::from_text`,
//! protobuf decoding plus `grpc::from_wire` and input validation). A panic saves the
//! input under `target/fuzz-crashes/` and exits 1; the last line is a JSON summary.
//! The same targets for libFuzzer are in `crates/serve/fuzz/`.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cardet_serve::model_config::ModelConfig;
use cardet_serve::protocol::types::parse_infer_request;
use prost::Message;

/// xorshift64*: a small deterministic generator, seeded per run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"-1",
    b"0",
    b"1e308",
    b"-0",
    b"null",
    b"true",
    b"9223372036854775807",
    b"18446744073709551616",
    b"\"FP32\"",
    b"\"BYTES\"",
    b"\"INT8\"",
    b"\"binary_data_size\"",
    b"\"shape\"",
    b"\"data\"",
    b"\"inputs\"",
    b"\"outputs\"",
    b"\"parameters\"",
    b"\\u0000",
    b"\xff\xfe",
    b"#",
    b"<",
    b">",
    b"input",
    b"dims",
    b"max_batch_size",
    b"TYPE_FP32",
    b"instance_group",
    b"count",
    b"dynamic_batching",
    b"version_policy",
    b"'",
    b"\n",
    b"\\",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(8) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            2 if !input.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(input.len());
                input.drain(at.min(end)..end);
            }
            3 if !input.is_empty() => {
                let start = rng.below(input.len());
                let end = (start + 1 + rng.below(64)).min(input.len());
                let chunk: Vec<u8> = input[start..end].to_vec();
                input.splice(at..at, chunk);
            }
            4 => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let start = rng.below(other.len());
                    input.truncate(at);
                    input.extend_from_slice(&other[start..]);
                }
            }
            5 => input.insert(at, rng.next() as u8),
            6 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = b"0123456789-.e"[rng.below(13)];
            }
            _ => input.truncate(at),
        }
    }
    input.truncate(1 << 16);
}

fn rest_corpus() -> Vec<Vec<u8>> {
    let mut binary = br#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#.to_vec();
    binary.extend_from_slice(&[0u8; 16]);
    vec![
        br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4.5]}]}"#.to_vec(),
        br#"{"id":"7","parameters":{"binary_data_output":true},"inputs":[{"name":"x","shape":[2,2],"datatype":"INT64","data":[[1,2],[3,4]]}],"outputs":[{"name":"y"}]}"#.to_vec(),
        br#"{"inputs":[{"name":"b","shape":[3],"datatype":"BOOL","data":[true,false,true]},{"name":"u","shape":[1],"datatype":"UINT8","data":[255]}]}"#.to_vec(),
        binary,
    ]
}

fn pbtxt_corpus() -> Vec<Vec<u8>> {
    vec![
        br#"name: "yolov8n_car"
backend: "onnxruntime"
max_batch_size : 2
input [ { name: "images" data_type: TYPE_FP32 dims: [ 3, 640, 640 ] } ]
output [ { name: "output0" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]
instance_group [ { kind: KIND_CPU count: 2 } ]  # comment
dynamic_batching { preferred_batch_size: [4, 8] max_queue_delay_microseconds: 500 }
version_policy: { specific { versions: [1, 3] } }
"#
        .to_vec(),
        b"optimization < execution_accelerators { cpu_execution_accelerator: [ { name: 'openvino' } ] } >\nversion_policy { latest { num_versions: 2 } }".to_vec(),
    ]
}

fn grpc_corpus() -> Vec<Vec<u8>> {
    use cardet_serve::protocol::grpc::pb::inference as v2;
    let request = v2::ModelInferRequest {
        model_name: "tiny".into(),
        inputs: vec![v2::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            parameters: Default::default(),
            contents: Some(v2::InferTensorContents {
                fp32_contents: vec![1.0, 2.0, 3.0, 4.0],
                ..Default::default()
            }),
        }],
        ..Default::default()
    };
    let mut raw = request.clone();
    raw.inputs[0].contents = None;
    raw.raw_input_contents = vec![Bytes::from(vec![0u8; 16])];
    vec![request.encode_to_vec(), raw.encode_to_vec()]
}

fn run_rest(input: &[u8]) {
    let body = Bytes::copy_from_slice(input);
    let _ = parse_infer_request(body.clone(), None);
    // Also as a binary request, with header lengths around the JSON's end.
    let end = input.iter().rposition(|&b| b == b'}').map_or(0, |i| i + 1);
    for length in [end, end.saturating_sub(1), input.len()] {
        let _ = parse_infer_request(body.clone(), Some(&length.to_string()));
    }
}

fn run_pbtxt(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let _ = ModelConfig::from_text(&text, "fuzz");
}

fn run_grpc(input: &[u8]) {
    use cardet_serve::protocol::grpc::pb::inference as v2;
    if let Ok(request) = v2::ModelInferRequest::decode(input)
        && let Ok(cardet_serve::protocol::grpc::WireRequest { request, .. }) =
            cardet_serve::protocol::grpc::from_wire(request)
        && let Ok(config) = ModelConfig::from_text(
            "max_batch_size: 8 input [{ name: \"x\" data_type: TYPE_FP32 dims: [4] }] output [{ name: \"y\" data_type: TYPE_FP32 dims: [4] }]",
            "tiny",
        )
    {
        let _ = cardet_serve::infer::validate_inputs(&config, "tiny", request.inputs);
    }
}

/// A target's entry point.
type Runner = fn(&[u8]);

/// Runs one target for `duration`; `Ok(executions)`, or the input that panicked.
pub fn fuzz(target: &str, duration: Duration, seed: u64) -> Result<u64, Vec<u8>> {
    let (corpus, run): (Vec<Vec<u8>>, Runner) = match target {
        "rest" => (rest_corpus(), run_rest),
        "pbtxt" => (pbtxt_corpus(), run_pbtxt),
        "grpc" => (grpc_corpus(), run_grpc),
        _ => return Err(format!("unknown target {target}").into_bytes()),
    };
    let mut rng = Rng(seed | 1);
    let deadline = Instant::now() + duration;
    let mut executions: u64 = 0;
    for input in &corpus {
        run(input);
    }
    while Instant::now() < deadline {
        for _ in 0..256 {
            let mut input = corpus[rng.below(corpus.len())].clone();
            for _ in 0..1 + rng.below(8) {
                mutate(&mut rng, &mut input, &corpus);
            }
            executions += 1;
            if std::panic::catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
                return Err(input);
            }
        }
    }
    Ok(executions)
}

#[allow(dead_code)]
fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_else(|| "rest".into());
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    // Panics are what we look for: keep their messages short.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    match fuzz(&target, Duration::from_secs(seconds), seed) {
        Ok(executions) => println!(
            "{{\"target\":\"{target}\",\"executions\":{executions},\"seconds\":{seconds},\"crashes\":0,\"seed\":{seed}}}"
        ),
        Err(input) => {
            let dir =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-crashes");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{target}-{seed:x}"));
            let _ = std::fs::write(&path, &input);
            eprintln!("crash saved to {}", path.display());
            println!(
                "{{\"target\":\"{target}\",\"seconds\":{seconds},\"crashes\":1,\"seed\":{seed}}}"
            );
            std::process::exit(1);
        }
    }
}
