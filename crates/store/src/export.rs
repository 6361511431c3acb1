//! The store back out as an Ultralytics YOLO dataset:
//! `images/<split>/<name>`, `labels/<split>/<stem>.txt` and `data.yaml`.
//!
//! Resumable and incremental: rows are read in `seq` order, page by page, and
//! `.cardet-export.json` in the output folder records the last `seq` written after
//! each page. A rerun (after a crash, or once new images arrived) starts after it.
//! Files are written to a temporary name and renamed, so a crash leaves no torn
//! file. Rows whose labels, split or path changed get a new `seq` and are written
//! again. Only rows whose transaction committed before the export read the
//! sequence are exported, so a row committed later with a smaller `seq` is never
//! skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cardet_record::ImageId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::error::{DatabaseContext, Error, io_error};

/// How an export chooses each image's split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitRule {
    /// `val` when a stable hash of the id falls below the val fraction, else `train`.
    Hash,
    /// The split the record came with; the hash rule for records without one.
    Source,
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub out: PathBuf,
    pub split_rule: SplitRule,
    /// Share of images that go to `val` under the hash rule, in [0, 1].
    pub val_fraction: f64,
    /// Class names for `data.yaml`; `class_<i>` for the classes it does not name.
    pub names: Vec<String>,
    /// Rows per page (one page is one query and one state save).
    pub page_size: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExportSummary {
    /// Images written by this run.
    pub n_images: usize,
    /// Label files written by this run.
    pub n_labels: usize,
    /// Images written per split by this run.
    pub per_split: BTreeMap<String, usize>,
    /// Images whose file name was taken by another image, written under a suffixed name.
    pub renamed: Vec<String>,
    /// The last `seq` exported so far (this run or earlier).
    pub last_seq: i64,
}

const STATE_FILE: &str = ".cardet-export.json";

/// What a folder was exported with, so that an incremental run stays consistent.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct ExportState {
    version: u32,
    schema: String,
    split_rule: String,
    val_fraction: f64,
    last_seq: i64,
}

struct Row {
    seq: i64,
    image_id: ImageId,
    image: Vec<u8>,
    label_text: Option<String>,
    split: Option<String>,
    file_name: String,
}

pub(crate) async fn export(
    client: &Client,
    schema: &str,
    options: &ExportOptions,
) -> Result<ExportSummary, Error> {
    let out = options.out.clone();
    tokio::fs::create_dir_all(&out)
        .await
        .map_err(io_error(&out))?;
    let state_path = out.join(STATE_FILE);
    let requested = ExportState {
        version: 1,
        schema: schema.to_string(),
        split_rule: match options.split_rule {
            SplitRule::Hash => "hash".into(),
            SplitRule::Source => "source".into(),
        },
        val_fraction: options.val_fraction,
        last_seq: 0,
    };
    let mut state = match tokio::fs::read(&state_path).await {
        Ok(bytes) => {
            let existing: ExportState =
                serde_json::from_slice(&bytes).map_err(|error| Error::BadExportState {
                    path: state_path.clone(),
                    reason: error.to_string(),
                })?;
            let describe = |s: &ExportState| {
                format!(
                    "schema {} split {} val fraction {}",
                    s.schema, s.split_rule, s.val_fraction
                )
            };
            if (
                &existing.schema,
                &existing.split_rule,
                existing.val_fraction,
            ) != (
                &requested.schema,
                &requested.split_rule,
                requested.val_fraction,
            ) {
                return Err(Error::ExportMismatch {
                    path: out.clone(),
                    existing: describe(&existing),
                    requested: describe(&requested),
                });
            }
            existing
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => requested,
        Err(error) => return Err(io_error(&state_path)(error)),
    };

    let watermark = committed_watermark(client, schema).await?;
    let mut summary = ExportSummary {
        last_seq: state.last_seq,
        ..ExportSummary::default()
    };
    let query = format!(
        "SELECT seq, image_id, image, label_text, split, source_path FROM {schema}.images
         WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"
    );
    loop {
        let rows = client
            .query(&query, &[&state.last_seq, &watermark, &options.page_size])
            .await
            .context("reading images to export")?;
        let Some(last) = rows.last() else { break };
        state.last_seq = last.get(0);
        let page: Vec<Row> = rows
            .iter()
            .map(|row| {
                let id: &[u8] = row.get(1);
                let source_path: String = row.get(5);
                Row {
                    seq: row.get(0),
                    image_id: ImageId::from_slice(id).unwrap_or(ImageId([0; 32])),
                    image: row.get(2),
                    label_text: row.get(3),
                    split: row.get(4),
                    file_name: source_path
                        .rsplit(['/', '\\'])
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                }
            })
            .collect();
        let (out_dir, rule, fraction) = (out.clone(), options.split_rule, options.val_fraction);
        let page_summary =
            tokio::task::spawn_blocking(move || write_page(&out_dir, rule, fraction, page))
                .await
                .map_err(|error| Error::Io {
                    path: out.clone(),
                    source: std::io::Error::other(error.to_string()),
                })??;
        summary.n_images += page_summary.n_images;
        summary.n_labels += page_summary.n_labels;
        summary.renamed.extend(page_summary.renamed);
        for (split, n) in page_summary.per_split {
            *summary.per_split.entry(split).or_default() += n;
        }
        let bytes = serde_json::to_vec_pretty(&state).unwrap_or_default();
        write_atomically(&state_path, &bytes)?;
    }
    summary.last_seq = state.last_seq;
    write_data_yaml(client, schema, &out, &options.names).await?;
    Ok(summary)
}

/// The largest `seq` below which every row is committed: taken while no writer
/// transaction is open (writers hold the lock shared for their whole transaction).
async fn committed_watermark(client: &Client, schema: &str) -> Result<i64, Error> {
    client
        .batch_execute("BEGIN")
        .await
        .context("starting the watermark read")?;
    let result = async {
        client
            .execute(
                "SELECT pg_advisory_xact_lock(hashtext('cardet-store seq ' || $1))",
                &[&schema],
            )
            .await
            .context("waiting for open writers")?;
        client
            .query_one(
                &format!("SELECT coalesce(max(seq), 0) FROM {schema}.images"),
                &[],
            )
            .await
            .context("reading the watermark")
            .map(|row| row.get::<_, i64>(0))
    }
    .await;
    client
        .batch_execute(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .await
        .context("ending the watermark read")?;
    result
}

fn write_page(
    out: &Path,
    rule: SplitRule,
    val_fraction: f64,
    page: Vec<Row>,
) -> Result<ExportSummary, Error> {
    let mut summary = ExportSummary::default();
    for row in page {
        let split = match (rule, &row.split) {
            (SplitRule::Source, Some(split)) => split.clone(),
            _ if row.image_id.unit_interval() < val_fraction => "val".to_string(),
            _ => "train".to_string(),
        };
        let image_dir = out.join("images").join(&split);
        let label_dir = out.join("labels").join(&split);
        std::fs::create_dir_all(&image_dir).map_err(io_error(&image_dir))?;
        std::fs::create_dir_all(&label_dir).map_err(io_error(&label_dir))?;
        let mut file_name = if row.file_name.is_empty() || row.file_name == ".." {
            format!("{}.jpg", row.image_id)
        } else {
            row.file_name.clone()
        };
        let mut image_path = image_dir.join(&file_name);
        if is_taken_by_another(&image_path, &row.image_id)? {
            file_name = suffixed(&file_name, &row.image_id);
            image_path = image_dir.join(&file_name);
            summary.renamed.push(format!("{split}/{}", row.file_name));
        }
        write_atomically(&image_path, &row.image)?;
        let label_path = label_dir.join(format!("{}.txt", stem(&file_name)));
        match &row.label_text {
            Some(text) => {
                write_atomically(&label_path, text.as_bytes())?;
                summary.n_labels += 1;
            }
            None => match std::fs::remove_file(&label_path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error(&label_path)(error));
                }
                _ => {}
            },
        }
        summary.n_images += 1;
        *summary.per_split.entry(split).or_default() += 1;
        summary.last_seq = row.seq;
    }
    Ok(summary)
}

/// True when the file exists and holds a different image: two sources used the
/// same file name. The same image (a resumed page) is simply rewritten.
fn is_taken_by_another(path: &Path, image_id: &ImageId) -> Result<bool, Error> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(<[u8; 32]>::from(Sha256::digest(&bytes)) != image_id.0),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error(path)(error)),
    }
}

fn stem(file_name: &str) -> &str {
    match file_name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => file_name,
    }
}

fn suffixed(file_name: &str, image_id: &ImageId) -> String {
    let short = &image_id.to_hex()[..12];
    match file_name.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() => format!("{stem}-{short}.{extension}"),
        _ => format!("{file_name}-{short}"),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".part");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes).map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error(path))
}

/// `data.yaml` for Ultralytics and `mwt`: the splits present and the class names.
async fn write_data_yaml(
    client: &Client,
    schema: &str,
    out: &Path,
    names: &[String],
) -> Result<(), Error> {
    let row = client
        .query_one(
            &format!(
                "SELECT coalesce(max((box->>'class')::int), -1)
                 FROM {schema}.images, jsonb_array_elements(coalesce(labels, '[]'::jsonb)) AS box"
            ),
            &[],
        )
        .await
        .context("reading the largest class id")?;
    let max_class: i32 = row.get(0);
    let n_classes = usize::try_from(max_class + 1).unwrap_or(0).max(names.len());
    let images = out.join("images");
    let splits: Vec<String> = match std::fs::read_dir(&images) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().is_dir())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    let pick = |candidates: &[&str]| {
        candidates
            .iter()
            .find(|name| splits.iter().any(|split| split == *name))
            .map(|name| format!("images/{name}"))
    };
    let mut yaml = format!(
        "# written by `sink export`\npath: {}\n",
        yaml_string(&out.display().to_string())
    );
    yaml += &format!(
        "train: {}\n",
        pick(&["train"]).unwrap_or_else(|| "images/train".into())
    );
    yaml += &format!(
        "val: {}\n",
        pick(&["val", "valid"]).unwrap_or_else(|| "images/val".into())
    );
    if let Some(test) = pick(&["test"]) {
        yaml += &format!("test: {test}\n");
    }
    yaml += "names:\n";
    for class_id in 0..n_classes {
        let name = names
            .get(class_id)
            .cloned()
            .unwrap_or_else(|| format!("class_{class_id}"));
        yaml += &format!("  {class_id}: {}\n", yaml_string(&name));
    }
    write_atomically(&out.join("data.yaml"), yaml.as_bytes())
}

fn yaml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(file_name: &str, expected: (&str, &str)) {
        let id = ImageId([0xab; 32]);
        assert_eq!(
            (stem(file_name), suffixed(file_name, &id).as_str()),
            expected
        );
    }

    #[test]
    fn names_keep_their_extension() {
        check("a.jpg", ("a", "a-abababababab.jpg"));
        check("a.b.png", ("a.b", "a.b-abababababab.png"));
        check("noext", ("noext", "noext-abababababab"));
        check(".hidden", (".hidden", ".hidden-abababababab"));
    }
}
