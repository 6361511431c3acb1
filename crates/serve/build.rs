//! Generates the gRPC types and services from `proto/` (needs `protoc`, which
//! `cargo xtask setup` installs; `PROTOC` points at another one).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_protos(
            &[
                "proto/grpc_service.proto",
                "proto/model_config.proto",
                "proto/model_runtime.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
