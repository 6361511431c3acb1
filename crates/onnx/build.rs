//! Bakes the default ONNX Runtime library path into the crate, resolved through the
//! clone's `.cardet` link to the real file in $CARDET_HOME, so binaries keep working
//! wherever they are copied on this machine.

fn main() {
    println!("cargo:rerun-if-env-changed=CARDET_ORT_DYLIB_DEFAULT");
    let configured = std::env::var("CARDET_ORT_DYLIB_DEFAULT").unwrap_or_default();
    let resolved = std::fs::canonicalize(&configured)
        .map(|path| path.display().to_string())
        .unwrap_or(configured);
    println!("cargo:rustc-env=CARDET_ORT_DYLIB_BAKED={resolved}");
}
