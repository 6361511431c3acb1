//! The REST request parser, JSON and binary (`Inference-Header-Content-Length`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let body = bytes::Bytes::copy_from_slice(input);
    let _ = cardet_serve::protocol::types::parse_infer_request(body.clone(), None);
    let end = input.iter().rposition(|&b| b == b'}').map_or(0, |i| i + 1);
    let _ = cardet_serve::protocol::types::parse_infer_request(body, Some(&end.to_string()));
});
