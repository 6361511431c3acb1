//! `serve` finds ONNX Runtime by itself, and names the fix when it cannot.

use std::process::Command;

#[test]
fn serve_loads_onnxruntime_without_library_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_serve"))
        .arg("--runtime-info")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("LIBTORCH")
        .output()
        .expect("running serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "serve --runtime-info failed: {stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["onnxruntime_version"], "1.32.0", "{report}");
    assert!(
        report["library"]
            .as_str()
            .unwrap_or_default()
            .contains("libonnxruntime.so"),
        "{report}"
    );
}

#[test]
fn a_missing_library_names_the_fix() {
    let output = Command::new(env!("CARGO_BIN_EXE_serve"))
        .arg("--runtime-info")
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .expect("running serve");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/libonnxruntime.so"),
        "{stderr}"
    );
    assert!(stderr.contains("cargo xtask setup"), "{stderr}");
}

#[test]
fn a_library_that_is_not_onnxruntime_is_refused_with_its_path() {
    // libc is a real shared library without OrtGetApiBase: the check must refuse it
    // before `ort` touches it.
    let output = Command::new(env!("CARGO_BIN_EXE_serve"))
        .arg("--runtime-info")
        .env("ORT_DYLIB_PATH", "/lib/x86_64-linux-gnu/libc.so.6")
        .output()
        .expect("running serve");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("libc.so.6") && stderr.contains("OrtGetApiBase"),
        "{stderr}"
    );
}
