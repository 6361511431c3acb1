//! `cargo xtask stack`: the local stack of real services on 127.0.0.1.
//!
//! Kafka is tansu on its SQLite engine, PostgreSQL is Debian's server in a cluster
//! of our own, S3 is s3s-fs (it checks SigV4 signatures) and MLflow is the real
//! `mlflow server` from the venv with a SQLite backend store and its artifact proxy.
//! `up` starts each service in a process group of its own, records the PID and waits
//! until the service answers a real request; `down` signals exactly those groups.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rand::Rng;
use xshell::Shell;

use crate::env_file;
use crate::flags::{self, StackAction};
use crate::home::{self, CardetHome, POSTGRES_BIN};

impl flags::Stack {
    pub fn run(&self, _sh: &Shell) -> anyhow::Result<()> {
        let home = CardetHome::from_env();
        let config = StackConfig::load(&home, true)?;
        match &self.action {
            StackAction::Up { services } => {
                let services = select(services)?;
                up(&home, &config, &services)?;
                println!(
                    "stack: up; `cargo xtask stack env` prints the variables, `.env` holds them"
                );
                Ok(())
            }
            StackAction::Down => down(&config, &Service::ALL),
            StackAction::Reset { services } => {
                let services = select(services)?;
                reset(&home, &config, &services)
            }
            StackAction::Status { json } => status(&config, *json),
            StackAction::Logs { service, lines } => logs(&config, service.as_deref(), *lines),
            StackAction::Env => {
                for (key, value) in config.variables() {
                    println!("export {key}={value}");
                }
                Ok(())
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Kafka,
    Postgres,
    S3,
    Mlflow,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Kafka,
        Service::Postgres,
        Service::S3,
        Service::Mlflow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Kafka => "kafka",
            Service::Postgres => "postgres",
            Service::S3 => "s3",
            Service::Mlflow => "mlflow",
        }
    }

    /// How long a cold start may take before we give up and show its log.
    fn start_timeout(self) -> Duration {
        match self {
            Service::Mlflow => Duration::from_secs(90),
            _ => Duration::from_secs(30),
        }
    }
}

fn select(names: &[String]) -> anyhow::Result<Vec<Service>> {
    if names.is_empty() {
        return Ok(Service::ALL.to_vec());
    }
    names
        .iter()
        .map(|name| {
            Service::ALL
                .into_iter()
                .find(|service| service.name() == name)
                .with_context(|| {
                    format!("unknown service {name:?}: expected kafka, postgres, s3 or mlflow")
                })
        })
        .collect()
}

/// Where each service listens and with which credentials. Built from the process
/// environment, then `.env`, then defaults, with the ecosystem's variable names.
#[derive(Clone, Debug)]
pub struct StackConfig {
    pub dir: PathBuf,
    pub kafka: HostPort,
    pub postgres: PostgresUrl,
    pub s3: HostPort,
    pub s3_access_key: String,
    pub s3_secret_key: String,
    pub s3_region: String,
    pub mlflow: HostPort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresUrl {
    pub user: String,
    pub password: String,
    pub host: HostPort,
    pub database: String,
}

impl StackConfig {
    /// `write_env`: generate missing S3 keys into the clone's `.env` (stack commands do;
    /// tests pass their own values instead).
    pub fn load(home: &CardetHome, write_env: bool) -> anyhow::Result<StackConfig> {
        let env_path = env_file::path();
        let mut file = env_file::read(&env_path)?;
        if write_env && std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            // The stack lives in $CARDET_HOME, shared by every clone: a clone whose
            // `.env` has no keys yet takes those the S3 server was first started with,
            // so a second clone (CI's) signs with the keys the running server checks.
            let recorded = env_file::read(&s3_credentials_file(&home.stack_dir()))?;
            let generated: BTreeMap<String, String> = if recorded.contains_key("AWS_ACCESS_KEY_ID")
            {
                recorded
            } else {
                [
                    ("AWS_ACCESS_KEY_ID".to_string(), random_key("cardet", 12)),
                    ("AWS_SECRET_ACCESS_KEY".to_string(), random_key("", 40)),
                ]
                .into_iter()
                .collect()
            };
            env_file::add_missing(&env_path, &generated)?;
            file = env_file::read(&env_path)?;
        }
        let lookup = |key: &str| {
            std::env::var(key)
                .ok()
                .filter(|v| !v.is_empty())
                .or_else(|| file.get(key).cloned())
        };
        StackConfig::from_lookup(home.stack_dir(), &lookup)
    }

    pub fn from_lookup(
        dir: PathBuf,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<StackConfig> {
        let kafka = lookup("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|| "127.0.0.1:9092".into());
        let first_broker = kafka.split(',').next().unwrap_or_default();
        let database_url = lookup("DATABASE_URL")
            .unwrap_or_else(|| "postgres://cardet:cardet@127.0.0.1:5432/cardet".into());
        let s3 = lookup("AWS_ENDPOINT_URL").unwrap_or_else(|| "http://127.0.0.1:9000".into());
        let mlflow =
            lookup("MLFLOW_TRACKING_URI").unwrap_or_else(|| "http://127.0.0.1:5000".into());
        Ok(StackConfig {
            dir,
            kafka: parse_host_port(first_broker).context("KAFKA_BOOTSTRAP_SERVERS")?,
            postgres: parse_postgres_url(&database_url).context("DATABASE_URL")?,
            s3: parse_host_port(&s3).context("AWS_ENDPOINT_URL")?,
            s3_access_key: lookup("AWS_ACCESS_KEY_ID")
                .context("AWS_ACCESS_KEY_ID is not set (nor in .env)")?,
            s3_secret_key: lookup("AWS_SECRET_ACCESS_KEY")
                .context("AWS_SECRET_ACCESS_KEY is not set (nor in .env)")?,
            s3_region: lookup("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
            mlflow: parse_host_port(&mlflow).context("MLFLOW_TRACKING_URI")?,
        })
    }

    /// The variables a client of this stack needs, with the ecosystem's names.
    pub fn variables(&self) -> BTreeMap<String, String> {
        let pg = &self.postgres;
        [
            ("KAFKA_BOOTSTRAP_SERVERS", self.kafka.to_string()),
            (
                "DATABASE_URL",
                format!(
                    "postgres://{}:{}@{}/{}",
                    pg.user, pg.password, pg.host, pg.database
                ),
            ),
            ("AWS_ENDPOINT_URL", format!("http://{}", self.s3)),
            ("AWS_ACCESS_KEY_ID", self.s3_access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.s3_secret_key.clone()),
            ("AWS_REGION", self.s3_region.clone()),
            ("MLFLOW_TRACKING_URI", format!("http://{}", self.mlflow)),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
    }

    fn endpoint(&self, service: Service) -> &HostPort {
        match service {
            Service::Kafka => &self.kafka,
            Service::Postgres => &self.postgres.host,
            Service::S3 => &self.s3,
            Service::Mlflow => &self.mlflow,
        }
    }

    fn service_dir(&self, service: Service) -> PathBuf {
        self.dir.join(service.name())
    }

    pub fn pid_file(&self, service: Service) -> PathBuf {
        self.service_dir(service).join("pid")
    }

    fn log_file(&self, service: Service) -> PathBuf {
        self.service_dir(service).join("log")
    }

    /// PostgreSQL refuses to run as root, and the `postgres` user cannot enter
    /// root's home: as root the cluster lives under /var/lib, one per stack folder.
    fn postgres_data_dir(&self) -> PathBuf {
        if nix::unistd::Uid::effective().is_root() {
            use sha2::{Digest, Sha256};
            let digest = Sha256::digest(self.dir.as_os_str().as_encoded_bytes());
            let tag: String = digest
                .iter()
                .take(6)
                .map(|byte| format!("{byte:02x}"))
                .collect();
            PathBuf::from("/var/lib/cardet-postgres").join(tag)
        } else {
            self.service_dir(Service::Postgres).join("cluster")
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The keys the stack's S3 server was started with (owner-readable only).
fn s3_credentials_file(stack_dir: &Path) -> PathBuf {
    stack_dir.join("s3/credentials")
}

fn random_key(prefix: &str, n_chars: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let random: String = (0..n_chars)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{random}")
}

/// `host:port`, optionally behind a scheme and followed by a path.
fn parse_host_port(text: &str) -> anyhow::Result<HostPort> {
    let without_scheme = text.split_once("://").map_or(text, |(_, rest)| rest);
    let authority = without_scheme.split('/').next().unwrap_or_default();
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let (host, port) = authority
        .rsplit_once(':')
        .with_context(|| format!("{text:?} has no port"))?;
    let port = port
        .parse()
        .with_context(|| format!("{text:?}: bad port {port:?}"))?;
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

fn parse_postgres_url(url: &str) -> anyhow::Result<PostgresUrl> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .with_context(|| format!("{url:?} is not a postgres:// URL"))?;
    let (credentials, location) = rest
        .rsplit_once('@')
        .with_context(|| format!("{url:?} has no user"))?;
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let (authority, database) = location.split_once('/').unwrap_or((location, user));
    let database = database.split('?').next().unwrap_or(database);
    Ok(PostgresUrl {
        user: user.to_string(),
        password: password.to_string(),
        host: parse_host_port(authority)?,
        database: database.to_string(),
    })
}

pub fn up(home: &CardetHome, config: &StackConfig, services: &[Service]) -> anyhow::Result<()> {
    if services.contains(&Service::Kafka) {
        warn_if_broker_file_is_large(config);
    }
    for &service in services {
        let started = Instant::now();
        if let Some(pid) = running_pid(config, service) {
            // Ours and alive: it may still be starting (an earlier `up` that was interrupted).
            wait_until_ready(config, service, pid).with_context(|| {
                format!(
                    "{} is running (pid {pid}) but does not answer",
                    service.name()
                )
            })?;
            println!(
                "stack: {} already running (pid {pid}) on {}",
                service.name(),
                config.endpoint(service)
            );
            continue;
        }
        let endpoint = config.endpoint(service);
        if TcpStream::connect_timeout(&socket_addr(endpoint)?, Duration::from_millis(300)).is_ok() {
            bail!(
                "{} cannot start: {endpoint} is already taken by another process (not one this stack started); \
                 stop it or point the stack elsewhere with {}",
                service.name(),
                variable_for(service)
            );
        }
        std::fs::create_dir_all(config.service_dir(service))?;
        let pid = start(home, config, service)?;
        std::fs::write(config.pid_file(service), pid.to_string())?;
        wait_until_ready(config, service, pid)?;
        if service == Service::Postgres {
            create_database(config)?;
        }
        println!(
            "stack: {} up on {} (pid {pid}, {:.1}s)",
            service.name(),
            config.endpoint(service),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn variable_for(service: Service) -> &'static str {
    match service {
        Service::Kafka => "KAFKA_BOOTSTRAP_SERVERS",
        Service::Postgres => "DATABASE_URL",
        Service::S3 => "AWS_ENDPOINT_URL",
        Service::Mlflow => "MLFLOW_TRACKING_URI",
    }
}

/// A port nothing listens on now, for a server xtask starts.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn socket_addr(endpoint: &HostPort) -> anyhow::Result<std::net::SocketAddr> {
    (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("{endpoint} does not resolve"))
}

fn start(home: &CardetHome, config: &StackConfig, service: Service) -> anyhow::Result<u32> {
    let dir = config.service_dir(service);
    let port = config.endpoint(service).port.to_string();
    let host = config.endpoint(service).host.clone();
    let mut command = match service {
        Service::Kafka => {
            let url = format!("tcp://{}", config.kafka);
            let mut command = Command::new(require(home.tool_bin(&home::TANSU))?);
            // The sqlite file is relative to the working directory (see DESIGN.md).
            command.args(["broker", "--storage-engine", "sqlite://tansu.db"]);
            command.args(["--listener-url", &url, "--advertised-listener-url", &url]);
            command
        }
        Service::Postgres => postgres_command(config)?,
        Service::S3 => {
            let data = dir.join("data");
            std::fs::create_dir_all(&data)?;
            let credentials: BTreeMap<String, String> = [
                (
                    "AWS_ACCESS_KEY_ID".to_string(),
                    config.s3_access_key.clone(),
                ),
                (
                    "AWS_SECRET_ACCESS_KEY".to_string(),
                    config.s3_secret_key.clone(),
                ),
            ]
            .into_iter()
            .collect();
            let credentials_file = s3_credentials_file(&config.dir);
            let _ = std::fs::remove_file(&credentials_file);
            env_file::add_missing(&credentials_file, &credentials)?;
            let mut command = Command::new(require(home.tool_bin(&home::S3S_FS))?);
            command.args(["--host", &host, "--port", &port]);
            command.args([
                "--access-key",
                &config.s3_access_key,
                "--secret-key",
                &config.s3_secret_key,
            ]);
            command.arg(data);
            command
        }
        Service::Mlflow => {
            let store = format!("sqlite:///{}", dir.join("mlflow.db").display());
            let artifacts = dir.join("artifacts");
            std::fs::create_dir_all(&artifacts)?;
            let mut command = Command::new(require(home.venv_bin("mlflow"))?);
            command.args(["server", "--host", &host, "--port", &port, "--workers", "1"]);
            command.args(["--backend-store-uri", &store]);
            command.arg("--artifacts-destination").arg(artifacts);
            command
        }
    };
    let log = File::options()
        .create(true)
        .append(true)
        .open(config.log_file(service))
        .with_context(|| format!("opening {}", config.log_file(service).display()))?;
    command
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: `down` stops the service with all of its children
        // (MLflow's workers, PostgreSQL's backends) and nothing else.
        .process_group(0);
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", service.name()))?;
    Ok(child.id())
}

fn require(path: PathBuf) -> anyhow::Result<PathBuf> {
    if path.exists() {
        Ok(path)
    } else {
        bail!("{} is missing: run `cargo xtask setup`", path.display())
    }
}

fn postgres_command(config: &StackConfig) -> anyhow::Result<Command> {
    let data = config.postgres_data_dir();
    let as_root = nix::unistd::Uid::effective().is_root();
    let run_as_postgres = |program: &str| {
        let binary = format!("{POSTGRES_BIN}/{program}");
        if as_root {
            let mut command = Command::new("setpriv");
            command.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
                &binary,
            ]);
            command
        } else {
            Command::new(binary)
        }
    };
    if !data.join("PG_VERSION").exists() {
        let parent = data.parent().context("postgres data dir has no parent")?;
        std::fs::create_dir_all(&data)?;
        let password_file = parent.join(format!("{}.pw", config.postgres.user));
        std::fs::write(&password_file, &config.postgres.password)?;
        if as_root {
            let owner = nix::unistd::User::from_name("postgres")?
                .context("no `postgres` user: run `cargo xtask setup`")?;
            for path in [parent, data.as_path(), password_file.as_path()] {
                nix::unistd::chown(path, Some(owner.uid), Some(owner.gid))?;
            }
        }
        let output = run_as_postgres("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", &config.postgres.user, "-E", "UTF8", "--no-locale"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", password_file.display()))
            .output()
            .context("running initdb")?;
        let _ = std::fs::remove_file(&password_file);
        if !output.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    let mut command = run_as_postgres("postgres");
    command.arg("-D").arg(&data);
    command.args([
        "-p",
        &config.postgres.host.port.to_string(),
        "-h",
        &config.postgres.host.host,
    ]);
    // The socket goes into the data folder: /var/run/postgresql may not exist.
    command.arg("-k").arg(&data);
    Ok(command)
}

fn create_database(config: &StackConfig) -> anyhow::Result<()> {
    let pg = &config.postgres;
    let psql = |sql: &str, database: &str| {
        Command::new(format!("{POSTGRES_BIN}/psql"))
            .args([
                "-h",
                &pg.host.host,
                "-p",
                &pg.host.port.to_string(),
                "-U",
                &pg.user,
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
            .env("PGPASSWORD", &pg.password)
            .output()
    };
    let exists = psql(
        &format!(
            "select 1 from pg_database where datname = '{}'",
            pg.database
        ),
        "postgres",
    )?;
    if !exists.status.success() {
        bail!(
            "psql against {}: {}",
            pg.host,
            String::from_utf8_lossy(&exists.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&exists.stdout).trim() != "1" {
        let created = psql(&format!("create database \"{}\"", pg.database), "postgres")?;
        if !created.status.success() {
            bail!(
                "creating database {}: {}",
                pg.database,
                String::from_utf8_lossy(&created.stderr).trim()
            );
        }
    }
    Ok(())
}

fn wait_until_ready(config: &StackConfig, service: Service, pid: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + service.start_timeout();
    loop {
        let last_error = match probe(config, service) {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        reap(Pid::from_raw(i32::try_from(pid)?));
        if !group_alive(pid) {
            bail!(
                "{} exited during start-up; the end of {}:\n{}",
                service.name(),
                config.log_file(service).display(),
                tail(&config.log_file(service), 20)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer within {:?} ({last_error:#}); the end of {}:\n{}",
                service.name(),
                service.start_timeout(),
                config.log_file(service).display(),
                tail(&config.log_file(service), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A real request to the service: Kafka ApiVersions, PostgreSQL's startup
/// handshake via `pg_isready`, an S3 HTTP answer, MLflow's experiments search.
pub fn probe(config: &StackConfig, service: Service) -> anyhow::Result<()> {
    let endpoint = config.endpoint(service);
    match service {
        Service::Kafka => kafka_api_versions(endpoint),
        Service::Postgres => {
            let status = Command::new(format!("{POSTGRES_BIN}/pg_isready"))
                .args(["-q", "-h", &endpoint.host, "-p", &endpoint.port.to_string()])
                .status()
                .context("running pg_isready")?;
            if status.success() {
                Ok(())
            } else {
                bail!("pg_isready: not accepting connections")
            }
        }
        Service::S3 => {
            // Unsigned, so the answer is 403 AccessDenied: what matters is that it is S3 answering.
            let response = http_get(&format!("http://{endpoint}/"))?;
            if response.0 == 403 || response.0 == 200 {
                Ok(())
            } else {
                bail!("S3 answered {}", response.0)
            }
        }
        Service::Mlflow => {
            let (status, _) = http_get(&format!(
                "http://{endpoint}/api/2.0/mlflow/experiments/search?max_results=1"
            ))?;
            if status == 200 {
                Ok(())
            } else {
                bail!("MLflow answered {status}")
            }
        }
    }
}

fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    let mut response = agent.get(url).call()?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    Ok((status, body))
}

/// Kafka's ApiVersions v0, written by hand so xtask needs no Kafka client:
/// size, api_key 18, api_version 0, correlation id, client id; the answer must echo
/// the correlation id with error code 0.
fn kafka_api_versions(endpoint: &HostPort) -> anyhow::Result<()> {
    const CORRELATION_ID: i32 = 0x0ca4_de70;
    let client_id = b"cardet-xtask";
    let mut request = Vec::new();
    request.extend_from_slice(&18i16.to_be_bytes());
    request.extend_from_slice(&0i16.to_be_bytes());
    request.extend_from_slice(&CORRELATION_ID.to_be_bytes());
    request.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    request.extend_from_slice(client_id);
    let mut stream = TcpStream::connect_timeout(&socket_addr(endpoint)?, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(&(request.len() as i32).to_be_bytes())?;
    stream.write_all(&request)?;
    let mut header = [0u8; 10];
    stream
        .read_exact(&mut header)
        .context("reading the ApiVersions answer")?;
    let correlation = i32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let error_code = i16::from_be_bytes([header[8], header[9]]);
    if correlation != CORRELATION_ID {
        bail!("ApiVersions answered correlation id {correlation}");
    }
    if error_code != 0 {
        bail!("ApiVersions answered error code {error_code}");
    }
    Ok(())
}

/// The recorded PID, if its process group still has a live member.
pub fn running_pid(config: &StackConfig, service: Service) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(config.pid_file(service))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (group_alive(pid) && leader_is(pid, service)).then_some(pid)
}

/// PIDs wrap (pid_max is often 32768), so a PID file left by a stack that died with
/// its machine may name someone else's process: the leader, if it still exists,
/// must be the service's program. A group whose leader is gone is still ours: the
/// kernel does not reuse a PID while a process group of that id exists.
fn leader_is(pid: u32, service: Service) -> bool {
    let program = match service {
        Service::Kafka => "tansu",
        Service::Postgres => "postgres",
        Service::S3 => "s3s-fs",
        Service::Mlflow => "mlflow",
    };
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline
            .split(|byte| *byte == 0)
            .take(3)
            .any(|arg| String::from_utf8_lossy(arg).contains(program)),
        Err(_) => true,
    }
}

pub fn group_alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| killpg(Pid::from_raw(pid), None).is_ok())
}

/// Stops the services, deletes what they stored, and starts them again empty.
fn reset(home: &CardetHome, config: &StackConfig, services: &[Service]) -> anyhow::Result<()> {
    down(config, services)?;
    for &service in services {
        for path in stored_data(config, service) {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => println!("stack: deleted {}", path.display()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(error).with_context(|| format!("deleting {}", path.display()));
                }
            }
        }
    }
    up(home, config, services)
}

/// What a service keeps between runs (its log and PID file aside).
fn stored_data(config: &StackConfig, service: Service) -> Vec<PathBuf> {
    let dir = config.service_dir(service);
    match service {
        Service::Kafka => ["tansu.db", "tansu.db-wal", "tansu.db-shm"]
            .iter()
            .map(|name| dir.join(name))
            .collect(),
        Service::Postgres => vec![config.postgres_data_dir()],
        Service::S3 => vec![dir.join("data")],
        Service::Mlflow => vec![dir.join("mlflow.db"), dir.join("artifacts")],
    }
}

/// A warning when the embedded broker's file has grown large: nothing else ever
/// shrinks it (see `reset`).
fn warn_if_broker_file_is_large(config: &StackConfig) {
    const LARGE: u64 = 8 << 30;
    let file = config.service_dir(Service::Kafka).join("tansu.db");
    if let Ok(metadata) = std::fs::metadata(&file)
        && metadata.len() > LARGE
    {
        println!(
            "stack: warning: {} is {:.1} GB; `cargo xtask stack reset kafka` empties it (every topic goes)",
            file.display(),
            metadata.len() as f64 / f64::from(1u32 << 30)
        );
    }
}

/// Stops the given services (in reverse start order) by their recorded PIDs.
pub fn down(config: &StackConfig, services: &[Service]) -> anyhow::Result<()> {
    for &service in services.iter().rev() {
        let pid_file = config.pid_file(service);
        let Some(pid) = running_pid(config, service) else {
            let _ = std::fs::remove_file(&pid_file);
            continue;
        };
        // PostgreSQL's SIGTERM waits for every client to leave; SIGINT is its fast shutdown.
        let signal = if service == Service::Postgres {
            Signal::SIGINT
        } else {
            Signal::SIGTERM
        };
        stop_group(pid, signal, Duration::from_secs(20))
            .with_context(|| format!("stopping {} (pid {pid})", service.name()))?;
        let _ = std::fs::remove_file(&pid_file);
        println!("stack: {} stopped (pid {pid})", service.name());
    }
    Ok(())
}

fn stop_group(pid: u32, signal: Signal, grace: Duration) -> anyhow::Result<()> {
    let group = Pid::from_raw(i32::try_from(pid)?);
    let _ = killpg(group, signal);
    let mut deadline = Instant::now() + grace;
    let mut killed = false;
    loop {
        reap(group);
        if !group_alive(pid) {
            return Ok(());
        }
        if Instant::now() > deadline {
            if killed {
                bail!("process group {pid} survived SIGKILL");
            }
            let _ = killpg(group, Signal::SIGKILL);
            killed = true;
            deadline = Instant::now() + Duration::from_secs(5);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// When the service is our own child (a test that runs `up` and `down` in one
/// process), its exit leaves a zombie that still counts as a group member until it
/// is reaped. From the `cargo xtask` command line it is init's child instead, and
/// this does nothing.
fn reap(leader: Pid) {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let _ = waitpid(leader, Some(WaitPidFlag::WNOHANG));
}

fn status(config: &StackConfig, json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for service in Service::ALL {
        let pid = running_pid(config, service);
        let answer = probe(config, service);
        rows.push(serde_json::json!({
            "service": service.name(),
            "endpoint": config.endpoint(service).to_string(),
            "pid": pid,
            "answers": answer.is_ok(),
            "error": answer.err().map(|error| format!("{error:#}")),
        }));
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    for row in &rows {
        let pid = row["pid"]
            .as_u64()
            .map_or_else(|| "-".to_string(), |pid| pid.to_string());
        let state = if row["answers"].as_bool() == Some(true) {
            "answers".to_string()
        } else {
            format!("down ({})", row["error"].as_str().unwrap_or_default())
        };
        println!(
            "{:<9} {:<22} pid {:<8} {state}",
            row["service"].as_str().unwrap_or_default(),
            row["endpoint"].as_str().unwrap_or_default(),
            pid
        );
    }
    Ok(())
}

fn logs(config: &StackConfig, only: Option<&str>, lines: usize) -> anyhow::Result<()> {
    let services = match only {
        Some(name) => select(&[name.to_string()])?,
        None => Service::ALL.to_vec(),
    };
    for service in services {
        let path = config.log_file(service);
        println!("==> {} ({}) <==", service.name(), path.display());
        println!("{}", tail(&path, lines));
    }
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_pid_is_not_taken_for_a_service() {
        // This test's own process is alive and leads no stack service.
        let own = std::process::id();
        assert!(!leader_is(own, Service::Kafka));
        assert!(!leader_is(own, Service::Mlflow));
    }

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(
            parse_host_port("127.0.0.1:9092").ok(),
            Some(HostPort {
                host: "127.0.0.1".into(),
                port: 9092
            })
        );
        assert_eq!(
            parse_host_port("http://localhost:5000/some/path").ok(),
            Some(HostPort {
                host: "localhost".into(),
                port: 5000
            })
        );
        assert!(parse_host_port("http://localhost/").is_err());
        let pg = parse_postgres_url("postgresql://k6:secret@db.local:6543/k6?sslmode=disable")
            .expect("parses");
        assert_eq!(
            (pg.user.as_str(), pg.password.as_str(), pg.database.as_str()),
            ("k6", "secret", "k6")
        );
        assert_eq!(
            pg.host,
            HostPort {
                host: "db.local".into(),
                port: 6543
            }
        );
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port")
    }

    /// A stack of its own in `dir`, every service on a free port.
    fn private_stack(dir: &Path, name: &str) -> StackConfig {
        let ports: BTreeMap<&str, String> = [
            (
                "KAFKA_BOOTSTRAP_SERVERS",
                format!("127.0.0.1:{}", free_port()),
            ),
            (
                "DATABASE_URL",
                format!("postgres://{name}:pw@127.0.0.1:{}/{name}", free_port()),
            ),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", free_port()),
            ),
            ("AWS_ACCESS_KEY_ID", name.to_string()),
            ("AWS_SECRET_ACCESS_KEY", format!("{name}-secret")),
            (
                "MLFLOW_TRACKING_URI",
                format!("http://127.0.0.1:{}", free_port()),
            ),
        ]
        .into_iter()
        .collect();
        StackConfig::from_lookup(dir.to_path_buf(), &|key| ports.get(key).cloned()).expect("config")
    }

    /// `reset` empties what the services stored and leaves them running: the broker's
    /// file is a new one, the S3 server's buckets are gone.
    #[test]
    fn reset_empties_the_services_and_starts_them_again() {
        let home = CardetHome::from_env();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = private_stack(dir.path(), "reset");
        let services = [Service::Kafka, Service::S3];
        let broker_file = config.service_dir(Service::Kafka).join("tansu.db");
        let bucket = config.service_dir(Service::S3).join("data/some-bucket");
        let result = up(&home, &config, &services).and_then(|()| {
            // Its creation time tells the new file from the old (an inode number
            // is reused at once).
            let created_before = std::fs::metadata(&broker_file)?.created()?;
            std::fs::create_dir_all(&bucket)?;
            reset(&home, &config, &services)?;
            Ok(created_before)
        });
        let running: Vec<bool> = services
            .iter()
            .map(|&service| running_pid(&config, service).is_some())
            .collect();
        let created_after = std::fs::metadata(&broker_file).and_then(|m| m.created());
        down(&config, &services).expect("stack down");
        let created_before = result.expect("up, then reset");
        assert_eq!(running, [true, true], "kafka and s3 run again after reset");
        let created_after = created_after.expect("a tansu.db after reset");
        assert!(created_after > created_before, "a new tansu.db");
        assert!(!bucket.exists(), "the bucket is gone");
    }

    /// A second stack on free ports in a temporary folder: every service comes up and
    /// answers, and after `down` no recorded process group has a live member.
    #[test]
    fn stack_down_leaves_no_process_behind() {
        let home = CardetHome::from_env();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = private_stack(dir.path(), "lifecycle");
        let result = up(&home, &config, &Service::ALL);
        let pids: Vec<(Service, Option<u32>)> = Service::ALL
            .into_iter()
            .map(|service| (service, running_pid(&config, service)))
            .collect();
        down(&config, &Service::ALL).expect("stack down");
        result.expect("stack up");
        for (service, pid) in pids {
            let pid = pid
                .unwrap_or_else(|| panic!("{} had no live recorded pid while up", service.name()));
            assert!(
                !group_alive(pid),
                "{} (pid {pid}) is still alive after down",
                service.name()
            );
            assert!(
                !config.pid_file(service).exists(),
                "{} pid file left behind",
                service.name()
            );
        }
        let _ = std::fs::remove_dir_all(config.postgres_data_dir());
    }
}
