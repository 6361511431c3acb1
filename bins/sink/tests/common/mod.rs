//! Fixtures for the streaming tests: a synthetic YOLO dataset written by code, a
//! topic and a schema of their own per test, the binaries, and a private broker
//! for the tests that kill one.

#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cardet_testkit::{Stack, unique_name};

/// A YOLO dataset of `n_images` distinct 64x48 JPEGs: 80% `train`, 20% `val`;
/// every tenth image has no label file, and the one after it an empty one.
pub fn make_dataset(root: &Path, n_images: usize, seed: u32) {
    for index in 0..n_images {
        let split = if index % 5 == 4 { "val" } else { "train" };
        let name = format!("img_{seed}_{index:05}");
        let image_path = root.join("images").join(split).join(format!("{name}.jpg"));
        let label_path = root.join("labels").join(split).join(format!("{name}.txt"));
        std::fs::create_dir_all(image_path.parent().expect("parent")).expect("mkdir");
        std::fs::create_dir_all(label_path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&image_path, jpeg(index as u32, seed)).expect("write image");
        match index % 10 {
            0 => {}
            1 => std::fs::write(&label_path, "").expect("write labels"),
            _ => {
                let mut text = String::new();
                for box_idx in 0..(index % 4 + 1) {
                    let cx = 0.1 + 0.8 * ((index * 7 + box_idx * 13) % 100) as f64 / 100.0;
                    let cy = 0.1 + 0.8 * ((index * 11 + box_idx * 3) % 100) as f64 / 100.0;
                    text += &format!("{} {cx:.6} {cy:.6} 0.100000 0.150000\n", box_idx % 3);
                }
                std::fs::write(&label_path, text).expect("write labels");
            }
        }
    }
}

/// A small JPEG whose pixels depend on `index` and `seed`, so every image differs.
pub fn jpeg(index: u32, seed: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(64, 48, |x, y| {
        let value = (x.wrapping_mul(31) ^ y.wrapping_mul(17))
            .wrapping_add(index.wrapping_mul(2_654_435_761))
            .wrapping_add(seed.wrapping_mul(40_503));
        image::Rgb([value as u8, (value >> 8) as u8, (value >> 16) as u8])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
        .expect("encodes");
    bytes
}

/// Every file under `root` (relative path, bytes), sorted, skipping our state file
/// and `data.yaml`.
pub fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path
                    .strip_prefix(root)
                    .expect("inside")
                    .to_string_lossy()
                    .into_owned();
                if relative != ".cardet-export.json" && relative != "data.yaml" {
                    files.push((relative, std::fs::read(&path).expect("read")));
                }
            }
        }
    }
    files.sort();
    files
}

/// A topic and a schema no other test uses.
pub struct Names {
    pub topic: String,
    pub schema: String,
    pub group: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        let topic = unique_name(&format!("test-{prefix}"));
        let schema = topic.replace('-', "_").to_lowercase();
        Names {
            group: format!("{topic}-group"),
            topic,
            schema,
        }
    }
}

pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    produce::kafka::setup(&produce::SetupConfig {
        bootstrap: bootstrap.to_string(),
        topic: topic.to_string(),
        partitions,
        replication: 1,
        recreate: false,
        connect_timeout: Duration::from_secs(10),
    })
    .expect("creating the topic");
}

pub fn stream_config(bootstrap: &str, topic: &str, source: &Path) -> produce::StreamConfig {
    produce::StreamConfig::new(bootstrap, topic, source.to_path_buf())
}

/// `sink run` as a child process, with its JSON summary on stdout.
pub fn sink_command(stack: &Stack, names: &Names, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sink"));
    command
        .args([
            "run",
            "--json",
            "--topic",
            &names.topic,
            "--group",
            &names.group,
        ])
        .args(["--schema", &names.schema])
        .args(["--bootstrap-servers", &stack.kafka_bootstrap])
        .args(["--database-url", &stack.database_url])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

pub fn run_sink(stack: &Stack, names: &Names, extra: &[&str]) -> serde_json::Value {
    let output = sink_command(stack, names, extra)
        .output()
        .expect("running sink");
    summary_of(&output)
}

pub fn summary_of(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "sink failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|error| panic!("summary {stdout:?}: {error}"))
}

pub fn export(stack: &Stack, names: &Names, out: &Path, extra: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_sink"))
        .args(["export", "--json", "--schema", &names.schema])
        .args(["--database-url", &stack.database_url])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("running sink export");
    summary_of(&output)
}

/// Rows, summed deliveries and dead letters of a test's schema.
pub fn counts(stack: &Stack, names: &Names) -> cardet_store::Counts {
    runtime().block_on(async {
        let store = cardet_store::Store::connect(&stack.database_url, &names.schema)
            .await
            .expect("connect");
        store.counts().await.expect("counts")
    })
}

pub fn dead_letters(stack: &Stack, names: &Names) -> Vec<(i32, i64, String)> {
    runtime().block_on(async {
        let store = cardet_store::Store::connect(&stack.database_url, &names.schema)
            .await
            .expect("connect");
        store
            .dead_letters(&names.topic)
            .await
            .expect("dead letters")
    })
}

/// How PostgreSQL stores the `images.image` column (`pg_attribute.attstorage`).
pub fn image_column_storage(stack: &Stack, names: &Names) -> String {
    runtime().block_on(async {
        let (client, connection) =
            tokio_postgres::connect(&stack.database_url, tokio_postgres::NoTls)
                .await
                .expect("connect");
        tokio::spawn(connection);
        client
            .query_one(
                "SELECT a.attstorage::text FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = 'images' AND a.attname = 'image'",
                &[&names.schema],
            )
            .await
            .expect("attstorage")
            .get(0)
    })
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Sends raw values (not our records) to a topic.
pub fn send_raw(bootstrap: &str, topic: &str, values: &[&[u8]]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for value in values {
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(topic)
                    .payload(value)
                    .key(b"raw".as_slice()),
            )
            .expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// A tansu broker of a test's own, on a free port with its own data folder, so
/// that a test may kill it without touching the shared stack.
pub struct PrivateBroker {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateBroker {
    pub fn start() -> PrivateBroker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("free port");
        let mut broker = PrivateBroker {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        broker.restart();
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (or starts again) on the same port and data folder, and waits until
    /// the port accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let binary = cardet_testkit::cardet_home().join("tools/bin/tansu");
        assert!(
            binary.exists(),
            "{} is missing: run `cargo xtask setup`",
            binary.display()
        );
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .expect("log");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let child = Command::new(&binary)
                .args(["broker", "--storage-engine", "sqlite://tansu.db"])
                .args([
                    "--kafka-listener-url",
                    &url,
                    "--kafka-advertised-listener-url",
                    &url,
                ])
                .current_dir(self.dir.path())
                .env_remove("STORAGE_ENGINE")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log.try_clone().expect("log"))
                .spawn()
                .expect("starting tansu");
            self.child = Some(child);
            if wait_for_port(self.port, Duration::from_secs(5)) {
                return;
            }
            // The port may still be held by the previous process (up to 6 s).
            self.kill();
            assert!(
                Instant::now() < deadline,
                "tansu did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
