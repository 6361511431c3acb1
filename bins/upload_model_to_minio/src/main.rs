//! `upload_model_to_minio`: model versions in S3 (MinIO, s3s, AWS) for `serve` and
//! KServe ModelMesh: upload with a manifest written last, list, delete, and a
//! verified download. Glue over [`cardet_model_store`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cardet_model_store::{ModelStore, S3Settings, UploadEvent, UploadOptions, mlflow};
use clap::{Parser, Subcommand};

/// Uploads a Triton model folder to S3 as a new, atomically visible version.
///
/// Endpoint and keys come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY and AWS_REGION, with MINIO_ACCESS_KEY and MINIO_SECRET_KEY
/// as fallbacks. Every object is sent with its SHA-256; the version's manifest.json
/// (files, sizes, SHA-256) goes last, and readers such as `serve` only trust versions
/// that have one.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:
  upload_model_to_minio upload model_repo/yolov8n_car --bucket modelmesh-models --prefix cardetect
  upload_model_to_minio upload model_repo/yolov8n_car --version 7 --dry-run
  upload_model_to_minio upload --from-mlflow models:/yolov8n_car@champion --bucket modelmesh-models
  upload_model_to_minio list --bucket modelmesh-models --prefix cardetect
  upload_model_to_minio delete yolov8n_car 3 --bucket modelmesh-models --prefix cardetect
  upload_model_to_minio download yolov8n_car 3 --out /tmp/models --bucket modelmesh-models

An upload killed half-way leaves a version without a manifest, which nothing
serves; running the same upload again finishes it (objects already there with the
same SHA-256 are skipped)."
)]
struct Flags {
    #[command(subcommand)]
    command: Command,
    /// The bucket (created by `upload` when missing).
    #[arg(long, global = true, default_value = "modelmesh-models")]
    bucket: String,
    /// The key prefix the model folders live under (serve's s3://bucket/PREFIX).
    #[arg(long, global = true, default_value = "")]
    prefix: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Upload a model folder (config.pbtxt + <n>/model.onnx) as a new version.
    Upload {
        /// The local model folder, model_repo/<name>.
        #[arg(required_unless_present = "from_mlflow")]
        folder: Option<PathBuf>,
        /// The model name in S3 (default: the folder's name, or the registered model's).
        #[arg(long)]
        name: Option<String>,
        /// The version to write (default: the next one, or the one an interrupted
        /// upload left without a manifest).
        #[arg(long)]
        version: Option<u64>,
        /// Which numbered sub-folder of the local folder to upload (default: the highest).
        #[arg(long)]
        local_version: Option<u64>,
        /// Download the model folder from MLflow first: models:/NAME@ALIAS,
        /// models:/NAME/VERSION, runs:/RUN_ID/PATH or a run id.
        #[arg(long, value_name = "URI", conflicts_with = "folder")]
        from_mlflow: Option<String>,
        /// The MLflow tracking server.
        #[arg(
            long,
            env = "MLFLOW_TRACKING_URI",
            default_value = "http://127.0.0.1:5000"
        )]
        mlflow_uri: String,
        /// Show what would be uploaded, and where; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Files at least this many MiB go up as multipart uploads.
        #[arg(long, default_value_t = 64)]
        multipart_threshold_mib: u64,
        /// Part size of multipart uploads, in MiB (at least 5).
        #[arg(long, default_value_t = 16)]
        part_size_mib: u64,
        /// Print the result as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List models and their versions (complete ones have a manifest).
    List {
        /// Only this model.
        model: Option<String>,
    },
    /// Delete a version (its manifest first, so it disappears atomically).
    Delete { model: String, version: u64 },
    /// Download a version, checking every file against its manifest.
    Download {
        model: String,
        version: u64,
        /// Written as OUT/<model>/config.pbtxt and OUT/<model>/<version>/...
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    cardet_cli::init_logging();
    let flags = Flags::parse();
    cardet_cli::exit_code("upload_model_to_minio", run(flags))
}

#[tokio::main(flavor = "current_thread")]
async fn run(flags: Flags) -> anyhow::Result<()> {
    let store = ModelStore::connect(&S3Settings::from_env(), &flags.bucket, &flags.prefix).await;
    match flags.command {
        Command::Upload {
            folder,
            name,
            version,
            local_version,
            from_mlflow,
            mlflow_uri,
            dry_run,
            multipart_threshold_mib,
            part_size_mib,
            json,
        } => {
            let options = UploadOptions {
                version,
                local_version,
                dry_run,
                multipart_threshold: multipart_threshold_mib << 20,
                part_size: part_size_mib << 20,
            };
            // Keeps the MLflow download alive until the upload is done.
            let mut _downloaded = None;
            let (folder, name) = match (folder, from_mlflow) {
                (_, Some(uri)) => {
                    let uri = mlflow::MlflowModelUri::parse(&uri)?;
                    let name = name
                        .or_else(|| uri.registered_name().map(str::to_string))
                        .context("--name is required with a run id or runs:/ URI")?;
                    let temp = tempfile::tempdir().context("creating a download folder")?;
                    let folder = mlflow::download_model(&mlflow_uri, &uri, temp.path())
                        .await
                        .with_context(|| format!("downloading {uri:?} from MLflow"))?;
                    eprintln!("downloaded {uri:?} from {mlflow_uri}");
                    _downloaded = Some(temp);
                    (folder, name)
                }
                (Some(folder), None) => {
                    let name = match name {
                        Some(name) => name,
                        None => folder
                            .canonicalize()
                            .ok()
                            .and_then(|path| Some(path.file_name()?.to_str()?.to_string()))
                            .with_context(|| {
                                format!("cannot name the model after {}", folder.display())
                            })?,
                    };
                    (folder, name)
                }
                (None, None) => anyhow::bail!("give a model folder or --from-mlflow"),
            };
            let report = store
                .upload(&folder, &name, &options, &|event| match event {
                    UploadEvent::Uploaded { key, bytes } => {
                        eprintln!("uploaded s3://{}/{key} ({bytes} bytes)", flags.bucket)
                    }
                    UploadEvent::Skipped { key } => {
                        eprintln!("already there: s3://{}/{key}", flags.bucket)
                    }
                })
                .await?;
            if json {
                let summary = serde_json::json!({
                    "model": report.model,
                    "version": report.version,
                    "location": store.location().to_string(),
                    "manifest": format!("s3://{}/{}", flags.bucket, report.manifest_key),
                    "dry_run": report.dry_run,
                    "resumed": report.resumed,
                    "uploaded": report.n_uploaded,
                    "skipped": report.n_skipped,
                    "bytes_uploaded": report.bytes_uploaded,
                    "bucket_created": report.bucket_created,
                });
                println!("{summary}");
            } else if report.dry_run {
                for file in report.config.iter().chain(&report.files) {
                    println!(
                        "would upload {} -> s3://{}/{} ({} bytes, sha256 {})",
                        file.local.display(),
                        flags.bucket,
                        file.key,
                        file.size,
                        file.sha256
                    );
                }
                println!(
                    "would write s3://{}/{} last: {} version {}{}",
                    flags.bucket,
                    report.manifest_key,
                    report.model,
                    report.version,
                    if report.resumed {
                        " (finishing an interrupted upload)"
                    } else {
                        ""
                    }
                );
            } else {
                println!(
                    "{} version {} is in {} ({} objects uploaded, {} already there, {} bytes{})",
                    report.model,
                    report.version,
                    store.location(),
                    report.n_uploaded,
                    report.n_skipped,
                    report.bytes_uploaded,
                    if report.bucket_created {
                        ", bucket created"
                    } else {
                        ""
                    }
                );
            }
        }
        Command::List { model } => {
            let models = match model {
                Some(model) => vec![model],
                None => store.models().await?,
            };
            for model in models {
                for info in store.versions(&model).await? {
                    let line = match &info.manifest {
                        Some(manifest) => serde_json::json!({
                            "model": model, "version": info.version, "complete": true,
                            "files": manifest.files.len(), "bytes": manifest.total_bytes(),
                            "created_unix_s": manifest.created_unix_s,
                        }),
                        None => serde_json::json!({
                            "model": model, "version": info.version, "complete": false,
                            "objects": info.n_objects, "bytes": info.bytes,
                        }),
                    };
                    println!("{line}");
                }
            }
        }
        Command::Delete { model, version } => {
            let n_deleted = store.delete_version(&model, version).await?;
            println!("deleted {model} version {version} ({n_deleted} objects)");
        }
        Command::Download {
            model,
            version,
            out,
        } => {
            let model_folder = out.join(&model);
            store
                .download_config(&model, &model_folder.join("config.pbtxt"))
                .await?;
            let manifest = store
                .download_version(&model, version, &model_folder.join(version.to_string()))
                .await?;
            println!(
                "{model} version {version}: {} files, {} bytes, verified, in {}",
                manifest.files.len(),
                manifest.total_bytes(),
                model_folder.display()
            );
        }
    }
    Ok(())
}
