//! `cargo xtask bench`: ours against a named baseline, side by side in one run.
//!
//! A case is two commands, ours and the baseline, each printing as its last stdout
//! line one JSON object `{"value": f64, "unit": "...", "higher_is_better": bool}`.
//! The harness runs them interleaved (ours, baseline, ours, ...) so that a machine
//! that slows down mid-run slows both. Where the machine drifts faster than one
//! command runs, a case's single command runs both sides itself, alternating in
//! short turns, and its JSON carries the baseline's value as `baseline` (a paired
//! case: its `baseline` command is empty). The harness takes medians and writes one row per case
//! into the area's table in BENCHMARKS.md: medians, ratio (above 1 means ours is
//! better; for a paired case the median of the runs' own ratios), spread, machine, date and the command that made it. Areas with
//! criterion micro-benchmarks also run `cargo bench` for their package.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::flags;
use crate::stack::{self, HostPort, Service, StackConfig};

/// One benchmark area: the cases it compares and its criterion package, if any.
pub struct Area {
    pub name: &'static str,
    pub about: &'static str,
    pub cases: &'static [Case],
    pub criterion_package: Option<&'static str>,
    /// Runs against a broker of its own (see [`ScratchBroker`]), named to the cases
    /// by `CARDET_BENCH_BOOTSTRAP`.
    pub scratch_broker: bool,
}

pub struct Case {
    pub name: &'static str,
    pub ours: &'static [&'static str],
    pub baseline_name: &'static str,
    /// The baseline's command; empty for a paired case, whose `ours` command runs
    /// both sides and prints the baseline's value as `baseline` in its JSON.
    pub baseline: &'static [&'static str],
    /// Needs a CUDA device; run only with `--gpu`.
    pub gpu: bool,
    /// Run ours and the baseline at the same time (each gets half the machine), for
    /// wall-clock budgets: load from anything else then hits both sides alike.
    pub concurrent: bool,
}

/// Every area. Each issue that brings a measured goal adds its area here.
pub const AREAS: &[Area] = &[SERVE, DETECT, MODEL, STREAMING, TRAIN];

/// Training quality for the same wall-clock budget: `mwt train` against `yolo train`,
/// both from scratch, both scored by `mwt val` (`crates/train/benches/map_budget.sh`).
/// The per-step speed and memory comparison is `cargo run --release -p cardet-train
/// --example train_step_bench`, which runs both sides in one process tree.
const TRAIN: Area = Area {
    name: "train",
    about: "mAP@0.5 on the synthetic val split after the same wall-clock budget (default 12 minutes; 500 scenes at 256 px, batch 16, from scratch, each side's default optimiser), `mwt train` against Ultralytics `yolo train`; both best checkpoints scored by `mwt val`. CARDET_BENCH_TRAIN_{MINUTES,IMAGES,IMGSZ,BATCH,THREADS} change the setting.",
    cases: &[
        Case {
            name: "mAP@0.5 after the same training budget",
            ours: &["bash", "crates/train/benches/map_budget.sh", "ours"],
            baseline_name: "Ultralytics 8.4.190 `yolo train`",
            baseline: &["bash", "crates/train/benches/map_budget.sh", "ultralytics"],
            gpu: false,
            concurrent: true,
        },
        // `cargo xtask bench train --gpu`: one training step (yolov8n, 320 px, batch 8,
        // SGD) on CUDA, ours against Ultralytics' model and loss in eager PyTorch on
        // the same weights and batch (`crates/train/examples/train_step_bench.rs`).
        Case {
            name: "train step on CUDA, yolov8n 320 batch 8 (ms/step)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-train",
                "--example",
                "train_step_bench",
                "--",
                "--side",
                "ours",
                "--steps",
                "30",
                "--device",
                "cuda",
            ],
            baseline_name: "Ultralytics, PyTorch eager",
            baseline: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-train",
                "--example",
                "train_step_bench",
                "--",
                "--side",
                "ultralytics",
                "--steps",
                "30",
                "--device",
                "cuda",
            ],
            gpu: true,
            concurrent: false,
        },
    ],
    criterion_package: None,
    scratch_broker: false,
};

/// `produce` against PyPI confluent-kafka on the same librdkafka sending the same
/// records, and `sink`'s batched transactions against one INSERT per row, both on
/// a broker of the bench's own and the stack's database (`streaming/bench/bench.sh`).
const STREAMING: Area = Area {
    name: "streaming",
    about: "`produce` MB/s against a Python confluent-kafka producer (same librdkafka, idempotent, acks=all, the same 2,000 640x480 JPEGs as the same JSON records) and `sink` rows/s against one autocommitted INSERT per row from the same topic (5,000 64x48 JPEGs, as JSON records and, in a second case, as `produce --format binary` records). Needs `cargo xtask stack up postgres`; the broker is the bench's own, started and deleted around the run.",
    cases: &[
        Case {
            name: "produce MB/s",
            ours: &["bash", "streaming/bench/bench.sh", "produce-ours"],
            baseline_name: "confluent-kafka 2.16.1 (Python)",
            baseline: &["bash", "streaming/bench/bench.sh", "produce-python"],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "sink rows/s",
            ours: &["bash", "streaming/bench/bench.sh", "sink-ours"],
            baseline_name: "one INSERT per row",
            baseline: &["bash", "streaming/bench/bench.sh", "sink-row-insert"],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "sink rows/s, binary records (`produce --format binary`)",
            ours: &["bash", "streaming/bench/bench.sh", "sink-ours", "binary"],
            baseline_name: "one INSERT per row",
            baseline: &[
                "bash",
                "streaming/bench/bench.sh",
                "sink-row-insert",
                "binary",
            ],
            gpu: false,
            concurrent: false,
        },
    ],
    criterion_package: None,
    scratch_broker: true,
};

/// cardet-detect's post-processing against the same in vectorised numpy
/// (`crates/detect/examples/postprocess_bench.rs`, `crates/detect/benches/postprocess_numpy.py`),
/// on the very same `[1, 84, 8400]` tensor.
const DETECT: Area = Area {
    name: "detect",
    about: "YOLOv8 decode + class-aware NMS of one `[1, 84, 8400]` output (confidence 0.25, IoU 0.45, 300 detections, boxes mapped back through the letterbox), cardet-detect against a vectorised numpy implementation of the same post-processing; single thread each.",
    cases: &[
        Case {
            name: "decode + NMS, 8400 anchors, ~300 over the threshold (ms per output)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-detect",
                "--example",
                "postprocess_bench",
                "--",
                "--candidates",
                "300",
            ],
            baseline_name: "numpy",
            baseline: &[
                "sh",
                "-c",
                "cargo run --release -q -p cardet-detect --example postprocess_bench -- --candidates 300 --dump target/detect-bench/c300.f32 && \"${CARDET_HOME:-$HOME/.cache/cardet}/venv/bin/python\" crates/detect/benches/postprocess_numpy.py target/detect-bench/c300.f32",
            ],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "decode + NMS, 8400 anchors, ~3000 over the threshold (ms per output)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-detect",
                "--example",
                "postprocess_bench",
                "--",
                "--candidates",
                "3000",
            ],
            baseline_name: "numpy",
            baseline: &[
                "sh",
                "-c",
                "cargo run --release -q -p cardet-detect --example postprocess_bench -- --candidates 3000 --dump target/detect-bench/c3000.f32 && \"${CARDET_HOME:-$HOME/.cache/cardet}/venv/bin/python\" crates/detect/benches/postprocess_numpy.py target/detect-bench/c3000.f32",
            ],
            gpu: false,
            concurrent: false,
        },
    ],
    scratch_broker: false,
    criterion_package: Some("cardet-detect"),
};

/// cardet-model's yolov8n forward pass at 640 on CPU (random weights, eval mode):
/// ours in tch against Ultralytics in PyTorch eager, our ONNX export against
/// Ultralytics' ONNX export, both in ONNX Runtime with 2 threads
/// (`crates/model/examples/forward_bench.rs`, `crates/model/benches/forward_{torch,onnx}.py`).
const MODEL: Area = Area {
    name: "model",
    about: "YOLOv8n forward pass at 640x640 on CPU, random weights, eval mode, median of 10 after 2 warm-ups: cardet-model in tch against Ultralytics' DetectionModel in PyTorch eager (same libtorch 2.13, unfused BatchNorm on both sides), and cardet's ONNX export (dynamic batch, BN folded) against Ultralytics' own export (static batch) in ONNX Runtime 1.32 with 2 intra-op threads.",
    cases: &[
        Case {
            name: "yolov8n 640, batch 1, tch vs PyTorch eager (ms/batch)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-model",
                "--example",
                "forward_bench",
                "--",
                "tch",
                "--batch",
                "1",
            ],
            baseline_name: "Ultralytics, PyTorch eager",
            baseline: &[
                "sh",
                "-c",
                "\"${CARDET_HOME:-$HOME/.cache/cardet}/venv/bin/python\" crates/model/benches/forward_torch.py --batch 1",
            ],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "yolov8n 640, batch 8, tch vs PyTorch eager (ms/batch)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-model",
                "--example",
                "forward_bench",
                "--",
                "tch",
                "--batch",
                "8",
                "--iters",
                "5",
            ],
            baseline_name: "Ultralytics, PyTorch eager",
            baseline: &[
                "sh",
                "-c",
                "\"${CARDET_HOME:-$HOME/.cache/cardet}/venv/bin/python\" crates/model/benches/forward_torch.py --batch 8 --iters 5",
            ],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "yolov8n 640, batch 1, our ONNX vs Ultralytics' ONNX in ORT (ms/batch)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-model",
                "--example",
                "forward_bench",
                "--",
                "onnx",
                "--batch",
                "1",
            ],
            baseline_name: "Ultralytics' ONNX export, ORT (Python)",
            baseline: &[
                "sh",
                "-c",
                "\"${CARDET_HOME:-$HOME/.cache/cardet}/venv/bin/python\" crates/model/benches/forward_onnx.py --batch 1",
            ],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "yolov8n 640, batch 8, our ONNX vs Ultralytics' ONNX in ORT (ms/batch)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-model",
                "--example",
                "forward_bench",
                "--",
                "onnx",
                "--batch",
                "8",
                "--iters",
                "5",
            ],
            baseline_name: "Ultralytics' ONNX export, ORT (Python)",
            baseline: &[
                "sh",
                "-c",
                "\"${CARDET_HOME:-$HOME/.cache/cardet}/venv/bin/python\" crates/model/benches/forward_onnx.py --batch 8 --iters 5",
            ],
            gpu: false,
            concurrent: false,
        },
    ],
    criterion_package: None,
    scratch_broker: false,
};

/// `serve` against a raw ONNX Runtime session in the same process, same model and
/// threads (`crates/serve/examples/serve_bench.rs`). Paired cases: `serve_bench pair`
/// alternates the two sides in short turns, because this VM's speed drifts by ±20%
/// within a minute (a ratio of two separate 10 s runs was mostly that drift).
const SERVE: Area = Area {
    name: "serve",
    about: "`serve` (REST with binary tensor data, gRPC `ModelInfer` with raw contents, or REST with the tensors in system shared-memory regions; YOLOv8n 640, 2 ORT intra-op threads, one instance split in two while requests wait unless the row says otherwise) against a raw ONNX Runtime session in the same process with the same threads, both sides alternating in turns of 0.5 s (one client) or 2 s (8 clients; the raw side runs batch 1, 2, 4 and 8 in each turn) within each run, `serve_bench pair`.",
    cases: &[
        Case {
            name: "batch 1, one client (images/s)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-serve",
                "--example",
                "serve_bench",
                "--",
                "pair",
                "--batch",
                "1",
                "--slices",
                "100",
                "--slice-ms",
                "500",
            ],
            baseline_name: "raw ORT session, batch 1",
            baseline: &[],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "batch 1, one client, gRPC ModelInfer with raw contents (images/s)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-serve",
                "--example",
                "serve_bench",
                "--",
                "pair",
                "--batch",
                "1",
                "--slices",
                "100",
                "--slice-ms",
                "500",
                "--grpc",
            ],
            baseline_name: "raw ORT session, batch 1",
            baseline: &[],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "8 concurrent clients, dynamic batching (images/s)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-serve",
                "--example",
                "serve_bench",
                "--",
                "pair",
                "--clients",
                "8",
                "--best",
                "--slices",
                "10",
                "--secs",
                "2",
            ],
            baseline_name: "raw ORT session, best of batch 1/2/4/8",
            baseline: &[],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "8 concurrent clients, dynamic batching, the instance never split (images/s)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-serve",
                "--example",
                "serve_bench",
                "--",
                "pair",
                "--clients",
                "8",
                "--best",
                "--slices",
                "10",
                "--secs",
                "2",
                "--no-split",
            ],
            baseline_name: "raw ORT session, best of batch 1/2/4/8",
            baseline: &[],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "8 concurrent clients, dynamic batching up to 2 images (images/s)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-serve",
                "--example",
                "serve_bench",
                "--",
                "pair",
                "--clients",
                "8",
                "--best",
                "--slices",
                "10",
                "--secs",
                "2",
                "--max-batch",
                "2",
            ],
            baseline_name: "raw ORT session, best of batch 1/2/4/8",
            baseline: &[],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "8 concurrent clients, dynamic batching, 2 instances x 1 ORT thread (images/s)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-serve",
                "--example",
                "serve_bench",
                "--",
                "pair",
                "--clients",
                "8",
                "--best",
                "--slices",
                "10",
                "--secs",
                "2",
                "--instances",
                "2",
                "--threads",
                "1",
                "--raw-threads",
                "2",
            ],
            baseline_name: "the same raw ORT session (2 threads), best of batch 1/2/4/8",
            baseline: &[],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "batch 1, one client, tensors through system shared memory (images/s)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-serve",
                "--example",
                "serve_bench",
                "--",
                "pair",
                "--batch",
                "1",
                "--slices",
                "100",
                "--slice-ms",
                "500",
                "--shared-memory",
            ],
            baseline_name: "raw ORT session, batch 1",
            baseline: &[],
            gpu: false,
            concurrent: false,
        },
        Case {
            name: "8 concurrent clients, dynamic batching, system shared memory (images/s)",
            ours: &[
                "cargo",
                "run",
                "--release",
                "-q",
                "-p",
                "cardet-serve",
                "--example",
                "serve_bench",
                "--",
                "pair",
                "--clients",
                "8",
                "--best",
                "--slices",
                "10",
                "--secs",
                "2",
                "--shared-memory",
            ],
            baseline_name: "raw ORT session, best of batch 1/2/4/8",
            baseline: &[],
            gpu: false,
            concurrent: false,
        },
        // `cargo xtask bench serve --gpu`: the same `serve` with dynamic batching and
        // without, on CUDA device 0 (needs `cargo xtask setup --gpu`).
        Case {
            name: "8 concurrent clients on CUDA, dynamic batching (queue delay 1 ms) on against off (images/s)",
            ours: &[
                "bash",
                "crates/serve/benches/gpu_batching.sh",
                "--shared-memory",
                "--clients",
                "8",
                "--max-batch",
                "8",
                "--threads",
                "4",
                "--delay-us",
                "1000",
            ],
            baseline_name: "the same serve without dynamic batching",
            baseline: &[],
            gpu: true,
            concurrent: false,
        },
        Case {
            name: "8 concurrent clients on CUDA, dynamic batching (queue delay 0) on against off (images/s)",
            ours: &[
                "bash",
                "crates/serve/benches/gpu_batching.sh",
                "--shared-memory",
                "--clients",
                "8",
                "--max-batch",
                "8",
                "--threads",
                "4",
            ],
            baseline_name: "the same serve without dynamic batching",
            baseline: &[],
            gpu: true,
            concurrent: false,
        },
    ],
    criterion_package: None,
    scratch_broker: false,
};

impl flags::Bench {
    pub fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        if self.list || AREAS.is_empty() {
            list();
            if AREAS.is_empty() && !self.list {
                bail!("no benchmark area is registered yet");
            }
            return Ok(());
        }
        let areas: Vec<&Area> = match &self.area {
            Some(name) => vec![
                AREAS
                    .iter()
                    .find(|area| area.name == name)
                    .with_context(|| {
                        format!("unknown area {name:?}; `cargo xtask bench --list` lists them")
                    })?,
            ],
            None => AREAS.iter().collect(),
        };
        let machine = machine_description(self.gpu);
        let invocation = format!(
            "cargo xtask bench {}{}--repeat {}",
            self.area
                .as_deref()
                .map(|a| format!("{a} "))
                .unwrap_or_default(),
            if self.gpu { "--gpu " } else { "" },
            self.repeat
        );
        for area in areas {
            let _env = crate::home::CardetHome::from_env().shared_build_env(sh);
            if let Some(package) = area.criterion_package {
                cmd!(sh, "cargo bench --package {package}").run()?;
            }
            let broker = if area.scratch_broker {
                Some(ScratchBroker::start(area.name)?)
            } else {
                None
            };
            let env: Vec<(&str, String)> = broker
                .iter()
                .map(|broker| ("CARDET_BENCH_BOOTSTRAP", broker.config.kafka.to_string()))
                .collect();
            let mut rows = Vec::new();
            for case in area.cases.iter().filter(|case| case.gpu == self.gpu) {
                println!(
                    "bench: {} / {} ({} runs each, {})",
                    area.name,
                    case.name,
                    self.repeat,
                    if case.baseline.is_empty() {
                        "both sides alternating within each run"
                    } else {
                        "interleaved"
                    }
                );
                let result = run_case(case, self.repeat, &env)?;
                let row = result.row(case, &machine, &invocation);
                println!("{row}");
                rows.push(row);
            }
            if !self.no_write && !rows.is_empty() {
                write_rows(
                    &crate::project_root().join("BENCHMARKS.md"),
                    area,
                    self.gpu,
                    &rows,
                )?;
            }
        }
        Ok(())
    }
}

fn list() {
    if AREAS.is_empty() {
        println!(
            "no benchmark area is registered yet (each issue adds its own in xtask/src/bench.rs)"
        );
    }
    for area in AREAS {
        println!("{}: {}", area.name, area.about);
        for case in area.cases {
            println!(
                "  {}{} against {}",
                case.name,
                if case.gpu { " (gpu)" } else { "" },
                case.baseline_name
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub value: f64,
    pub higher_is_better: bool,
    /// The baseline's value, from a command that ran both sides (a paired case).
    pub baseline: Option<f64>,
}

#[derive(Debug)]
pub struct CaseResult {
    pub unit: String,
    pub ours: Vec<f64>,
    pub baseline: Vec<f64>,
    pub higher_is_better: bool,
    /// Run i of each side measured the same minutes (a paired case).
    pub paired: bool,
}

/// A broker of the bench's own, in `$CARDET_HOME/bench/<area>/broker`, stopped and
/// deleted when dropped. Every run adds topics, and the embedded broker shrinks only
/// by losing all of them (`stack reset`): 5-run streaming benches grew the stack's
/// broker file to 44 GB over two days. The stack's broker is left alone.
struct ScratchBroker {
    config: StackConfig,
}

impl ScratchBroker {
    fn start(area: &str) -> anyhow::Result<ScratchBroker> {
        let home = crate::home::CardetHome::from_env();
        let mut config = StackConfig::load(&home, false)?;
        config.dir = home.root.join("bench").join(area).join("broker");
        // What an interrupted run left: stopped by its recorded PID, then deleted.
        stack::down(&config, &[Service::Kafka])?;
        if config.dir.exists() {
            std::fs::remove_dir_all(&config.dir)
                .with_context(|| format!("removing {}", config.dir.display()))?;
        }
        config.kafka = HostPort {
            host: "127.0.0.1".into(),
            port: stack::free_port()?,
        };
        stack::up(&home, &config, &[Service::Kafka])?;
        Ok(ScratchBroker { config })
    }
}

impl Drop for ScratchBroker {
    fn drop(&mut self) {
        if let Err(error) = stack::down(&self.config, &[Service::Kafka]) {
            eprintln!("bench: stopping the scratch broker: {error:#}");
            return;
        }
        let _ = std::fs::remove_dir_all(&self.config.dir);
    }
}

fn run_case(case: &Case, repeat: usize, env: &[(&str, String)]) -> anyhow::Result<CaseResult> {
    let mut result = CaseResult {
        unit: String::new(),
        ours: Vec::new(),
        baseline: Vec::new(),
        higher_is_better: false,
        paired: case.baseline.is_empty(),
    };
    for _ in 0..repeat.max(1) {
        if case.baseline.is_empty() {
            let (both, unit) = run_side(case.ours, env)?;
            let baseline = both.baseline.with_context(|| {
                format!(
                    "{}: a paired case's JSON needs a numeric `baseline`",
                    case.ours.join(" ")
                )
            })?;
            result.unit = unit;
            result.higher_is_better = both.higher_is_better;
            result.ours.push(both.value);
            result.baseline.push(baseline);
            continue;
        }
        let (ours, baseline) = if case.concurrent {
            std::thread::scope(|scope| {
                let baseline = scope.spawn(|| run_side(case.baseline, env));
                let ours = run_side(case.ours, env);
                let baseline = baseline
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the baseline's thread panicked")));
                (ours, baseline)
            })
        } else {
            let ours = run_side(case.ours, env);
            (ours, run_side(case.baseline, env))
        };
        let (ours, unit) = ours?;
        let (baseline, _) = baseline?;
        result.unit = unit;
        result.higher_is_better = ours.higher_is_better;
        result.ours.push(ours.value);
        result.baseline.push(baseline.value);
    }
    Ok(result)
}

/// Runs one side's command (with `env` added) and reads its JSON sample.
fn run_side(argv: &[&str], env: &[(&str, String)]) -> anyhow::Result<(Sample, String)> {
    let (program, args) = argv.split_first().context("empty benchmark command")?;
    let home = crate::home::CardetHome::from_env();
    let output = Command::new(program)
        .args(args)
        .current_dir(crate::project_root())
        // The builds a script starts share the target folder and libtorch path.
        .env("CARGO_TARGET_DIR", home.shared_target_dir())
        .env("LIBTORCH", home.libtorch_for_builds())
        .env("CARDET_ORT_DYLIB_DEFAULT", home.onnxruntime_link())
        .envs(env.iter().map(|(name, value)| (name, value)))
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_sample(&String::from_utf8_lossy(&output.stdout))
        .with_context(|| format!("output of {}", argv.join(" ")))
}

pub fn parse_sample(stdout: &str) -> anyhow::Result<(Sample, String)> {
    let last = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .context("no output")?;
    let json: serde_json::Value = serde_json::from_str(last).context("last line is not JSON")?;
    let value = json["value"].as_f64().context("no numeric `value`")?;
    let unit = json["unit"].as_str().unwrap_or("").to_string();
    let higher_is_better = json["higher_is_better"].as_bool().unwrap_or(false);
    Ok((
        Sample {
            value,
            higher_is_better,
            baseline: json["baseline"].as_f64(),
        },
        unit,
    ))
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// (max - min) / median, as a fraction.
pub fn spread(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    (max - min) / median(values)
}

impl CaseResult {
    /// Above 1 means ours is better, whichever way the unit points. For a paired
    /// case, the median of each run's own ratio: both sides of a run saw the same
    /// minutes of the machine, while the medians of the two sides may come from runs
    /// minutes apart.
    pub fn ratio(&self) -> f64 {
        let better = |ours: f64, baseline: f64| {
            if self.higher_is_better {
                ours / baseline
            } else {
                baseline / ours
            }
        };
        if self.paired {
            let per_run: Vec<f64> = self
                .ours
                .iter()
                .zip(&self.baseline)
                .map(|(&ours, &baseline)| better(ours, baseline))
                .collect();
            return median(&per_run);
        }
        better(median(&self.ours), median(&self.baseline))
    }

    fn row(&self, case: &Case, machine: &str, invocation: &str) -> String {
        format!(
            "| {} | {:.4} {unit} | {} {:.4} {unit} | **{:.2}x** | ±{:.0}% / ±{:.0}% | {} | {machine} | {} | `{invocation}` |",
            case.name,
            median(&self.ours),
            case.baseline_name,
            median(&self.baseline),
            self.ratio(),
            spread(&self.ours) * 50.0,
            spread(&self.baseline) * 50.0,
            self.ours.len(),
            today(),
            unit = self.unit,
        )
    }
}

pub const TABLE_HEADER: &str = "| case | ours (median) | baseline (median) | ratio | spread ours / baseline | runs | machine | date | command |\n|---|---|---|---|---|---|---|---|---|";

/// Replaces the area's table between its markers (or appends a new section), so the
/// file always shows the latest run; git keeps the history.
/// GPU rows go to a table of their own (`<area>-gpu`), so that a `--gpu` run keeps
/// the CPU rows and the other way round.
fn write_rows(path: &Path, area: &Area, gpu: bool, rows: &[String]) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let name = if gpu {
        format!("{}-gpu", area.name)
    } else {
        area.name.to_string()
    };
    let updated = replace_area_table(&text, &name, area.about, rows);
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

pub fn replace_area_table(text: &str, area: &str, about: &str, rows: &[String]) -> String {
    let begin = format!("<!-- bench:{area}:begin -->");
    let end = format!("<!-- bench:{area}:end -->");
    let table = format!("{begin}\n{TABLE_HEADER}\n{}\n{end}", rows.join("\n"));
    match (text.find(&begin), text.find(&end)) {
        (Some(start), Some(stop)) if stop > start => {
            format!("{}{table}{}", &text[..start], &text[stop + end.len()..])
        }
        _ => format!("{}\n\n## {area}\n\n{about}\n\n{table}\n", text.trim_end()),
    }
}

fn machine_description(gpu: bool) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU")
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let gpus = if gpu {
        Command::new("nvidia-smi")
            .args(["--query-gpu=name", "--format=csv,noheader"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| {
                String::from_utf8_lossy(&output.stdout)
                    .trim()
                    .replace('\n', " + ")
            })
            .map(|names| format!(", {names}"))
            .unwrap_or_default()
    } else {
        String::new()
    };
    format!("{model}, {cores} cores, {mem_gib:.0} GiB{gpus}")
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_come_from_the_last_json_line() {
        let (sample, unit) =
            parse_sample("warming up\n{\"value\": 2.5, \"unit\": \"ms\"}\n").expect("parses");
        assert_eq!(
            (sample.value, sample.higher_is_better, unit.as_str()),
            (2.5, false, "ms")
        );
        assert!(parse_sample("no json here\n").is_err());
    }

    #[test]
    fn ratio_points_towards_ours_being_better() {
        let faster = CaseResult {
            unit: "ms".into(),
            ours: vec![1.0, 2.0, 3.0],
            baseline: vec![4.0, 6.0, 8.0],
            higher_is_better: false,
            paired: false,
        };
        assert_eq!(faster.ratio(), 3.0);
        let throughput = CaseResult {
            unit: "MB/s".into(),
            ours: vec![90.0],
            baseline: vec![100.0],
            higher_is_better: true,
            paired: false,
        };
        assert!((throughput.ratio() - 0.9).abs() < 1e-12);
        // Paired runs on a drifting machine: the runs' own ratios are 0.9, 0.95 and
        // 0.85 (median 0.9); the medians' ratio, 12.75 / 15 = 0.85, mixes runs.
        let drifting = CaseResult {
            unit: "images/s".into(),
            ours: vec![9.0, 19.0, 12.75],
            baseline: vec![10.0, 20.0, 15.0],
            higher_is_better: true,
            paired: true,
        };
        assert!(
            (drifting.ratio() - 0.9).abs() < 1e-12,
            "{}",
            drifting.ratio()
        );
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
        assert!((spread(&[9.0, 10.0, 11.0]) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn area_tables_are_replaced_in_place() {
        let first = replace_area_table(
            "# Benchmarks\n\nintro\n",
            "detect",
            "Decode and NMS.",
            &["| a |".into()],
        );
        assert!(first.contains("## detect\n\nDecode and NMS.\n\n<!-- bench:detect:begin -->"));
        let second = replace_area_table(
            &(first.clone() + "\n## other\n"),
            "detect",
            "Decode and NMS.",
            &["| b |".into()],
        );
        assert!(
            second.contains("| b |") && !second.contains("| a |"),
            "{second}"
        );
        assert!(
            second.ends_with("## other\n"),
            "text after the table is kept: {second}"
        );
        assert_eq!(second.matches("## detect").count(), 1);
    }

    #[test]
    fn gpu_rows_keep_the_cpu_rows_and_the_other_way_round() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("BENCHMARKS.md");
        write_rows(&path, &TRAIN, false, &["| cpu row |".into()]).expect("writes");
        write_rows(&path, &TRAIN, true, &["| gpu row |".into()]).expect("writes");
        write_rows(&path, &TRAIN, false, &["| new cpu row |".into()]).expect("writes");
        let text = std::fs::read_to_string(&path).expect("reads");
        assert!(text.contains("<!-- bench:train-gpu:begin -->"), "{text}");
        assert!(
            text.contains("| gpu row |") && text.contains("| new cpu row |"),
            "{text}"
        );
        assert!(!text.contains("| cpu row |"), "{text}");
    }

    #[test]
    fn a_paired_case_reads_both_sides_from_one_command() {
        const BOTH: &[&str] = &[
            "sh",
            "-c",
            "echo '{\"value\": 9, \"baseline\": 10, \"unit\": \"images/s\", \"higher_is_better\": true}'",
        ];
        let case = Case {
            name: "paired echo",
            ours: BOTH,
            baseline_name: "the other side",
            baseline: &[],
            gpu: false,
            concurrent: false,
        };
        let result = run_case(&case, 2, &[]).expect("runs");
        assert_eq!(
            (result.ours, result.baseline),
            (vec![9.0; 2], vec![10.0; 2])
        );
        const ONE_SIDE: &[&str] = &["sh", "-c", "echo '{\"value\": 9, \"unit\": \"images/s\"}'"];
        let without_baseline = Case {
            ours: ONE_SIDE,
            ..case
        };
        let error = run_case(&without_baseline, 1, &[]).expect_err("no baseline value");
        assert!(format!("{error:#}").contains("`baseline`"), "{error:#}");
    }

    #[test]
    fn a_case_runs_both_sides_interleaved() {
        const OURS: &[&str] = &["sh", "-c", "echo '{\"value\": 2, \"unit\": \"ms\"}'"];
        const BASE: &[&str] = &["sh", "-c", "echo '{\"value\": 5, \"unit\": \"ms\"}'"];
        let case = Case {
            name: "echo",
            ours: OURS,
            baseline_name: "slower echo",
            baseline: BASE,
            gpu: false,
            concurrent: false,
        };
        let result = run_case(&case, 3, &[]).expect("runs");
        assert_eq!((result.ours.len(), result.baseline.len()), (3, 3));
        assert_eq!(result.ratio(), 2.5);
        const FAILING: &[&str] = &["sh", "-c", "echo boom >&2; exit 3"];
        let broken = Case {
            name: "broken",
            ours: FAILING,
            baseline_name: "x",
            baseline: BASE,
            gpu: false,
            concurrent: false,
        };
        let error = format!(
            "{:#}",
            run_case(&broken, 1, &[]).expect_err("a failing side is an error")
        );
        assert!(error.contains("boom"), "{error}");
    }
}
