//! Embeds libtorch's folder as an rpath, so `mwt` starts with an empty
//! LD_LIBRARY_PATH: tch's build links libtorch but records no search path.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    // Resolve the clone's `.cardet` link, so the binary points into $CARDET_HOME itself.
    let libtorch = std::fs::canonicalize(&libtorch).unwrap_or_else(|_| libtorch.into());
    println!(
        "cargo:rustc-link-arg=-Wl,-rpath,{}",
        libtorch.join("lib").display()
    );
}
