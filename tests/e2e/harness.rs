//! Runs the real `postrider` binary for end-to-end tests.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any condition in these tests may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The ports [`free_port`] hands out: below Linux's ephemeral range (32768–60999), so an
/// outgoing connection of a parallel test can never take a port between the check and the
/// relay's bind.
const HANDED_OUT_PORTS: std::ops::Range<u16> = 20000..32000;

/// A free TCP port on `ip` (bound and released; the relay binds it right after). Each call in
/// this process returns a different port, starting at a random point of [`HANDED_OUT_PORTS`].
pub fn free_port(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(HANDED_OUT_PORTS.end - HANDED_OUT_PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        random_start() % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = HANDED_OUT_PORTS.start + offset as u16;
        if StdListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    let l = StdListener::bind((ip, 0)).expect("bind ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A start point that differs between test processes (pid and clock), so parallel runs of
/// the suite on one machine do not walk the same ports.
fn random_start() -> u32 {
    let millis = postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock).as_millis();
    (millis as u32) ^ std::process::id().wrapping_mul(2_654_435_761)
}

/// Polls `f` until it returns `Some`, or panics with `what` after [`PATIENCE`].
pub async fn wait_until<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    wait_until_for(PATIENCE, what, f).await
}

/// [`wait_until`] with an explicit patience, for conditions that involve a restart.
pub async fn wait_until_for<T>(
    patience: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A relay process with its own data directory and ports.
pub struct TestRelay {
    child: Option<Child>,
    /// Keeps the data directory alive across restarts; removed when the relay is dropped.
    _dir: Arc<tempfile::TempDir>,
    /// SMTP submission address.
    pub smtp: SocketAddr,
    /// HTTP API address.
    pub http: SocketAddr,
    config_path: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestRelay {
    /// Writes a config from `extra` (TOML appended after the generated listener/data lines) and
    /// starts the relay, waiting until its HTTP health check answers.
    pub async fn start(extra: &str) -> TestRelay {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::start_in(dir, extra).await
    }

    /// Starts a relay on an existing data directory (a restart).
    pub async fn start_in(dir: Arc<tempfile::TempDir>, extra: &str) -> TestRelay {
        // A port found free can still be taken by another process before the relay binds it:
        // that start is repeated on new ports.
        for _ in 0..4 {
            match Self::try_start_in(dir.clone(), extra).await {
                Ok(relay) => return relay,
                Err(log) => {
                    eprintln!("relay start lost its port to another process, retrying:\n{log}")
                }
            }
        }
        match Self::try_start_in(dir, extra).await {
            Ok(relay) => relay,
            Err(log) => panic!("postrider could not bind its ports; log:\n{log}"),
        }
    }

    /// One start on newly chosen ports; `Err` with the log when a port was already in use.
    async fn try_start_in(dir: Arc<tempfile::TempDir>, extra: &str) -> Result<TestRelay, String> {
        let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .expect("addr");
        let http: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .expect("addr");
        let config = format!(
            "hostname = \"relay.postrider.test\"\ndata_dir = {data:?}\n{extra}\n",
            data = dir.path().join("data").display().to_string(),
        );
        let config = merge_listeners(&config, smtp, http);
        let config_path = dir.path().join(format!("postrider-{}.toml", smtp.port()));
        std::fs::write(&config_path, config).expect("write config");
        let mut relay = TestRelay {
            child: None,
            _dir: dir,
            smtp,
            http,
            config_path,
            log: Arc::default(),
        };
        relay.spawn();
        match relay.wait_until_healthy().await {
            Ok(()) => Ok(relay),
            Err(log) if log.contains("already in use") => Err(log),
            Err(log) => panic!("postrider exited early; log:\n{log}"),
        }
    }

    /// Starts the relay process. Its log filter is `RUST_LOG=info` (or `POSTRIDER_TEST_LOG`),
    /// unless the config has a `[log]` table: then `log.level` rules, as in production.
    fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_postrider"));
        let config = std::fs::read_to_string(&self.config_path).unwrap_or_default();
        if config.contains("\n[log]") {
            command.env_remove("RUST_LOG");
        } else {
            command.env(
                "RUST_LOG",
                std::env::var("POSTRIDER_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        }
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn postrider");
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        let echo = std::env::var_os("POSTRIDER_TEST_ECHO").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[relay] {line}");
                }
                log.lock().expect("log lock").push(line);
            }
        });
        self.child = Some(child);
    }

    async fn wait_healthy(&mut self) {
        if let Err(log) = self.wait_until_healthy().await {
            panic!("postrider exited early; log:\n{log}");
        }
    }

    /// Waits for the health check; `Err` with the log when the process exited first.
    async fn wait_until_healthy(&mut self) -> Result<(), String> {
        let http = self.http;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = self.child.as_mut().expect("child").try_wait() {
                // The stderr reader may still be catching up with the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!("exit {status}\n{}", self.log_text()));
            }
            if let Ok((200, _)) = http_request(http, "GET", "/healthz", None, &[]).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!(
                    "postrider did not become healthy; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The configuration file the relay runs with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// The relay's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// Everything the relay logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Sends a signal and waits for the process to exit, returning its exit code.
    pub async fn stop_with(&mut self, signal: &str) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "postrider did not exit after SIG{signal}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Restarts on the same data directory and config (new ports are not needed: same ones).
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop_with("TERM").await;
        }
        self.spawn();
        self.wait_healthy().await;
    }

    /// `GET` returning status and parsed JSON (Null when the body is not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_request(self.http, "GET", path, None, &[])
            .await
            .expect("http GET");
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `POST` a JSON body, returning status and parsed JSON.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let raw = serde_json::to_vec(body).expect("json");
        let (status, body) = http_request(
            self.http,
            "POST",
            path,
            Some(&raw),
            &[("Content-Type", "application/json")],
        )
        .await
        .expect("http POST");
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The value of a metric line (`name{labels} value`) in `/metrics`, if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_request(self.http, "GET", "/metrics", None, &[])
            .await
            .ok()?;
        let text = String::from_utf8(body).ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How a run of the `postrider` binary ended.
#[derive(Debug)]
pub struct Finished {
    /// The exit status; `None` when it had to be killed after [`PATIENCE`].
    pub code: Option<i32>,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// Runs the `postrider` binary with `args` to its end (killed after [`PATIENCE`]).
pub async fn run_postrider<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> Finished {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_postrider"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn postrider");
    finish(child).await
}

/// Waits for a spawned child with piped output to end (killed after [`PATIENCE`]).
pub async fn finish(child: tokio::process::Child) -> Finished {
    match tokio::time::timeout(PATIENCE, child.wait_with_output()).await {
        Ok(output) => {
            let output = output.expect("wait for the child");
            Finished {
                code: output.status.code(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        }
        Err(_) => Finished {
            code: None,
            stdout: String::new(),
            stderr: format!("still running after {PATIENCE:?}"),
        },
    }
}

/// Puts the generated listener addresses into the config, merging with a user `[smtp]`/`[http]`
/// table if the test supplied one.
fn merge_listeners(config: &str, smtp: SocketAddr, http: SocketAddr) -> String {
    let mut out = String::new();
    let mut smtp_done = false;
    let mut http_done = false;
    for line in config.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim() == "[smtp]" {
            out.push_str(&format!("listen = [\"{smtp}\"]\n"));
            smtp_done = true;
        }
        if line.trim() == "[http]" {
            out.push_str(&format!("listen = \"{http}\"\n"));
            http_done = true;
        }
    }
    if !smtp_done {
        out.push_str(&format!("[smtp]\nlisten = [\"{smtp}\"]\n"));
    }
    if !http_done {
        out.push_str(&format!("[http]\nlisten = \"{http}\"\n"));
    }
    out
}

/// A minimal HTTP/1.1 client for the tests (one request per connection).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    let body = body.unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await??;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let mut payload = buf[head_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    Ok((status, payload))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = pos + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}
