//! `cargo xtask serve-check`: serve's long checks, run on demand (the suite runs a
//! short smoke of each).
//!
//! - `fuzz`: the stable fuzz loop (`crates/serve/examples/fuzz.rs`) over the REST
//!   request parser, `config.pbtxt` and gRPC requests, `--secs` each.
//! - `load`: the release `serve` with YOLOv8n, `wrk` posting binary requests at
//!   `--connections` for `--secs` against 127.0.0.1; checks no crash and no non-2xx,
//!   resident memory before and after, and against a bare process holding one ONNX
//!   Runtime session; writes p50/p99 into BENCHMARKS.md. Both memory readings are
//!   taken with the server idle: the requests wrk left queued have finished and
//!   `serve` has had the time it waits before returning freed memory; "before"
//!   follows a 10 s burst of the same load, so first-use state of every batch size
//!   is in both.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::flags;
use crate::stack::free_port;

impl flags::ServeCheck {
    pub fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        match &self.check {
            flags::ServeCheckKind::Fuzz { secs, target } => fuzz(sh, *secs, target.as_deref()),
            flags::ServeCheckKind::Load { secs, connections } => load(sh, *secs, *connections),
        }
    }
}

fn fuzz(sh: &Shell, secs: u64, only: Option<&str>) -> anyhow::Result<()> {
    cmd!(sh, "cargo build --release -p cardet-serve --example fuzz").run()?;
    let binary = target_dir().join("release/examples/fuzz");
    let secs_text = secs.to_string();
    for target in ["rest", "pbtxt", "grpc"] {
        if only.is_some_and(|only| only != target) {
            continue;
        }
        println!("fuzz: {target} for {secs} s");
        let output = cmd!(sh, "{binary} {target} {secs_text}")
            .ignore_status()
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        println!("{}", stdout.trim());
        if !output.status.success() {
            bail!(
                "fuzz target {target} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::project_root().join("target"))
}

fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    status_kib(pid, "VmRSS:")
}

/// One `KiB` field of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Resident memory split into heap and other anonymous pages against file-backed
/// pages (mapped code such as ONNX Runtime's kernels), in MiB: growth in the first
/// is memory in use, growth in the second is code touched for the first time.
fn rss_split(pid: u32) -> String {
    let mib = |field| status_kib(pid, field).map_or(f64::NAN, |kib| kib / 1024.0);
    format!(
        "anon {:.0} MiB + file {:.0} MiB",
        mib("RssAnon:"),
        mib("RssFile:")
    )
}

/// Longer than `serve` waits, idle, before it returns freed memory to the system
/// (`RELEASE_MEMORY_WHEN_IDLE_FOR` in `crates/serve/src/batcher.rs`, 30 s).
const IDLE_SETTLE: Duration = Duration::from_secs(33);

/// Seconds of the warm-up burst before "before" is measured.
const WARM_UP_SECS: u64 = 10;

/// Requests queued or running in the server now, from `/metrics`.
fn pending_requests(metrics: u16) -> anyhow::Result<u64> {
    let text = ureq::get(&format!("http://127.0.0.1:{metrics}/metrics"))
        .call()
        .context("reading /metrics")?
        .body_mut()
        .read_to_string()
        .context("reading /metrics")?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with("nv_inference_pending_request_count{"))
        .filter_map(|line| line.split_whitespace().last()?.parse::<u64>().ok())
        .sum())
}

/// Waits until the server has answered every request still queued when the load
/// stopped, then for [`IDLE_SETTLE`].
fn wait_until_idle(metrics: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    while pending_requests(metrics)? > 0 {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("serve still has queued requests 300 s after the load stopped");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(IDLE_SETTLE);
    Ok(())
}

/// The percentile rows of `wrk --latency`, in milliseconds.
fn wrk_percentile(output: &str, percentile: &str) -> Option<f64> {
    let line = output
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(&format!("{percentile}%")))?;
    let value = line.split_whitespace().nth(1)?;
    let (number, unit) = value.split_at(value.find(|c: char| c.is_ascii_alphabetic())?);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

fn wrk_count(output: &str, prefix: &str) -> u64 {
    output
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn load(sh: &Shell, secs: u64, connections: u32) -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: apt-get install -y wrk (cargo xtask setup installs it)");
    }
    cmd!(
        sh,
        "cargo build --release -p serve -p cardet-serve --bins --example serve_bench"
    )
    .run()?;
    let release = target_dir().join("release");
    // A bare process with one session: the memory yardstick (it also makes the model).
    let bare = cmd!(sh, "{release}/examples/serve_bench rss").read()?;
    let bare_kib: f64 =
        serde_json::from_str::<serde_json::Value>(bare.lines().last().unwrap_or(""))?["value"]
            .as_f64()
            .context("bare rss")?;
    let home = crate::home::CardetHome::from_env();
    let model = home.root.join("fixtures/serve/yolov8n-dynamic.onnx");
    let work = std::env::temp_dir().join(format!("cardet-serve-load-{}", std::process::id()));
    let repository = work.join("repo");
    std::fs::create_dir_all(repository.join("yolov8n/1"))?;
    std::fs::copy(&model, repository.join("yolov8n/1/model.onnx"))?;
    std::fs::write(
        repository.join("yolov8n/config.pbtxt"),
        "max_batch_size: 8\ninput [{ name: \"images\" data_type: TYPE_FP32 dims: [3, 640, 640] }]\n\
         output [{ name: \"output0\" data_type: TYPE_FP32 dims: [-1, -1] }]\n\
         dynamic_batching { max_queue_delay_microseconds: 0 }\n",
    )?;
    let header = r#"{"inputs":[{"name":"images","shape":[1,3,640,640],"datatype":"FP32","parameters":{"binary_data_size":4915200}}],"outputs":[{"name":"output0","parameters":{"binary_data":true}}]}"#;
    let mut body = header.as_bytes().to_vec();
    for i in 0..3 * 640 * 640usize {
        body.extend_from_slice(&(((i * 7919) % 1000) as f32 / 1000.0).to_le_bytes());
    }
    let body_path = work.join("body.bin");
    std::fs::write(&body_path, &body)?;
    let script = work.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nlocal f = io.open(\"{}\", \"rb\")\nwrk.body = f:read(\"*all\")\nf:close()\n\
             wrk.headers[\"Inference-Header-Content-Length\"] = \"{}\"\n",
            body_path.display(),
            header.len()
        ),
    )?;
    let (http, grpc, metrics) = (free_port()?, free_port()?, free_port()?);
    let mut server = Command::new(release.join("serve"))
        .args(["--model-repository", &repository.display().to_string()])
        .args(["--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1"])
        .args([
            "--http-port",
            &http.to_string(),
            "--grpc-port",
            &grpc.to_string(),
        ])
        .args([
            "--metrics-port",
            &metrics.to_string(),
            "--intra-op-threads",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(work.join("serve.log"))?))
        .spawn()
        .context("starting serve")?;
    let result = drive(
        &mut server,
        http,
        metrics,
        secs,
        connections,
        &script,
        &body,
        header.len(),
        bare_kib,
    );
    // SIGTERM: a graceful stop must exit 0.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = server.wait()?;
    let report = result?;
    if !status.success() {
        bail!(
            "serve exited with {status} after SIGTERM; log in {}",
            work.display()
        );
    }
    println!("{report}");
    write_report(&crate::project_root().join("BENCHMARKS.md"), &report)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn drive(
    server: &mut std::process::Child,
    http: u16,
    metrics: u16,
    secs: u64,
    connections: u32,
    script: &Path,
    body: &[u8],
    header_length: usize,
    bare_kib: f64,
) -> anyhow::Result<String> {
    let base = format!("http://127.0.0.1:{http}");
    let started = Instant::now();
    loop {
        if let Ok(response) = ureq::get(&format!("{base}/v2/health/ready")).call()
            && response.status() == 200
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) || server.try_wait()?.is_some() {
            bail!("serve did not become ready");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..3 {
        ureq::post(&format!("{base}/v2/models/yolov8n/infer"))
            .header(
                "Inference-Header-Content-Length",
                &header_length.to_string(),
            )
            .send(body)
            .context("warm-up request")?;
    }
    wait_until_idle(metrics)?;
    let cold = rss_kib(server.id())?;
    let cold_split = rss_split(server.id());
    let url = format!("{base}/v2/models/yolov8n/infer");
    let script_text = script.display().to_string();
    let connections_text = connections.to_string();
    let run_wrk = |secs: u64| {
        let duration = format!("{secs}s");
        Command::new("wrk")
            .args([
                "-t2",
                "-c",
                &connections_text,
                "-d",
                &duration,
                "--timeout",
                "120s",
                "--latency",
                "-s",
                &script_text,
                &url,
            ])
            .output()
            .context("running wrk")
    };
    // "Before" is the server's idle memory once it has run every batch size the load
    // brings (ONNX Runtime sets up per-shape state on first use): a short burst of
    // the same load, then idle. What the check is after is growth with sustained
    // load, which the long run then shows.
    run_wrk(WARM_UP_SECS)?;
    wait_until_idle(metrics)?;
    let before = rss_kib(server.id())?;
    let before_split = rss_split(server.id());
    let output = run_wrk(secs)?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    println!("{text}");
    if server.try_wait()?.is_some() {
        bail!("serve crashed under load");
    }
    let busy_kib = rss_kib(server.id())?;
    wait_until_idle(metrics)?;
    let after = rss_kib(server.id())?;
    println!(
        "resident memory: {:.0} MiB after three single requests ({cold_split}), {:.0} MiB after the warm-up burst ({before_split}), {:.0} MiB as wrk stopped, {:.0} MiB idle after ({})",
        cold / 1024.0,
        before / 1024.0,
        busy_kib / 1024.0,
        after / 1024.0,
        rss_split(server.id())
    );
    let p50 = wrk_percentile(&text, "50").context("no p50 in wrk's output")?;
    let p99 = wrk_percentile(&text, "99").context("no p99 in wrk's output")?;
    let non_2xx = wrk_count(&text, "Non-2xx or 3xx responses:");
    let completed: u64 = text
        .lines()
        .find(|line| line.contains("requests in"))
        .and_then(|line| line.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let socket_errors = text
        .lines()
        .find(|line| line.contains("Socket errors"))
        .unwrap_or("Socket errors: none")
        .trim()
        .to_string();
    let metrics_text = ureq::get(&format!("http://127.0.0.1:{metrics}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    let failures = metrics_text
        .lines()
        .find(|line| line.starts_with("nv_inference_request_failure{"))
        .and_then(|line| line.split_whitespace().last()?.parse::<u64>().ok())
        .unwrap_or(0);
    let growth = (after - before) / before * 100.0;
    let versus_bare = after / bare_kib;
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let report = format!(
        "| {connections} connections, {secs} s, YOLOv8n 640 batch 1, binary REST | {completed} | {non_2xx} | {failures} | {p50:.0} ms | {p99:.0} ms | {:.0} MiB → {:.0} MiB ({growth:+.1}%; {:.0} MiB as the load stopped) | {:.2}× of {:.0} MiB | {socket_errors} | {date} | `cargo xtask serve-check load --secs {secs} --connections {connections}` |",
        before / 1024.0,
        after / 1024.0,
        busy_kib / 1024.0,
        versus_bare,
        bare_kib / 1024.0,
    );
    let mut problems = Vec::new();
    if non_2xx > 0 {
        problems.push(format!("{non_2xx} non-2xx responses"));
    }
    // The goal is no growth: idle memory that ends below "before" (the burst's
    // reading can catch memory the server has not handed back yet) is not a leak.
    if growth > 5.0 {
        problems.push(format!("resident memory grew {growth:+.1}% over the run"));
    }
    if versus_bare > 1.2 {
        problems.push(format!(
            "resident memory {versus_bare:.2}× a bare session's"
        ));
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        println!("{report}");
        bail!("load check: {}", problems.join("; "))
    }
}

const LOAD_BEGIN: &str = "<!-- serve-load:begin -->";
const LOAD_END: &str = "<!-- serve-load:end -->";

fn write_report(path: &Path, row: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let table = format!(
        "{LOAD_BEGIN}\n| load | requests | non-2xx | failed | p50 | p99 | resident memory before → after, idle | vs a bare ORT session | socket errors | date | command |\n|---|---|---|---|---|---|---|---|---|---|---|\n{row}\n{LOAD_END}"
    );
    let updated = match (text.find(LOAD_BEGIN), text.find(LOAD_END)) {
        (Some(start), Some(stop)) if stop > start => {
            format!(
                "{}{table}{}",
                &text[..start],
                &text[stop + LOAD_END.len()..]
            )
        }
        _ => format!(
            "{}\n\n## serve load\n\n`wrk` against `serve` on 127.0.0.1 (see `xtask/src/serve_checks.rs`).\n\n{table}\n",
            text.trim_end()
        ),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let output = "  Latency Distribution\n     50%  812.40ms\n     75%    1.02s\n     99%    1.50s\n  1200 requests in 1.00m, 10MB read\n  Non-2xx or 3xx responses: 3\n";
        assert_eq!(wrk_percentile(output, "50"), Some(812.4));
        assert_eq!(wrk_percentile(output, "99"), Some(1500.0));
        assert_eq!(wrk_count(output, "Non-2xx or 3xx responses:"), 3);
    }
}
