//! A short run of each fuzz target in the suite; `cargo xtask serve-check fuzz` runs
//! them for 10 minutes each.

#[path = "../examples/fuzz.rs"]
#[allow(dead_code)]
mod fuzz_loop;

use std::time::Duration;

fn check(target: &str) {
    match fuzz_loop::fuzz(target, Duration::from_secs(2), 0x5eed) {
        Ok(executions) => assert!(executions > 100, "{target}: only {executions} runs"),
        Err(input) => panic!("{target} panicked on {:?}", String::from_utf8_lossy(&input)),
    }
}

#[test]
fn rest_parser_survives_mutated_requests() {
    check("rest");
}

#[test]
fn config_parser_survives_mutated_pbtxt() {
    check("pbtxt");
}

#[test]
fn grpc_conversion_survives_mutated_requests() {
    check("grpc");
}
