//! Generates the KServe v2 gRPC client from `serve`'s copy of the protocol files, so
//! server and client speak from one definition (needs `protoc`, as `serve` does).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../serve/proto");
    tonic_prost_build::configure()
        .build_server(false)
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_protos(&["../serve/proto/grpc_service.proto"], &["../serve/proto"])?;
    Ok(())
}
