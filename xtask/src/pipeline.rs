//! `cargo xtask pipeline`: the whole loop end to end, one step after another, each
//! a real binary of the workspace against the real stack:
//!
//! ```text
//! stack → dataset → produce → sink (+ export) → train → export → upload → serve → client → report
//! ```
//!
//! Every step writes its output and its log into the run folder
//! (`runs/pipeline/<UTC time>`), and what later steps need into `pipeline.json`, so
//! `--from STEP` re-runs the end of an earlier run. A failed step names itself and
//! its log. The report (`report.md`, `report.html`) is built from the files the
//! steps left, never from numbers held in memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use xshell::{Shell, cmd};

use crate::flags::{self, PipelineStep};
use crate::home::CardetHome;
use crate::stack::{self, Service, StackConfig, free_port};

/// The model's name in the repository, S3 and the server (the original's).
const MODEL_NAME: &str = "yolov8n_car";
/// Bucket and prefix of the model repository, as in the original ModelMesh setup.
const BUCKET: &str = "modelmesh-models";
const PREFIX: &str = "cardetect";

/// The sizes of a run: the default loop and `--smoke`.
#[derive(Clone, Debug)]
struct Plan {
    images: usize,
    image_size: u32,
    train_minutes: f64,
    epochs: u32,
    batch: u32,
    profile: &'static str,
}

impl Plan {
    fn from_flags(flags: &flags::Pipeline) -> Plan {
        let base = if flags.smoke {
            Plan {
                images: 40,
                image_size: 128,
                train_minutes: 1.0,
                epochs: 1,
                batch: 8,
                profile: "debug",
            }
        } else {
            // 256 px and an optimiser step per batch: on 2 CPU cores a 15-minute
            // budget sees a few thousand images, too few optimiser steps under
            // Ultralytics' nominal batch of 64.
            Plan {
                images: 500,
                image_size: 256,
                train_minutes: 15.0,
                epochs: 300,
                batch: 16,
                profile: "release",
            }
        };
        Plan {
            images: flags.images.unwrap_or(base.images),
            train_minutes: flags.train_minutes.unwrap_or(base.train_minutes),
            ..base
        }
    }
}

/// What the steps hand to each other, kept in `<run>/pipeline.json`.
#[derive(Default)]
struct State {
    values: BTreeMap<String, Value>,
}

impl State {
    fn load(run_dir: &Path) -> anyhow::Result<State> {
        let path = run_dir.join("pipeline.json");
        if !path.exists() {
            return Ok(State::default());
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let values: BTreeMap<String, Value> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a pipeline state", path.display()))?;
        Ok(State { values })
    }

    fn save(&self, run_dir: &Path) -> anyhow::Result<()> {
        let path = run_dir.join("pipeline.json");
        let text = serde_json::to_string_pretty(&self.values)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.values.insert(key.to_string(), value.into());
    }

    fn str(&self, key: &str) -> anyhow::Result<String> {
        self.values
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .with_context(|| {
                format!("pipeline.json has no `{key}`: run the step that makes it first")
            })
    }
}

/// One step's record in the report.
struct StepRecord {
    step: PipelineStep,
    seconds: f64,
    summary: String,
}

struct Pipeline<'a> {
    sh: &'a Shell,
    home: CardetHome,
    plan: Plan,
    run_dir: PathBuf,
    config: StackConfig,
    state: State,
    records: Vec<StepRecord>,
    serve: Option<Child>,
    stack_started_here: Vec<Service>,
    no_build: bool,
}

impl flags::Pipeline {
    pub fn run(&self, sh: &Shell) -> anyhow::Result<()> {
        // Setup if needed (a no-op in a second when everything is there): a fresh
        // clone has no `.cardet` link and a fresh machine no venv or services.
        flags::Setup {
            check: false,
            gpu: false,
        }
        .run(sh)?;
        let home = CardetHome::from_env();
        let run_dir = match &self.run_dir {
            Some(dir) => std::path::absolute(dir)?,
            None if self.from.is_some() => {
                bail!("--from needs --run-dir: the run whose earlier steps it continues")
            }
            None => crate::project_root()
                .join("runs/pipeline")
                .join(utc_stamp()),
        };
        std::fs::create_dir_all(run_dir.join("logs"))
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let config = StackConfig::load(&home, true)?;
        let state = State::load(&run_dir)?;
        let mut pipeline = Pipeline {
            sh,
            home,
            plan: Plan::from_flags(self),
            run_dir,
            config,
            state,
            records: Vec::new(),
            serve: None,
            stack_started_here: Vec::new(),
            no_build: self.no_build,
        };
        let from = self.from.unwrap_or(PipelineStep::Stack);
        let to = self.to.unwrap_or(PipelineStep::Report);
        let started = Instant::now();
        println!(
            "pipeline: {} → {} in {}",
            step_name(from),
            step_name(to),
            pipeline.run_dir.display()
        );
        let outcome = pipeline.run_steps(from, to);
        if !self.keep_up {
            pipeline.stop_serve();
            if let Err(error) = stack::down(&pipeline.config, &pipeline.stack_started_here) {
                eprintln!("pipeline: stopping the stack: {error:#}");
            }
        } else if let Some(serve) = &pipeline.serve {
            println!(
                "pipeline: --keep-up: serve (pid {}) on {} and the stack stay up",
                serve.id(),
                pipeline.state.str("serve_url").unwrap_or_default()
            );
        }
        println!("pipeline: steps run");
        for record in &pipeline.records {
            println!(
                "  {:<8} {:>7.1}s  {}",
                step_name(record.step),
                record.seconds,
                record.summary
            );
        }
        outcome?;
        println!(
            "pipeline: done in {:.0}s; report: {}",
            started.elapsed().as_secs_f64(),
            pipeline.run_dir.join("report.html").display()
        );
        Ok(())
    }
}

impl Pipeline<'_> {
    fn run_steps(&mut self, from: PipelineStep, to: PipelineStep) -> anyhow::Result<()> {
        use PipelineStep::*;
        let steps = [
            Stack, Dataset, Produce, Sink, Train, Export, Upload, Serve, Client, Report,
        ];
        if from > to {
            bail!(
                "--from {} comes after --to {}",
                step_name(from),
                step_name(to)
            );
        }
        // The binaries first, once: a build error is not a step's failure.
        if from <= Client && to >= Produce {
            if self.no_build {
                self.check_binaries()?;
            } else {
                self.build_binaries()?;
            }
        }
        for step in steps.into_iter().filter(|step| (from..=to).contains(step)) {
            let started = Instant::now();
            println!("pipeline: [{}] ...", step_name(step));
            let result = match step {
                Stack => self.stack(),
                Dataset => self.dataset(),
                Produce => self.produce(),
                Sink => self.sink(),
                Train => self.train(),
                Export => self.export(),
                Upload => self.upload(),
                Serve => self.serve(),
                Client => self.client(),
                Report => self.report(),
            };
            let seconds = started.elapsed().as_secs_f64();
            match result {
                Ok(summary) => {
                    println!(
                        "pipeline: [{}] ok in {seconds:.1}s: {summary}",
                        step_name(step)
                    );
                    self.state
                        .set(&format!("seconds_{}", step_name(step)), seconds);
                    self.state.save(&self.run_dir)?;
                    self.records.push(StepRecord {
                        step,
                        seconds,
                        summary,
                    });
                }
                Err(error) => {
                    self.state.save(&self.run_dir)?;
                    bail!(
                        "step `{}` failed after {seconds:.1}s: {error:#}\n  log: {}",
                        step_name(step),
                        self.log_path(step).display()
                    );
                }
            }
        }
        Ok(())
    }

    fn log_path(&self, step: PipelineStep) -> PathBuf {
        self.run_dir
            .join("logs")
            .join(format!("{}.log", step_name(step)))
    }

    fn binary(&self, name: &str) -> PathBuf {
        self.home
            .shared_target_dir()
            .join(self.plan.profile)
            .join(name)
    }

    /// With `--no-build`: every binary the steps run is there.
    fn check_binaries(&self) -> anyhow::Result<()> {
        for name in [
            "produce",
            "sink",
            "mwt",
            "upload_model_to_minio",
            "serve",
            "triton_client",
        ] {
            let path = self.binary(name);
            if !path.is_file() {
                bail!(
                    "--no-build: no {} (build it, or leave --no-build out)",
                    path.display()
                );
            }
        }
        Ok(())
    }

    fn build_binaries(&self) -> anyhow::Result<()> {
        let _env = self.home.shared_build_env(self.sh);
        let release = (self.plan.profile == "release").then_some("--release");
        println!("pipeline: building the binaries ({})", self.plan.profile);
        cmd!(
            self.sh,
            "cargo build --quiet {release...} --workspace --bins"
        )
        .run()
        .context("building the pipeline's binaries")?;
        Ok(())
    }

    /// Runs a binary with the stack's variables, its output into the step's log;
    /// returns its stdout.
    fn run_logged(
        &self,
        step: PipelineStep,
        program: &Path,
        args: &[String],
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<String> {
        let log_path = self.log_path(step);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        use std::io::Write;
        writeln!(&log, "$ {} {}", program.display(), args.join(" "))?;
        let output = Command::new(program)
            .args(args)
            .envs(self.config.variables())
            .envs(extra_env.iter().map(|(key, value)| (*key, value)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stderr(log.try_clone()?)
            .stdout(Stdio::piped())
            .output()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        writeln!(&log, "{stdout}")?;
        if !output.status.success() {
            let tail = tail_of(&log_path, 8);
            bail!(
                "{} exited with {}; its log ends:\n{tail}",
                program
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                output.status
            );
        }
        Ok(stdout)
    }

    fn stack(&mut self) -> anyhow::Result<String> {
        let ours = services_to_start(&self.config);
        stack::up(&self.home, &self.config, &ours).context("bringing the stack up")?;
        self.stack_started_here.extend(ours.iter().copied());
        let started: Vec<&str> = ours.iter().map(|service| service.name()).collect();
        Ok(if started.is_empty() {
            "every service already answers".to_string()
        } else {
            format!("started {}", started.join(", "))
        })
    }

    fn dataset(&mut self) -> anyhow::Result<String> {
        let out = self.run_dir.join("synth");
        let size = format!("{0}x{0}", self.plan.image_size * 2);
        let args = [
            "--images".to_string(),
            self.plan.images.to_string(),
            "--seed".to_string(),
            "7".to_string(),
            "--size".to_string(),
            size.clone(),
            "--out".to_string(),
            out.display().to_string(),
        ];
        let sh = self.sh;
        let _env = self.home.shared_build_env(sh);
        let release = (self.plan.profile == "release").then_some("--release");
        cmd!(
            sh,
            "cargo run {release...} --quiet --package cardet-detect --example synth -- {args...}"
        )
        .quiet()
        .run()
        .context("rendering the synthetic dataset")?;
        let grid = self.run_dir.join("report/dataset.png");
        std::fs::create_dir_all(self.run_dir.join("report"))?;
        let grid_arg = grid.display().to_string();
        cmd!(
            sh,
            "cargo run {release...} --quiet --package cardet-detect --example synth -- --grid {grid_arg} --size 320x320 --seed 7"
        )
        .quiet()
        .run()
        .context("drawing the dataset samples")?;
        self.state.set("synth", out.display().to_string());
        Ok(format!(
            "{} images of {size} in {}",
            self.plan.images,
            out.display()
        ))
    }

    fn produce(&mut self) -> anyhow::Result<String> {
        let synth = self.state.str("synth")?;
        // A topic per run: the embedded broker deletes every topic on any delete,
        // so nothing here ever deletes one.
        let topic = format!("pipeline-{}", run_id(&self.run_dir));
        let produce = self.binary("produce");
        self.run_logged(
            PipelineStep::Produce,
            &produce,
            &["setup".into(), "--topic".into(), topic.clone()],
            &[],
        )?;
        let stdout = self.run_logged(
            PipelineStep::Produce,
            &produce,
            &[
                "stream".into(),
                synth,
                "--topic".into(),
                topic.clone(),
                "--json".into(),
                "--quiet".into(),
                "--max-message-bytes".into(),
                "8000000".into(),
            ],
            &[],
        )?;
        let summary = last_json(&stdout).context("produce printed no JSON summary")?;
        std::fs::write(self.run_dir.join("produce.json"), summary.to_string())?;
        self.state.set("topic", topic.clone());
        Ok(format!("{} into topic {topic}", brief(&summary)))
    }

    fn sink(&mut self) -> anyhow::Result<String> {
        let topic = self.state.str("topic")?;
        // A schema per run, so the export holds exactly this run's images.
        let schema = format!("pipeline_{}", run_id(&self.run_dir).replace('-', "_"));
        let sink = self.binary("sink");
        let stdout = self.run_logged(
            PipelineStep::Sink,
            &sink,
            &[
                "run".into(),
                "--topic".into(),
                topic.clone(),
                "--group".into(),
                format!("pipeline-{}", run_id(&self.run_dir)),
                "--schema".into(),
                schema.clone(),
                "--until-idle".into(),
                "10".into(),
                "--json".into(),
            ],
            &[],
        )?;
        let consumed = last_json(&stdout).unwrap_or(Value::Null);
        let dataset = self.run_dir.join("dataset");
        let names = data_yaml_names(&PathBuf::from(self.state.str("synth")?).join("data.yaml"))?;
        let stdout = self.run_logged(
            PipelineStep::Sink,
            &sink,
            &[
                "export".into(),
                "--schema".into(),
                schema,
                "--out".into(),
                dataset.display().to_string(),
                "--split".into(),
                "source".into(),
                "--names".into(),
                names.join(","),
                "--json".into(),
            ],
            &[],
        )?;
        let exported = last_json(&stdout).unwrap_or(Value::Null);
        std::fs::write(
            self.run_dir.join("sink.json"),
            json!({"run": consumed, "export": exported}).to_string(),
        )?;
        self.state
            .set("data_yaml", dataset.join("data.yaml").display().to_string());
        Ok(format!(
            "consumed {}; exported {}",
            brief(&consumed),
            brief(&exported)
        ))
    }

    fn train(&mut self) -> anyhow::Result<String> {
        let data_yaml = self.state.str("data_yaml")?;
        let mwt = self.binary("mwt");
        let hours = self.plan.train_minutes / 60.0;
        let stdout = self.run_logged(
            PipelineStep::Train,
            &mwt,
            &[
                "train".into(),
                "--data".into(),
                data_yaml,
                "--model".into(),
                "n".into(),
                "--imgsz".into(),
                self.plan.image_size.to_string(),
                "--batch".into(),
                self.plan.batch.to_string(),
                "--epochs".into(),
                self.plan.epochs.to_string(),
                "--time".into(),
                format!("{hours:.4}"),
                "--accumulate".into(),
                "1".into(),
                "--warmup-epochs".into(),
                "1".into(),
                "--project".into(),
                self.run_dir.display().to_string(),
                "--name".into(),
                "train".into(),
                "--register".into(),
                MODEL_NAME.into(),
                "--json".into(),
            ],
            &[(
                "MLFLOW_EXPERIMENT_NAME",
                std::env::var("MLFLOW_EXPERIMENT_NAME").unwrap_or_else(|_| "cardet".into()),
            )],
        )?;
        let summary = last_json(&stdout).context("mwt train printed no JSON summary")?;
        std::fs::write(self.run_dir.join("train.json"), summary.to_string())?;
        // The trainer names the folder (`train`, `train2`, ... when one exists).
        let weights = summary["best"]
            .as_str()
            .map(PathBuf::from)
            .context("mwt train's summary names no `best` checkpoint")?;
        if !weights.is_file() {
            bail!("mwt train left no {}", weights.display());
        }
        self.state.set("weights", weights.display().to_string());
        Ok(brief(&summary))
    }

    fn export(&mut self) -> anyhow::Result<String> {
        let weights = self.state.str("weights")?;
        let repo = self.run_dir.join("model_repo");
        let stdout = self.run_logged(
            PipelineStep::Export,
            &self.binary("mwt"),
            &[
                "export".into(),
                "--weights".into(),
                weights,
                "--repo".into(),
                repo.display().to_string(),
                "--name".into(),
                MODEL_NAME.into(),
                "--imgsz".into(),
                self.plan.image_size.to_string(),
                "--json".into(),
            ],
            &[],
        )?;
        self.state.set("model_repo", repo.display().to_string());
        Ok(last_json(&stdout)
            .map(|summary| brief(&summary))
            .unwrap_or_else(|| format!("{}/{MODEL_NAME}", repo.display())))
    }

    fn upload(&mut self) -> anyhow::Result<String> {
        let repo = PathBuf::from(self.state.str("model_repo")?);
        let stdout = self.run_logged(
            PipelineStep::Upload,
            &self.binary("upload_model_to_minio"),
            &[
                "upload".into(),
                repo.join(MODEL_NAME).display().to_string(),
                "--bucket".into(),
                BUCKET.into(),
                "--prefix".into(),
                PREFIX.into(),
                "--json".into(),
            ],
            &[],
        )?;
        let summary = last_json(&stdout).context("the uploader printed no JSON summary")?;
        std::fs::write(self.run_dir.join("upload.json"), summary.to_string())?;
        self.state
            .set("model_uri", format!("s3://{BUCKET}/{PREFIX}/{MODEL_NAME}"));
        Ok(brief(&summary))
    }

    fn serve(&mut self) -> anyhow::Result<String> {
        let ports = [free_port()?, free_port()?, free_port()?];
        let log_path = self.log_path(PipelineStep::Serve);
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(self.binary("serve"))
            .args([
                format!("--model-repository=s3://{BUCKET}/{PREFIX}"),
                "--model-control-mode=explicit".into(),
                format!("--load-model={MODEL_NAME}"),
                "--http-address=127.0.0.1".into(),
                format!("--http-port={}", ports[0]),
                "--grpc-address=127.0.0.1".into(),
                format!("--grpc-port={}", ports[1]),
                format!("--metrics-port={}", ports[2]),
            ])
            .envs(self.config.variables())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting serve")?;
        self.serve = Some(child);
        let url = format!("http://127.0.0.1:{}", ports[0]);
        let ready = format!("{url}/v2/models/{MODEL_NAME}/ready");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(serve) = self.serve.as_mut()
                && let Ok(Some(status)) = serve.try_wait()
            {
                bail!("serve exited with {status} before the model was ready");
            }
            if ureq::get(&ready).call().is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{MODEL_NAME} not ready on {url} after 120 s");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.state.set("serve_url", url.clone());
        self.state
            .set("serve_grpc", format!("127.0.0.1:{}", ports[1]));
        Ok(format!("{MODEL_NAME} ready on {url}, loaded from S3"))
    }

    fn client(&mut self) -> anyhow::Result<String> {
        if self.serve.is_none() {
            self.serve()?;
        }
        let url = self.state.str("serve_url")?;
        let data_yaml = self.state.str("data_yaml")?;
        let out = self.run_dir.join("client");
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let summary_path = self.run_dir.join("client.json");
        self.run_logged(
            PipelineStep::Client,
            &self.binary("triton_client"),
            &[
                "--url".into(),
                url,
                "--model".into(),
                MODEL_NAME.into(),
                "--dataset".into(),
                data_yaml,
                "--split".into(),
                "val".into(),
                "--concurrency".into(),
                "4".into(),
                "--out".into(),
                out.display().to_string(),
                "--jsonl".into(),
                out.join("detections.jsonl").display().to_string(),
                "--summary-json".into(),
                summary_path.display().to_string(),
                "--no-progress".into(),
            ],
            &[],
        )?;
        let text = std::fs::read_to_string(&summary_path)
            .with_context(|| format!("triton_client wrote no {}", summary_path.display()))?;
        let summary: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", summary_path.display()))?;
        Ok(brief(&summary))
    }

    fn report(&mut self) -> anyhow::Result<String> {
        let report = crate::pipeline_report::Report::collect(&self.run_dir)?;
        let (markdown, html) = report.write(&self.run_dir)?;
        // A screenshot for CI's archive; a machine without Chromium still gets the report.
        let screenshot = self.run_dir.join("report/screenshot.png");
        let seen = match crate::pipeline_report::open_in_browser(&html, &screenshot) {
            Ok((loaded, total)) => format!("; {loaded}/{total} images load in Chromium"),
            Err(error) => format!("; no screenshot ({error:#})"),
        };
        Ok(format!(
            "{} and {}{seen}",
            markdown.display(),
            html.display()
        ))
    }

    fn stop_serve(&mut self) {
        if let Some(mut serve) = self.serve.take() {
            let pid = nix::unistd::Pid::from_raw(serve.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(serve.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = serve.kill();
            let _ = serve.wait();
        }
    }
}

pub fn step_name(step: PipelineStep) -> &'static str {
    use PipelineStep::*;
    match step {
        Stack => "stack",
        Dataset => "dataset",
        Produce => "produce",
        Sink => "sink",
        Train => "train",
        Export => "export",
        Upload => "upload",
        Serve => "serve",
        Client => "client",
        Report => "report",
    }
}

/// The run folder's name, usable in topic, group and schema names.
fn run_id(run_dir: &Path) -> String {
    run_dir
        .file_name()
        .map(|name| name.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_else(|| "run".into())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// `20261125T142233Z`, from the system clock, without a date crate.
fn utc_stamp() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The last line of a program's stdout that is a JSON object (its `--json` summary).
fn last_json(stdout: &str) -> Option<Value> {
    stdout
        .lines()
        .rev()
        .filter(|line| line.trim_start().starts_with('{'))
        .find_map(|line| serde_json::from_str(line).ok())
}

/// A JSON summary in one line for the console: its scalar fields.
fn brief(summary: &Value) -> String {
    match summary.as_object() {
        Some(object) => object
            .iter()
            .filter(|(_, value)| value.is_number() || value.is_string() || value.is_boolean())
            .take(6)
            .map(|(key, value)| match value {
                Value::Number(number) if number.is_f64() => {
                    format!("{key}={:.3}", number.as_f64().unwrap_or_default())
                }
                Value::String(text) => format!("{key}={text}"),
                other => format!("{key}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => summary.to_string(),
    }
}

/// The class names of a data.yaml, in order (a list or an `index: name` map).
fn data_yaml_names(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut names = Vec::new();
    let mut in_names = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("names:") {
            let rest = rest.trim();
            if rest.starts_with('[') {
                return Ok(rest
                    .trim_matches(|c| c == '[' || c == ']')
                    .split(',')
                    .map(|name| name.trim().trim_matches(['\'', '"']).to_string())
                    .collect());
            }
            in_names = true;
            continue;
        }
        if in_names {
            let item = line.trim();
            if !line.starts_with([' ', '\t', '-']) || item.is_empty() {
                break;
            }
            let name = item
                .strip_prefix('-')
                .or_else(|| item.split_once(':').map(|(_, name)| name))
                .unwrap_or(item);
            names.push(name.trim().trim_matches(['\'', '"']).to_string());
        }
    }
    if names.is_empty() {
        bail!("{} lists no class names", path.display());
    }
    Ok(names)
}

fn tail_of(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The services that neither answer nor have a process of the stack's: the ones a
/// caller that brings the stack up starts, and so the ones it stops again.
fn services_to_start(config: &StackConfig) -> Vec<Service> {
    Service::ALL
        .into_iter()
        .filter(|&service| {
            stack::probe(config, service).is_err() && stack::running_pid(config, service).is_none()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn names_from_both_yaml_forms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = dir.path().join("a.yaml");
        std::fs::write(
            &list,
            "path: .\nnames:\n  0: person\n  1: bicycle\n  2: car\ntrain: x\n",
        )
        .expect("write");
        assert_eq!(
            data_yaml_names(&list).expect("names"),
            ["person", "bicycle", "car"]
        );
        let flow = dir.path().join("b.yaml");
        std::fs::write(&flow, "names: ['car', \"bus\"]\n").expect("write");
        assert_eq!(data_yaml_names(&flow).expect("names"), ["car", "bus"]);
        let none = dir.path().join("c.yaml");
        std::fs::write(&none, "train: x\n").expect("write");
        assert!(data_yaml_names(&none).is_err());
    }

    #[test]
    fn last_json_line_wins() {
        let stdout = "progress 1\n{\"a\": 1}\nnoise\n{\"images\": 4, \"rate\": 2.5}\n";
        let summary = last_json(stdout).expect("json");
        assert_eq!(summary["images"], 4);
        assert_eq!(brief(&summary), "images=4 rate=2.500");
    }

    /// `cargo xtask pipeline --smoke` against the real stack: every step runs; the
    /// model trained here is registered in MLflow, uploaded to S3 with its manifest,
    /// served from S3 and called by the client, whose detections and report exist.
    /// Needs the stack's variables (as `cargo xtask test` sets them) and builds the
    /// workspace's debug binaries (a no-op after nextest built them).
    #[test]
    fn smoke_pipeline_runs_every_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run_dir = dir.path().join("smoke");
        let flags = flags::Pipeline {
            smoke: true,
            from: None,
            to: None,
            run_dir: Some(run_dir.clone()),
            // A few epochs are enough to prove the step and what follows it; `--smoke`'s
            // own minute of training was two thirds of this test's 88 s.
            train_minutes: Some(0.1),
            images: None,
            keep_up: false,
            // nextest has just built every binary (each has integration tests); a
            // `cargo build` would compile the workspace again with other features.
            no_build: true,
        };
        // The test brings the stack up itself, so that the pipeline finds every
        // service answering and leaves them up for the MLflow checks below; the
        // guard stops, pass or fail, only what the test started.
        struct StartedHere(StackConfig, Vec<Service>);
        impl Drop for StartedHere {
            fn drop(&mut self) {
                if let Err(error) = stack::down(&self.0, &self.1) {
                    eprintln!("stopping the services the test started: {error:#}");
                }
            }
        }
        let home = CardetHome::from_env();
        let config = StackConfig::load(&home, false).expect("stack config");
        let started = StartedHere(config.clone(), services_to_start(&config));
        stack::up(&home, &config, &started.1).expect("the stack");
        let sh = Shell::new().expect("shell");
        flags.run(&sh).expect("the smoke pipeline");

        let state = State::load(&run_dir).expect("pipeline.json");
        use clap::ValueEnum as _;
        for step in PipelineStep::value_variants() {
            let key = format!("seconds_{}", step_name(*step));
            assert!(
                state.values.contains_key(&key),
                "step {} did not run",
                step_name(*step)
            );
        }
        let read = |name: &str| -> Value {
            let text = std::fs::read_to_string(run_dir.join(name))
                .unwrap_or_else(|error| panic!("{name}: {error}"));
            serde_json::from_str(&text).unwrap_or_else(|error| panic!("{name}: {error}"))
        };
        let client = read("client.json");
        let n_images = client["n_images"].as_u64().unwrap_or(0);
        assert!(n_images > 0, "the client ran no image: {client}");
        let detections = std::fs::read_to_string(run_dir.join("client/detections.jsonl"))
            .expect("detections.jsonl");
        assert_eq!(
            detections.lines().count() as u64,
            n_images,
            "one JSON line per image"
        );

        // MLflow: the run and its registered version, read back over REST.
        let train = read("train.json");
        let mlflow = config.variables()["MLFLOW_TRACKING_URI"].clone();
        let run_id = train["mlflow_run_id"].as_str().expect("mlflow_run_id");
        let run: Value = ureq::get(format!("{mlflow}/api/2.0/mlflow/runs/get?run_id={run_id}"))
            .call()
            .expect("runs/get")
            .body_mut()
            .read_to_string()
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .expect("run JSON");
        assert_eq!(run["run"]["info"]["status"], "FINISHED", "{run}");
        let version = train["registered_version"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| train["registered_version"].to_string());
        let registered: Value = ureq::get(format!(
            "{mlflow}/api/2.0/mlflow/model-versions/get?name={MODEL_NAME}&version={version}"
        ))
        .call()
        .expect("model-versions/get")
        .body_mut()
        .read_to_string()
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .expect("version JSON");
        assert_eq!(
            registered["model_version"]["run_id"], run_id,
            "{registered}"
        );

        // S3: the uploaded version is complete (its manifest is there) and was served.
        let upload = read("upload.json");
        assert!(
            upload.to_string().contains("manifest"),
            "upload summary: {upload}"
        );
        let serve_log = std::fs::read_to_string(run_dir.join("logs/serve.log")).unwrap_or_default();
        assert!(
            !serve_log.contains("panicked"),
            "serve panicked:\n{serve_log}"
        );

        let report = std::fs::read_to_string(run_dir.join("report.md")).expect("report.md");
        for section in [
            "## Steps",
            "## Serving",
            "## Detections by the served model",
        ] {
            assert!(report.contains(section), "report.md lacks {section}");
        }
    }

    #[test]
    fn run_ids_are_safe_names() {
        assert_eq!(
            run_id(Path::new("/x/runs/pipeline/20261125T142233Z")),
            "20261125t142233z"
        );
        assert_eq!(run_id(Path::new("/x/my run.1")), "my-run-1");
    }
}
