//! `upload_model_to_minio` against the stack's S3 server (s3s-fs, which checks
//! SigV4 signatures and SHA-256 checksums): versions, listing, deletion, verified
//! downloads, an upload killed half-way, and clear errors for wrong keys or an
//! endpoint that is down.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn stack() -> cardet_testkit::Stack {
    let stack = cardet_testkit::Stack::from_env();
    assert!(
        !stack.s3_access_key.is_empty(),
        "no S3 credentials: run `cargo xtask stack up s3` (it writes them into .env)"
    );
    stack
}

/// The binary with the stack's endpoint and keys, in the AWS names or the
/// original's MinIO names.
fn uploader(stack: &cardet_testkit::Stack, minio_names: bool) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_upload_model_to_minio"));
    command
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_ENDPOINT_URL", &stack.s3_endpoint)
        .env("AWS_REGION", &stack.s3_region);
    if minio_names {
        command
            .env("MINIO_ACCESS_KEY", &stack.s3_access_key)
            .env("MINIO_SECRET_KEY", &stack.s3_secret_key);
    } else {
        command
            .env("AWS_ACCESS_KEY_ID", &stack.s3_access_key)
            .env("AWS_SECRET_ACCESS_KEY", &stack.s3_secret_key);
    }
    command
}

fn run(mut command: Command) -> Output {
    command.output().expect("running upload_model_to_minio")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

fn assert_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        text(&output.stderr),
        text(&output.stdout)
    );
    text(&output.stdout)
}

/// A model folder: config.pbtxt and `1/` with a "model" and `n_extra` extra files
/// of `extra_bytes` each (pseudo-random, so no two files are alike).
fn model_folder(root: &Path, model_bytes: usize, n_extra: usize, extra_bytes: usize) {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    std::fs::create_dir_all(root.join("1/extra")).expect("folder");
    std::fs::write(root.join("config.pbtxt"), "name: \"car\"\n").expect("config");
    std::fs::write(root.join("1/model.onnx"), noise(model_bytes)).expect("model");
    for index in 0..n_extra {
        std::fs::write(
            root.join(format!("1/extra/part_{index:03}.bin")),
            noise(extra_bytes),
        )
        .expect("extra");
    }
}

fn list(stack: &cardet_testkit::Stack, bucket: &str) -> Vec<serde_json::Value> {
    let mut command = uploader(stack, false);
    command.args(["list", "--bucket", bucket, "--prefix", "repo"]);
    assert_ok(&run(command))
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn upload_args<'a>(folder: &'a str, bucket: &'a str) -> [&'a str; 8] {
    [
        "upload", folder, "--name", "car", "--bucket", bucket, "--prefix", "repo",
    ]
}

#[test]
fn versions_are_uploaded_listed_downloaded_verified_and_deleted() {
    let stack = stack();
    let bucket = cardet_testkit::unique_name("upload").to_lowercase();
    let work = tempfile::tempdir().expect("tempdir");
    let folder = work.path().join("car");
    // 12 MiB with a 6 MiB multipart threshold: the model goes up in parts.
    model_folder(&folder, 12 << 20, 3, 1000);
    let folder_text = folder.display().to_string();

    // A dry run on a bucket that does not exist yet writes nothing, not even the bucket.
    let mut dry = uploader(&stack, true);
    dry.args(upload_args(&folder_text, &bucket))
        .arg("--dry-run");
    let planned = assert_ok(&run(dry));
    assert!(planned.contains("repo/car/1/manifest.json"), "{planned}");
    assert!(planned.contains("repo/car/1/model.onnx"), "{planned}");
    let mut listing = uploader(&stack, false);
    listing.args(["list", "--bucket", &bucket]);
    let missing = run(listing);
    assert!(!missing.status.success(), "the dry run created the bucket");
    assert!(
        text(&missing.stderr).contains(&format!("has no bucket {bucket}")),
        "{}",
        text(&missing.stderr)
    );

    // Through the MinIO names, then the AWS names: versions 1 and 2.
    for (expected_version, minio_names) in [(1, true), (2, false)] {
        let mut upload = uploader(&stack, minio_names);
        upload.args(upload_args(&folder_text, &bucket)).args([
            "--multipart-threshold-mib",
            "6",
            "--part-size-mib",
            "5",
        ]);
        let stdout = assert_ok(&run(upload));
        assert!(
            stdout.contains(&format!("car version {expected_version} is in")),
            "{stdout}"
        );
    }
    let versions = list(&stack, &bucket);
    assert_eq!(versions.len(), 2, "{versions:?}");
    for (info, version) in versions.iter().zip([1, 2]) {
        assert_eq!(info["version"], version);
        assert_eq!(info["complete"], true);
        assert_eq!(info["files"], 4);
        assert_eq!(info["bytes"], (12 << 20) + 3 * 1000);
    }

    // A complete version is never overwritten.
    let mut again = uploader(&stack, false);
    again
        .args(upload_args(&folder_text, &bucket))
        .args(["--version", "2"]);
    let refused = run(again);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("car version 2 already exists"),
        "{}",
        text(&refused.stderr)
    );

    // The download is the uploaded folder, byte for byte.
    let downloaded = work.path().join("downloaded");
    let mut download = uploader(&stack, false);
    download.args([
        "download", "car", "2", "--bucket", &bucket, "--prefix", "repo",
    ]);
    download.arg("--out").arg(&downloaded);
    assert_ok(&run(download));
    for relative in ["config.pbtxt", "1/model.onnx", "1/extra/part_002.bin"] {
        let original = std::fs::read(folder.join(relative)).expect("original");
        let copy = std::fs::read(
            downloaded
                .join("car")
                .join(relative.replacen("1/", "2/", 1)),
        )
        .expect("downloaded file");
        assert!(original == copy, "{relative} differs after the round trip");
    }
    assert!(downloaded.join("car/2/manifest.json").is_file());

    let mut delete = uploader(&stack, false);
    delete.args([
        "delete", "car", "1", "--bucket", &bucket, "--prefix", "repo",
    ]);
    let deleted = assert_ok(&run(delete));
    assert!(deleted.contains("(5 objects)"), "{deleted}");
    let versions = list(&stack, &bucket);
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0]["version"], 2);
}

#[test]
fn an_upload_killed_half_way_leaves_no_manifest_and_a_rerun_finishes_it() {
    let stack = stack();
    let bucket = cardet_testkit::unique_name("upload-kill").to_lowercase();
    let work = tempfile::tempdir().expect("tempdir");
    let folder = work.path().join("car");
    model_folder(&folder, 1 << 20, 60, 512 << 10);
    let folder_text = folder.display().to_string();

    let mut upload = uploader(&stack, false);
    upload
        .args(upload_args(&folder_text, &bucket))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = upload.spawn().expect("starting the upload");
    let stderr = child.stderr.take().expect("stderr");
    let mut n_uploaded_before_kill = 0;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("a stderr line");
        if line.starts_with("uploaded ") {
            n_uploaded_before_kill += 1;
            // Some objects are there, most are not: kill it now, mid-upload.
            if n_uploaded_before_kill == 5 {
                child.kill().expect("SIGKILL");
                break;
            }
        }
    }
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the upload finished before it was killed"
    );

    let versions = list(&stack, &bucket);
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0]["complete"], false, "{versions:?}");
    assert!(
        versions[0]["objects"].as_u64().expect("objects") < 61,
        "{versions:?}"
    );

    let mut rerun = uploader(&stack, false);
    rerun.args(upload_args(&folder_text, &bucket));
    let output = run(rerun);
    let stdout = assert_ok(&output);
    assert!(stdout.contains("car version 1 is in"), "{stdout}");
    let n_skipped = text(&output.stderr)
        .lines()
        .filter(|line| line.starts_with("already there"))
        .count();
    assert!(
        n_skipped >= 5,
        "the re-run uploaded again what was there ({n_skipped} skipped)"
    );
    let versions = list(&stack, &bucket);
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0]["complete"], true);
    assert_eq!(versions[0]["files"], 61);
}

#[tokio::test]
async fn a_corrupted_object_fails_the_verified_download() {
    let stack = stack();
    let bucket = cardet_testkit::unique_name("upload-corrupt").to_lowercase();
    let work = tempfile::tempdir().expect("tempdir");
    let folder = work.path().join("car");
    model_folder(&folder, 4096, 1, 100);
    let mut upload = uploader(&stack, false);
    upload.args(upload_args(&folder.display().to_string(), &bucket));
    assert_ok(&run(upload));

    // One byte flipped at rest, same size: only the checksum can tell.
    let mut corrupted = std::fs::read(folder.join("1/model.onnx")).expect("model");
    corrupted[100] ^= 0xff;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&stack.s3_endpoint)
            .region(aws_sdk_s3::config::Region::new(stack.s3_region.clone()))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &stack.s3_access_key,
                &stack.s3_secret_key,
                None,
                None,
                "test",
            ))
            .force_path_style(true)
            .build(),
    );
    s3.put_object()
        .bucket(&bucket)
        .key("repo/car/1/model.onnx")
        .body(corrupted.into())
        .send()
        .await
        .expect("overwriting the model");

    let mut download = uploader(&stack, false);
    download.args([
        "download", "car", "1", "--bucket", &bucket, "--prefix", "repo",
    ]);
    download.arg("--out").arg(work.path().join("downloaded"));
    let output = run(download);
    assert!(!output.status.success(), "a corrupted version downloaded");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "checksum mismatch for s3://{bucket}/repo/car/1/model.onnx"
        )),
        "{stderr}"
    );
    assert!(
        !work.path().join("downloaded/car/1/manifest.json").exists(),
        "a failed download left a manifest"
    );
}

#[test]
fn a_wrong_secret_or_a_dead_endpoint_is_one_clear_line() {
    let stack = stack();
    let bucket = cardet_testkit::unique_name("upload-auth").to_lowercase();
    let mut wrong_secret = uploader(&stack, false);
    wrong_secret
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["list", "--bucket", &bucket]);
    let output = run(wrong_secret);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the S3 endpoint {} rejected the credentials for bucket {bucket}",
            stack.s3_endpoint
        )),
        "{stderr}"
    );

    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port");
    let dead = format!("http://127.0.0.1:{port}");
    let mut unreachable = uploader(&stack, false);
    unreachable
        .env("AWS_ENDPOINT_URL", &dead)
        .args(["list", "--bucket", &bucket]);
    let output = run(unreachable);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot reach the S3 endpoint {dead} (bucket {bucket})"
        )),
        "{stderr}"
    );
}
