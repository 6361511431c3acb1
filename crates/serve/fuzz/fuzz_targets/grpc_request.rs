//! gRPC `ModelInferRequest` decoding and conversion.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|input: &[u8]| {
    use cardet_serve::protocol::grpc::pb::inference::ModelInferRequest;
    if let Ok(request) = ModelInferRequest::decode(input) {
        let _ = cardet_serve::protocol::grpc::from_wire(request);
    }
});
