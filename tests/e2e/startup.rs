//! Start-up: `check-config` refuses exactly what `serve` refuses (both exit 64 with the same
//! message naming the key), and the common start-up failures (a data directory in use, one
//! that is a file, a port in use or not allowed) are told once, clearly.

use std::path::Path;

use crate::harness::{Finished, TestRelay, free_port, run_postrider};

/// sysexits EX_CONFIG.
const EXIT_CONFIG: i32 = 64;

/// Where a test relay keeps its queue and listens (ports on 127.0.0.1).
struct Setup<'a> {
    data_dir: &'a Path,
    smtp: u16,
    http: u16,
}

impl Setup<'_> {
    /// `data_dir` with free ports.
    fn in_dir(data_dir: &Path) -> Setup<'_> {
        Setup {
            data_dir,
            smtp: free_port("127.0.0.1"),
            http: free_port("127.0.0.1"),
        }
    }

    /// Writes the config file `path` for this setup, with `extra` keys.
    fn write(&self, path: &Path, extra: &str) -> std::path::PathBuf {
        let text = format!(
            "hostname = \"relay.postrider.test\"\ndata_dir = {data:?}\n{extra}\n[smtp]\nlisten = [\"127.0.0.1:{smtp}\"]\n[http]\nlisten = \"127.0.0.1:{http}\"\n",
            data = self.data_dir.display().to_string(),
            smtp = self.smtp,
            http = self.http,
        );
        std::fs::write(path, text).unwrap();
        path.to_owned()
    }
}

/// A config file in `dir` with free loopback listeners, `data_dir` inside `dir`, and `extra`.
fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    Setup::in_dir(&dir.join("data")).write(&dir.join("postrider.toml"), extra)
}

/// Asserts `run` ended with `code` and told `needle` exactly once on stderr.
fn told_once(run: &Finished, code: i32, needle: &str) {
    assert_eq!(run.code, Some(code), "{run:?}");
    assert_eq!(
        run.stderr.matches(needle).count(),
        1,
        "{needle:?} once in {run:?}"
    );
}

/// Asserts `run` ended with exit status 64 and one line on stderr, naming `key`.
fn refused_naming(run: &Finished, key: &str) {
    assert_eq!(run.code, Some(EXIT_CONFIG), "{run:?}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "one message: {run:?}");
    assert!(run.stderr.contains(key), "{key} named: {run:?}");
}

#[tokio::test]
async fn check_config_refuses_what_serve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let cases = [
        (
            "[smtp.tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"",
            "smtp.tls",
        ),
        (
            "[[dkim.keys]]\ndomain = \"example.com\"\nselector = \"s1\"\nkey_file = \"/nonexistent/dkim.pem\"",
            "dkim.keys.key_file",
        ),
        (
            "[[webhooks]]\nurl = \"ftp://x\"\nsecret = \"0123456789abcdef\"",
            "webhooks.url",
        ),
        (
            "[[webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"short\"",
            "webhooks.secret",
        ),
        (
            "[[routes]]\ndomain = \"*\"\nto = \"127.0.0.1:2526\"",
            "routes.domain",
        ),
        ("[delivery]\nlease = \"1m\"", "delivery.lease"),
    ];
    for (extra, key) in cases {
        let config = write_config(dir.path(), extra);
        let check = run_postrider([
            Path::new("check-config"),
            Path::new("--config"),
            config.as_path(),
        ])
        .await;
        refused_naming(&check, key);
        let serve =
            run_postrider([Path::new("serve"), Path::new("--config"), config.as_path()]).await;
        refused_naming(&serve, key);
        assert_eq!(check.stderr, serve.stderr, "same message from both");
    }
    // data_dir naming a regular file.
    let config = Setup::in_dir(&file).write(&dir.path().join("file-data-dir.toml"), "");
    for command in ["check-config", "serve"] {
        let run =
            run_postrider([Path::new(command), Path::new("--config"), config.as_path()]).await;
        refused_naming(&run, "data_dir");
    }
}

#[tokio::test]
async fn a_data_dir_in_use_names_the_running_relay() {
    let relay = TestRelay::start("").await;
    let pid = std::fs::read_to_string(relay.data_dir().join("postrider.pid")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Setup::in_dir(&relay.data_dir()).write(&dir.path().join("second.toml"), "");
    let second = run_postrider([Path::new("serve"), Path::new("--config"), config.as_path()]).await;
    told_once(
        &second,
        EXIT_CONFIG,
        &format!(
            "another postrider (pid {}) is using {}",
            pid.trim(),
            relay.data_dir().display()
        ),
    );
    // The running relay is unharmed.
    assert_eq!(relay.get_json("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_listen_address_in_use_names_its_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let setup = Setup {
        http: port,
        ..Setup::in_dir(&data_dir)
    };
    let config = setup.write(&dir.path().join("postrider.toml"), "");
    let run = run_postrider([Path::new("serve"), Path::new("--config"), config.as_path()]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    told_once(
        &run,
        1,
        &format!("http.listen: cannot listen on 127.0.0.1:{port}"),
    );
    assert_eq!(run.stderr.matches("in use").count(), 1, "{run:?}");
    assert!(run.stderr.contains("change http.listen"), "{run:?}");
}

#[tokio::test]
async fn a_privileged_port_without_the_capability_says_how_to_fix_it() {
    // A free port below 1024 (the tests run as root, which may bind it).
    let port = (600..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024");
    let unprivileged_from: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1024);
    if port >= unprivileged_from {
        eprintln!("skipped: this kernel lets anyone bind port {port}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let setup = Setup {
        smtp: port,
        ..Setup::in_dir(&data_dir)
    };
    let config = setup.write(&dir.path().join("postrider.toml"), "");
    // setpriv (util-linux) drops the capability from the bounding set, so even root lacks it.
    let output = tokio::process::Command::new("setpriv")
        .args([
            "--bounding-set",
            "-net_bind_service",
            "--inh-caps",
            "-net_bind_service",
        ])
        .arg(env!("CARGO_BIN_EXE_postrider"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(crate::harness::PATIENCE, output)
        .await
        .expect("postrider exits")
        .expect("run setpriv (util-linux)");
    let run = Finished {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    told_once(
        &run,
        EXIT_CONFIG,
        &format!("smtp.listen: cannot listen on 127.0.0.1:{port}"),
    );
    assert!(run.stderr.contains("CAP_NET_BIND_SERVICE"), "{run:?}");
    assert!(run.stderr.contains("AmbientCapabilities"), "{run:?}");
}
