//! Embeds libtorch's folder as an rpath, so the crate's tests and benches start with
//! an empty LD_LIBRARY_PATH: tch's build links libtorch but records no search path.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    let libtorch = std::fs::canonicalize(&libtorch).unwrap_or_else(|_| libtorch.into());
    println!(
        "cargo:rustc-link-arg=-Wl,-rpath,{}",
        libtorch.join("lib").display()
    );
}
