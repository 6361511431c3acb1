//! How tests reach the real services of `cargo xtask stack` and the reference tools
//! of the venv.
//!
//! `cargo xtask test` exports the stack's variables; a developer who ran
//! `cargo xtask stack up` and then `cargo nextest run` gets them from the clone's
//! `.env` instead. [`Stack::from_env`] reads both, the environment first.
//!
//! ```no_run
//! let stack = cardet_testkit::Stack::from_env();
//! println!("kafka at {}", stack.kafka_bootstrap);
//! ```

pub mod http2;

use std::path::{Path, PathBuf};

/// The stack's endpoints and credentials, with the ecosystem's variable names.
#[derive(Clone, Debug)]
pub struct Stack {
    pub kafka_bootstrap: String,
    pub database_url: String,
    pub s3_endpoint: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
    pub s3_region: String,
    pub mlflow_uri: String,
}

impl Stack {
    /// Reads the variables, falling back to the clone's `.env` and then to the stack's defaults.
    pub fn from_env() -> Stack {
        let dotenv: Vec<(String, String)> = dotenvy::from_path_iter(workspace_root().join(".env"))
            .map(|lines| lines.filter_map(Result::ok).collect())
            .unwrap_or_default();
        let get = |key: &str, default: &str| {
            std::env::var(key)
                .ok()
                .filter(|value| !value.is_empty())
                .or_else(|| {
                    dotenv
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                })
                .unwrap_or_else(|| default.to_string())
        };
        Stack {
            kafka_bootstrap: get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            database_url: get(
                "DATABASE_URL",
                "postgres://cardet:cardet@127.0.0.1:5432/cardet",
            ),
            s3_endpoint: get("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            s3_access_key: get("AWS_ACCESS_KEY_ID", ""),
            s3_secret_key: get("AWS_SECRET_ACCESS_KEY", ""),
            s3_region: get("AWS_REGION", "us-east-1"),
            mlflow_uri: get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"),
        }
    }
}

/// The running test's (or example's) package folder. Read when it runs, not when it
/// was compiled: CI's clones share one target folder, so a test binary built in
/// another clone would otherwise look for files in that clone.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The clone's root: the nearest folder above [`manifest_dir`] with `Cargo.lock`.
pub fn workspace_root() -> PathBuf {
    let package = manifest_dir();
    package
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map_or(package.clone(), Path::to_path_buf)
}

/// `$CARDET_HOME`, else `~/.cache/cardet` (the same rule as `cargo xtask setup`).
pub fn cardet_home() -> PathBuf {
    match std::env::var_os("CARDET_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/tmp".into())
            .join(".cache/cardet"),
    }
}

/// The venv's Python, where the reference tools (pycocotools, ultralytics,
/// tritonclient, opencv, onnx) live.
pub fn venv_python() -> PathBuf {
    cardet_home().join("venv/bin/python")
}

/// A name no other test run uses: the embedded broker deletes every topic when one
/// is deleted, so tests never share or delete topics (see DESIGN.md).
pub fn unique_name(prefix: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// A TCP port on 127.0.0.1 that nothing listened on a moment ago (the OS's pick),
/// for a server or a c10d store a test starts. Panics if none can be had.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// A size field of this process's `/proc/self/status` in KiB (`"VmRSS:"` resident
/// now, `"VmHWM:"` its peak), or `None` off Linux or when the field is missing.
pub fn own_status_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Ultralytics' YOLOv8n exported to ONNX (dynamic batch and size, random weights:
/// nothing is downloaded), made once per machine under `$CARDET_HOME/fixtures` and
/// reused, since the export takes about 20 s. Panics with Ultralytics' stderr when
/// the export fails (test-only helper).
pub fn ultralytics_yolov8n_onnx() -> PathBuf {
    let cache = cardet_home().join("fixtures/serve");
    let path = cache.join("yolov8n-dynamic.onnx");
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(&cache).expect("fixture cache");
    // Exported in a folder of its own, then renamed into place: a concurrent test
    // sees the whole file or none.
    let work = cache.join(format!(".export-{}", unique_name("yolov8n")));
    std::fs::create_dir_all(&work).expect("export folder");
    let output = std::process::Command::new(venv_python())
        .current_dir(&work)
        .env("YOLO_OFFLINE", "1")
        .env("YOLO_CONFIG_DIR", &work)
        .args([
            "-c",
            "from ultralytics import YOLO\n\
             YOLO('yolov8n.yaml').export(format='onnx', dynamic=True, simplify=False, imgsz=640)",
        ])
        .output()
        .expect("running ultralytics");
    assert!(
        output.status.success(),
        "exporting yolov8n: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(work.join("yolov8n.onnx"), &path).expect("placing the export");
    let _ = std::fs::remove_dir_all(&work);
    path
}
