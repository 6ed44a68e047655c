//! Real services for tests: a Tansu broker ([`Broker`]) and a ClickHouse
//! server ([`ClickHouse`]) per test, on free loopback ports.
//!
//! Nothing here is a mock. [`Broker::start`] runs the Tansu binary that
//! `deploy/local/install.sh` caches (or `$TALLY_TANSU_BIN`), waits until it
//! answers metadata requests, and kills it when dropped. If the binary is
//! missing or will not start, it fails loudly: a test never passes by
//! skipping.
//!
//! [`read_topic`] reads a topic to its end using the high watermark that
//! fetch responses carry (Tansu's memory storage answers ListOffsets(latest)
//! wrongly, so the watermark from fetches is the one to trust).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig, Message,
};

/// Where the Tansu binary is: `$TALLY_TANSU_BIN`, else the install cache.
pub fn tansu_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TALLY_TANSU_BIN") {
        return Ok(PathBuf::from(path));
    }
    let cache = match std::env::var_os("TALLY_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache/tally"),
    };
    let path = cache.join("tansu-0.6.0/bin/tansu");
    if !path.exists() {
        bail!("tansu is not installed at {}: run deploy/local/install.sh (the test command does)", path.display());
    }
    Ok(path)
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Where a broker keeps its data.
#[derive(Debug, Clone)]
pub enum Storage {
    /// In memory: fast, lost when the broker stops.
    Memory,
    /// SQLite file: survives a broker restart.
    Sqlite(PathBuf),
}

/// A running Tansu broker, killed when dropped.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    storage: Storage,
    log: PathBuf,
}

impl Broker {
    /// Starts a broker on a free port and waits until it answers.
    pub fn start(storage: Storage) -> Result<Broker> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("tally-tansu-{port}.log"));
        let mut broker = Broker { child: None, port, storage, log };
        broker.spawn()?;
        Ok(broker)
    }

    /// Starts a memory-storage broker.
    pub fn memory() -> Result<Broker> {
        Broker::start(Storage::Memory)
    }

    fn spawn(&mut self) -> Result<()> {
        // Tansu reads a sqlite:// path relative to its working directory
        // (an absolute one loses its leading slash): run it in the folder.
        let (url, dir) = match &self.storage {
            Storage::Memory => ("memory://tansu/".to_string(), std::env::temp_dir()),
            Storage::Sqlite(path) => {
                let name = path.file_name().context("sqlite path has no file name")?.to_string_lossy().to_string();
                let dir = path.parent().map_or_else(std::env::temp_dir, Path::to_path_buf);
                std::fs::create_dir_all(&dir)?;
                (format!("sqlite://{name}"), dir)
            }
        };
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = Command::new(tansu_binary()?)
            .current_dir(dir)
            .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
            .args(["--storage-engine", &url])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start tansu")?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let consumer: BaseConsumer = consumer_config(&self.bootstrap(), None).create()?;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("tansu exited with {status} while starting; see {}", self.log.display());
                }
            }
            if consumer.fetch_metadata(None, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("tansu did not answer on port {} within {timeout:?}; see {}", self.port, self.log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `bootstrap.servers` of this broker.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Kills the broker with SIGKILL (no clean shutdown).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().context("reap tansu")?;
        }
        Ok(())
    }

    /// Stops the broker with SIGTERM, waiting up to 10 s before SIGKILL.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().ok();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    child.kill().ok();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            child.wait().ok();
        }
        Ok(())
    }

    /// Starts a stopped or killed broker again on the same port and storage.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the broker is still running");
        }
        self.spawn()
    }

    /// Starts the broker again on the same port and storage.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Consumer settings for test readers (the services' own settings).
pub fn consumer_config(bootstrap: &str, group: Option<&str>) -> ClientConfig {
    tally_service::kafka::consumer_config(bootstrap, group.unwrap_or("tally-testkit-reader"))
}

/// Creates topics (an existing topic is fine).
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<()> {
    Ok(tally_service::kafka::ensure_topics(bootstrap, topics).await?)
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Payload.
    pub payload: Option<Vec<u8>>,
    /// Message timestamp (ms since the epoch), if any.
    pub timestamp: Option<i64>,
}

/// Reads every partition of a topic from the start to its current end (the
/// partition-EOF event, raised from the fetch response's high watermark),
/// through the services' one partition reader (which re-reads where a
/// broker's fetch skips records). Records come in (partition, offset)
/// order. A topic that does not exist yet reads as empty.
pub fn read_topic(bootstrap: &str, topic: &str, timeout: Duration) -> Result<Vec<Record>> {
    let Some(partitions) = tally_service::kafka::partition_count(bootstrap, topic, Duration::from_secs(5))? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for partition in 0..partitions {
        tally_service::kafka::read_partition(
            bootstrap,
            topic,
            partition,
            0,
            tally_service::kafka::Until::End,
            timeout,
            |message| {
                out.push(Record {
                    partition,
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    timestamp: message.timestamp().to_millis(),
                });
                Ok::<(), std::convert::Infallible>(())
            },
        )
        .with_context(|| format!("reading {topic}/{partition}"))?;
    }
    Ok(out)
}

/// Reads a topic until it holds at least `count` records. Some brokers
/// (Tansu's memory storage) report an end that lags acknowledged writes for
/// a moment, so a reader that knows what was written waits for it.
pub fn read_topic_at_least(bootstrap: &str, topic: &str, count: usize, timeout: Duration) -> Result<Vec<Record>> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = read_topic(bootstrap, topic, timeout)?;
        if records.len() >= count {
            return Ok(records);
        }
        if Instant::now() > deadline {
            bail!("{topic} holds {} records, expected at least {count} within {timeout:?}", records.len());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `tally` binary of this workspace, built (once per test process) with
/// the same cargo that runs the tests, so a test never runs a stale binary;
/// or the one `TALLY_BIN` names.
pub fn tally_binary() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<std::result::Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            // A prebuilt binary (for running a test binary on its own, away
            // from a tree being edited).
            if let Some(path) = std::env::var_os("TALLY_BIN").map(PathBuf::from) {
                return if path.exists() {
                    Ok(path)
                } else {
                    Err(format!("TALLY_BIN={} does not exist", path.display()))
                };
            }
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let release = !cfg!(debug_assertions);
            let mut command = Command::new(cargo);
            // With the crash points of the fault tests (never in a release
            // build: see tally-metering's `fault-injection` feature).
            command.current_dir(&workspace).args([
                "build",
                "--quiet",
                "-p",
                "tally-cli",
                "--bin",
                "tally",
                "--features",
                "tally-cli/fault-injection",
            ]);
            if release {
                command.arg("--release");
            }
            let status = command.status().map_err(|e| format!("cannot run cargo: {e}"))?;
            if !status.success() {
                return Err(format!("building the tally binary failed: {status}"));
            }
            let target =
                std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace.join("target"));
            let path = target.join(if release { "release" } else { "debug" }).join("tally");
            if path.exists() {
                Ok(path)
            } else {
                Err(format!("{} was not built", path.display()))
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A running ClickHouse server of its own (Debian's `clickhouse-server`,
/// or `$TALLY_CLICKHOUSE_SERVER`), on free loopback ports, with its data
/// in a fresh folder; killed when dropped. Starting fails loudly when the
/// server is not installed or does not answer: a test never passes by
/// skipping.
pub struct ClickHouse {
    child: Option<Child>,
    http_port: u16,
    tcp_port: u16,
    dir: PathBuf,
}

impl ClickHouse {
    /// Starts a server and waits until it answers `/ping`.
    pub fn start() -> Result<ClickHouse> {
        ClickHouse::start_in(&std::env::temp_dir())
    }

    /// Starts a server keeping its data under `root` (a tmpfs, say, to
    /// measure without the file system under the temp dir).
    pub fn start_in(root: &Path) -> Result<ClickHouse> {
        let (http_port, tcp_port) = (free_port()?, free_port()?);
        let dir = root.join(format!("tally-clickhouse-{http_port}"));
        let mut server = ClickHouse { child: None, http_port, tcp_port, dir };
        server.configure()?;
        server.spawn()?;
        Ok(server)
    }

    fn configure(&self) -> Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/clickhouse");
        let etc = self.dir.join("clickhouse/etc");
        for sub in ["log", "data", "tmp", "user_files", "format_schemas", "etc"] {
            std::fs::create_dir_all(self.dir.join("clickhouse").join(sub))?;
        }
        let template = std::fs::read_to_string(root.join("config.xml.in"))
            .with_context(|| format!("read {}", root.join("config.xml.in").display()))?;
        let config = template
            .replace("@STACK@", &self.dir.display().to_string())
            .replace("@HTTP_PORT@", &self.http_port.to_string())
            .replace("@TCP_PORT@", &self.tcp_port.to_string());
        std::fs::write(etc.join("config.xml"), config)?;
        std::fs::copy(root.join("users.xml"), etc.join("users.xml"))?;
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let binary = std::env::var_os("TALLY_CLICKHOUSE_SERVER")
            .map_or_else(|| PathBuf::from("clickhouse-server"), PathBuf::from);
        let log = std::fs::File::create(self.dir.join("clickhouse/log/stdout.log"))?;
        let child = Command::new(&binary)
            .arg(format!("--config-file={}", self.dir.join("clickhouse/etc/config.xml").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} (install it: deploy/local/install.sh clickhouse)", binary.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("clickhouse exited with {status} while starting; see {}", self.log_path().display());
                }
            }
            if self.get("/ping").is_ok_and(|(status, body)| status == 200 && body.trim() == "Ok.") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "clickhouse did not answer on port {} within {timeout:?}; see {}",
                    self.http_port,
                    self.log_path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The native protocol port (for `clickhouse-client --port`).
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// The server's error log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("clickhouse/log/server.err.log")
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        self.http("GET", path, "")
    }

    /// Runs `sql` over HTTP; returns the body, or an error with the
    /// server's message.
    pub fn query(&self, sql: &str) -> Result<String> {
        let (status, body) = self.http("POST", "/", sql)?;
        if status != 200 {
            bail!("clickhouse answered {status} to {sql:?}: {}", body.trim());
        }
        Ok(body)
    }

    fn http(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.http_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status")?;
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Ok((status, body))
    }

    /// kill -9 of the server (data stays; [`ClickHouse::start_again`]).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().context("reap clickhouse")?;
        }
        Ok(())
    }

    /// Stops the server with SIGTERM, waiting up to 30 s before SIGKILL.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status().ok();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    child.kill().ok();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            child.wait().ok();
        }
        Ok(())
    }

    /// Starts a stopped or killed server again on the same ports and data.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("clickhouse is still running");
        }
        self.spawn()
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The body of a chunked HTTP response.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server the stack installs starts on ports of its own, answers
    /// queries, and survives a kill -9 with its data.
    #[test]
    fn clickhouse_starts_answers_and_restarts() -> Result<()> {
        let mut server = ClickHouse::start()?;
        assert_eq!(server.query("SELECT 1 + 1")?.trim(), "2");
        server.query("CREATE TABLE t (n UInt32) ENGINE = MergeTree ORDER BY n")?;
        server.query("INSERT INTO t VALUES (1), (2), (3)")?;
        server.kill()?;
        server.start_again()?;
        assert_eq!(server.query("SELECT sum(n) FROM t")?.trim(), "6");
        assert!(server.query("SELECT nonsense(").is_err(), "a bad query is an error");
        Ok(())
    }
}
