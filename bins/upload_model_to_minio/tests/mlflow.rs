//! `upload --from-mlflow` against the stack's MLflow: a model folder logged as run
//! artifacts by the venv's `mlflow` client, registered with an alias, fetched through
//! the registry and the artifact proxy, and uploaded to the stack's S3.

use std::process::Command;

const LOG_AND_REGISTER: &str = r#"
import sys, mlflow
uri, experiment, folder, name = sys.argv[1:5]
mlflow.set_tracking_uri(uri)
mlflow.set_experiment(experiment)
with mlflow.start_run() as run:
    mlflow.log_artifacts(folder, artifact_path="model_repo/car")
client = mlflow.MlflowClient()
client.create_registered_model(name)
version = client.create_model_version(
    name, source=f"runs:/{run.info.run_id}/model_repo/car", run_id=run.info.run_id)
client.set_registered_model_alias(name, "champion", version.version)
print(run.info.run_id)
"#;

#[test]
fn a_registered_model_is_fetched_by_alias_and_uploaded() {
    let stack = cardet_testkit::Stack::from_env();
    assert!(!stack.s3_access_key.is_empty(), "no S3 credentials");
    let work = tempfile::tempdir().expect("tempdir");
    let folder = work.path().join("car");
    std::fs::create_dir_all(folder.join("1")).expect("folder");
    std::fs::write(folder.join("config.pbtxt"), "name: \"car\"\n").expect("config");
    let model: Vec<u8> = (0..50_000_u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(folder.join("1/model.onnx"), &model).expect("model");

    let name = cardet_testkit::unique_name("car-model");
    let logged = Command::new(cardet_testkit::venv_python())
        .args(["-c", LOG_AND_REGISTER, &stack.mlflow_uri, &name])
        .arg(&folder)
        .arg(&name)
        .output()
        .expect("running the venv's mlflow");
    assert!(
        logged.status.success(),
        "logging to MLflow: {}",
        String::from_utf8_lossy(&logged.stderr)
    );

    let bucket = cardet_testkit::unique_name("upload-mlflow").to_lowercase();
    let output = Command::new(env!("CARGO_BIN_EXE_upload_model_to_minio"))
        .env("AWS_ENDPOINT_URL", &stack.s3_endpoint)
        .env("AWS_ACCESS_KEY_ID", &stack.s3_access_key)
        .env("AWS_SECRET_ACCESS_KEY", &stack.s3_secret_key)
        .env("AWS_REGION", &stack.s3_region)
        .args([
            "upload",
            "--from-mlflow",
            &format!("models:/{name}@champion"),
        ])
        .args(["--mlflow-uri", &stack.mlflow_uri, "--name", "car"])
        .args(["--bucket", &bucket, "--prefix", "repo"])
        .output()
        .expect("running upload_model_to_minio");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("car version 1 is in"), "{stdout}");

    let downloaded = work.path().join("downloaded");
    let output = Command::new(env!("CARGO_BIN_EXE_upload_model_to_minio"))
        .env("AWS_ENDPOINT_URL", &stack.s3_endpoint)
        .env("AWS_ACCESS_KEY_ID", &stack.s3_access_key)
        .env("AWS_SECRET_ACCESS_KEY", &stack.s3_secret_key)
        .env("AWS_REGION", &stack.s3_region)
        .args([
            "download", "car", "1", "--bucket", &bucket, "--prefix", "repo",
        ])
        .arg("--out")
        .arg(&downloaded)
        .output()
        .expect("running upload_model_to_minio");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        std::fs::read(downloaded.join("car/1/model.onnx")).expect("model") == model,
        "the model came back different"
    );
    assert_eq!(
        std::fs::read_to_string(downloaded.join("car/config.pbtxt")).expect("config"),
        "name: \"car\"\n"
    );

    // An alias nobody set: MLflow's own message, one line, non-zero exit.
    let output = Command::new(env!("CARGO_BIN_EXE_upload_model_to_minio"))
        .args(["upload", "--from-mlflow", &format!("models:/{name}@nobody")])
        .args(["--mlflow-uri", &stack.mlflow_uri, "--bucket", &bucket])
        .output()
        .expect("running upload_model_to_minio");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("MLflow at {}", stack.mlflow_uri)) && stderr.contains("nobody"),
        "{stderr}"
    );
}
