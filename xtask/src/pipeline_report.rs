//! The pipeline's report: `report.md` and `report.html` in the run folder, built
//! only from the files the steps left there (their `--json` summaries, the trainer's
//! `results.csv` and plots, the client's annotated images), so a report can be
//! rebuilt with `--from report` and never shows a number no step wrote.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

/// What the steps left, read back.
pub struct Report {
    run_dir: PathBuf,
    state: Value,
    produce: Value,
    sink: Value,
    train: Value,
    upload: Value,
    client: Value,
    /// Images relative to the run folder, by section.
    dataset_images: Vec<String>,
    training_images: Vec<String>,
    client_images: Vec<String>,
    results_csv: Option<String>,
}

impl Report {
    pub fn collect(run_dir: &Path) -> anyhow::Result<Report> {
        let json = |name: &str| read_json(&run_dir.join(name));
        Ok(Report {
            run_dir: run_dir.to_path_buf(),
            state: json("pipeline.json"),
            produce: json("produce.json"),
            sink: json("sink.json"),
            train: json("train.json"),
            upload: json("upload.json"),
            client: json("client.json"),
            dataset_images: images_in(run_dir, "report", 1),
            training_images: images_in(run_dir, "train", 8),
            client_images: images_in(run_dir, "client", 6),
            results_csv: std::fs::read_to_string(run_dir.join("train/results.csv")).ok(),
        })
    }

    /// Writes both files; returns their paths.
    pub fn write(&self, run_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        let markdown_path = run_dir.join("report.md");
        let html_path = run_dir.join("report.html");
        std::fs::write(&markdown_path, self.markdown())
            .with_context(|| format!("writing {}", markdown_path.display()))?;
        std::fs::write(&html_path, self.html())
            .with_context(|| format!("writing {}", html_path.display()))?;
        Ok((markdown_path, html_path))
    }

    /// (section, rows of (name, value)) shared by both renderings.
    fn tables(&self) -> Vec<(&'static str, Vec<(String, String)>)> {
        use clap::ValueEnum as _;
        let steps: Vec<(String, String)> = crate::flags::PipelineStep::value_variants()
            .iter()
            .map(|step| crate::pipeline::step_name(*step))
            .filter_map(|name| {
                self.state
                    .get(format!("seconds_{name}"))
                    .and_then(Value::as_f64)
                    .map(|seconds| (name.to_string(), format!("{seconds:.1} s")))
            })
            .collect();
        let mut model = scalars(&self.train);
        model.extend(scalars(&self.upload));
        vec![
            ("Steps", steps),
            ("Ingestion: produce", scalars(&self.produce)),
            ("Ingestion: sink", scalars_deep(&self.sink)),
            ("Training and registry", model),
            (
                "Serving: triton_client on the validation split",
                scalars(&self.client),
            ),
            ("Per-class AP", per_class(&self.client)),
        ]
    }

    fn mlflow_url(&self) -> Option<String> {
        ["mlflow_run_url", "run_url"]
            .iter()
            .find_map(|key| self.train.get(*key).and_then(Value::as_str))
            .map(str::to_string)
    }

    fn markdown(&self) -> String {
        let mut out = String::from("# cardet pipeline report\n\n");
        let _ = writeln!(out, "Run folder: `{}`\n", self.run_dir.display());
        if let Some(url) = self.mlflow_url() {
            let _ = writeln!(out, "MLflow run: <{url}>\n");
        }
        for (title, rows) in self.tables() {
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(out, "## {title}\n\n| | |\n|---|---|");
            for (name, value) in rows {
                let _ = writeln!(out, "| {name} | {value} |");
            }
            out.push('\n');
        }
        for (title, images) in self.image_sections() {
            if images.is_empty() {
                continue;
            }
            let _ = writeln!(out, "## {title}\n");
            for image in images {
                let _ = writeln!(out, "![{image}]({image})");
            }
            out.push('\n');
        }
        out
    }

    fn image_sections(&self) -> [(&'static str, &Vec<String>); 3] {
        [
            ("Dataset samples", &self.dataset_images),
            ("Training curves and validation", &self.training_images),
            ("Detections by the served model", &self.client_images),
        ]
    }

    fn html(&self) -> String {
        let mut body = String::new();
        let _ = writeln!(
            body,
            "<h1>cardet pipeline report</h1><p>Run folder: <code>{}</code></p>",
            escape(&self.run_dir.display().to_string())
        );
        if let Some(url) = self.mlflow_url() {
            let url = escape(&url);
            let _ = writeln!(body, "<p>MLflow run: <a href=\"{url}\">{url}</a></p>");
        }
        for (title, rows) in self.tables() {
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(body, "<h2>{}</h2><table>", escape(title));
            for (name, value) in rows {
                let _ = writeln!(
                    body,
                    "<tr><th>{}</th><td>{}</td></tr>",
                    escape(&name),
                    escape(&value)
                );
            }
            body.push_str("</table>\n");
        }
        if let Some(csv) = &self.results_csv {
            let _ = writeln!(
                body,
                "<h2>results.csv</h2><pre>{}</pre>",
                escape(&last_lines(csv, 12))
            );
        }
        for (title, images) in self.image_sections() {
            if images.is_empty() {
                continue;
            }
            let _ = writeln!(body, "<h2>{}</h2><div class=\"images\">", escape(title));
            for image in images {
                let image = escape(image);
                let _ = writeln!(
                    body,
                    "<figure><img src=\"{image}\" alt=\"{image}\"><figcaption>{image}</figcaption></figure>"
                );
            }
            body.push_str("</div>\n");
        }
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>cardet pipeline report</title>\n<style>{STYLE}</style></head>\n<body>\n{body}<script>{COUNT_LOADED_IMAGES}</script>\n</body></html>\n"
        )
    }
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;margin-bottom:1em}th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}th{background:#f4f4f4;font-weight:normal}.images{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}img{max-width:520px;border:1px solid #ddd}figcaption{font-size:12px;color:#555}pre{background:#f8f8f8;padding:8px;overflow-x:auto}";

/// Marks the page with how many images loaded, so a headless browser's DOM dump
/// proves they did (`data-images-loaded="loaded/total"` on `<body>`).
const COUNT_LOADED_IMAGES: &str = "window.addEventListener('load',function(){var all=document.images,ok=0;for(var i=0;i<all.length;i++){if(all[i].complete&&all[i].naturalWidth>0){ok++;}}document.body.setAttribute('data-images-loaded',ok+'/'+all.length);});";

/// Opens a report in headless Chromium (Debian's, installed by setup), saves a
/// screenshot, and returns (images loaded, images on the page) as the page's
/// load handler counted them.
pub fn open_in_browser(html: &Path, screenshot: &Path) -> anyhow::Result<(usize, usize)> {
    let url = format!("file://{}", std::path::absolute(html)?.display());
    let profile = tempfile_dir()?;
    // The flags keep Chromium off the network this machine does not have.
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
    ];
    let run = |extra: &[String]| -> anyhow::Result<std::process::Output> {
        std::process::Command::new("chromium")
            .args(common)
            .arg(format!(
                "--user-data-dir={}",
                profile.join(extra.len().to_string()).display()
            ))
            .args(extra)
            .arg(&url)
            .output()
            .context("running chromium (`cargo xtask setup` installs Debian's)")
    };
    let shot = run(&[
        format!("--screenshot={}", screenshot.display()),
        "--window-size=1200,2400".to_string(),
    ])?;
    anyhow::ensure!(
        screenshot.is_file(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
            .lines()
            .last()
            .unwrap_or_default()
    );
    let dom = run(&["--dump-dom".to_string()])?;
    let dom = String::from_utf8_lossy(&dom.stdout);
    let marker = "data-images-loaded=\"";
    let counted = dom
        .split_once(marker)
        .and_then(|(_, rest)| rest.split_once('"'))
        .and_then(|(count, _)| count.split_once('/'))
        .and_then(|(loaded, total)| Some((loaded.parse().ok()?, total.parse().ok()?)))
        .context("the page never finished loading in chromium (no image count)")?;
    let _ = std::fs::remove_dir_all(&profile);
    Ok(counted)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cardet-chromium-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn read_json(path: &Path) -> Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null)
}

/// Up to `limit` PNG/JPEG files under `run_dir/folder` (recursively, sorted),
/// relative to the run folder.
fn images_in(run_dir: &Path, folder: &str, limit: usize) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![run_dir.join(folder)];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .and_then(|ext| ext.to_str())
                .is_some_and(|ext| {
                    matches!(ext.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                })
                && let Ok(relative) = path.strip_prefix(run_dir)
            {
                found.push(relative.display().to_string());
            }
        }
    }
    found.sort();
    found.truncate(limit);
    found
}

/// The scalar fields of a JSON object as table rows.
fn scalars(value: &Value) -> Vec<(String, String)> {
    let Some(object) = value.as_object() else {
        return Vec::new();
    };
    object
        .iter()
        .filter_map(|(key, value)| format_scalar(value).map(|text| (key.clone(), text)))
        .collect()
}

/// Scalars one level down too (`run.records`, `export.images`).
fn scalars_deep(value: &Value) -> Vec<(String, String)> {
    let Some(object) = value.as_object() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (key, inner) in object {
        match format_scalar(inner) {
            Some(text) => rows.push((key.clone(), text)),
            None => rows.extend(
                scalars(inner)
                    .into_iter()
                    .map(|(name, text)| (format!("{key}.{name}"), text)),
            ),
        }
    }
    rows
}

fn format_scalar(value: &Value) -> Option<String> {
    match value {
        Value::Number(number) if number.is_f64() => {
            Some(format!("{:.4}", number.as_f64().unwrap_or_default()))
        }
        Value::Number(number) => Some(number.to_string()),
        Value::String(text) => Some(text.clone()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// Per-class AP from the client's summary (`per_class` or `classes`: a list of
/// objects with a name and AP fields).
fn per_class(client: &Value) -> Vec<(String, String)> {
    let list = ["per_class", "classes"]
        .iter()
        .find_map(|key| client.get(*key).and_then(Value::as_array));
    let Some(list) = list else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|class| {
            let name = class
                .get("name")
                .or_else(|| class.get("class"))
                .map(|name| {
                    name.as_str()
                        .map(str::to_string)
                        .unwrap_or(name.to_string())
                })?;
            let values: Vec<String> = class
                .as_object()?
                .iter()
                .filter(|(key, _)| key.to_ascii_lowercase().contains("ap"))
                .filter_map(|(key, value)| format_scalar(value).map(|text| format!("{key} {text}")))
                .collect();
            Some((name, values.join(", ")))
        })
        .collect()
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.first().copied().unwrap_or_default();
    let rest = &lines[lines.len().saturating_sub(count).max(1).min(lines.len())..];
    std::iter::once(header)
        .chain(rest.iter().copied())
        .collect::<Vec<_>>()
        .join("\n")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run folder with every step's summary and a few images gives a report that
    /// shows them, in Markdown and HTML, with the MLflow link and escaped text.
    #[test]
    fn report_shows_what_the_steps_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path();
        let write = |name: &str, text: &str| {
            let path = run.join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write(
            "pipeline.json",
            r#"{"seconds_train": 61.5, "seconds_client": 3.25}"#,
        );
        write(
            "train.json",
            r#"{"mAP50": 0.61, "mlflow_run_url": "http://127.0.0.1:5000/#/experiments/1/runs/abc"}"#,
        );
        write(
            "client.json",
            r#"{"images": 8, "images_per_second": 12.5, "per_class": [{"name": "car", "ap50": 0.7}]}"#,
        );
        write(
            "sink.json",
            r#"{"run": {"records": 40}, "export": {"images": 40}}"#,
        );
        write("train/results.csv", "epoch,loss\n1,3.0\n2,2.5\n");
        write("train/results.png", "png");
        write("client/a<b>.jpg", "jpg");
        let report = Report::collect(run).expect("collect");
        let (markdown, html) = report.write(run).expect("write");
        let markdown = std::fs::read_to_string(markdown).expect("md");
        let html = std::fs::read_to_string(html).expect("html");
        for text in [&markdown, &html] {
            assert!(text.contains("61.5 s"), "step time missing");
            assert!(text.contains("0.6100"), "mAP missing");
            assert!(
                text.contains("images_per_second"),
                "serving numbers missing"
            );
            assert!(text.contains("runs/abc"), "MLflow link missing");
            assert!(text.contains("run.records"), "nested sink numbers missing");
            assert!(text.contains("train/results.png"), "training plot missing");
            assert!(text.contains("car"), "per-class AP missing");
        }
        assert!(
            html.contains("client/a&lt;b&gt;.jpg"),
            "unescaped file name in HTML"
        );
        assert!(html.contains("data-images-loaded"), "no image-load marker");
    }

    /// The report opens in headless Chromium, its real images load (a broken one is
    /// counted as such), and a screenshot is written.
    #[test]
    fn report_opens_in_chromium_with_its_images() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path();
        let sample = crate::project_root().join("docs/synth-grid.png");
        for target in ["report/dataset.png", "train/results.png", "client/000.jpg"] {
            let path = run.join(target);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::copy(&sample, &path).expect("copy a real image");
        }
        std::fs::write(run.join("pipeline.json"), r#"{"seconds_stack": 1.0}"#).expect("write");
        let report = Report::collect(run).expect("collect");
        let (_, html) = report.write(run).expect("write");
        let screenshot = run.join("screenshot.png");
        let (loaded, total) = open_in_browser(&html, &screenshot).expect("chromium");
        assert_eq!((loaded, total), (3, 3), "images that did not load");
        assert!(std::fs::metadata(&screenshot).expect("screenshot").len() > 1000);

        // A missing image is seen as missing: the check can fail.
        std::fs::remove_file(run.join("client/000.jpg")).expect("remove");
        let (loaded, total) = open_in_browser(&html, &screenshot).expect("chromium");
        assert_eq!((loaded, total), (2, 3));
    }
}
