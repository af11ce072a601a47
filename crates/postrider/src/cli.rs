//! Command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::ConfigError;
use crate::prepare::prepare;

/// Exit status for a bad configuration (sysexits EX_CONFIG-style usage error).
pub(crate) const EXIT_CONFIG: u8 = 64;

/// Exit status for a queue that cannot be opened as it is (sysexits EX_DATAERR): a damaged
/// database or missing journal records. Restarting does not help; `postrider store check`
/// says what is wrong.
pub(crate) const EXIT_DATA: u8 = 65;

/// Postrider: an outbound SMTP relay with a durable queue.
#[derive(Debug, Parser)]
#[command(name = "postrider", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (SMTP submission, REST API, delivery).
    Serve {
        /// TOML configuration file; without it the embedded defaults apply.
        #[arg(long, short, env = "POSTRIDER_CONFIG")]
        config: Option<PathBuf>,
        /// Start even when journal records are missing (a deleted journal file, a sequence
        /// gap): the loss is logged and recorded in quarantine/. See `postrider store check`.
        #[arg(long)]
        accept_journal_loss: bool,
    },
    /// Check a configuration file and print the effective settings summary.
    CheckConfig {
        /// TOML configuration file; without it the embedded defaults are checked.
        #[arg(long, short, env = "POSTRIDER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file like check-config, then make the relay running on its
    /// data_dir reload it (SIGHUP to the pid in data_dir/postrider.pid). Exit status 64: the
    /// file is refused and the relay keeps its configuration.
    Reload {
        /// The configuration file the relay runs with.
        #[arg(long, short, env = "POSTRIDER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Read a password from standard input and print its argon2 hash for `[[smtp.users]]`.
    Passwd,
    /// Inspect and act on the running relay's queue (through its HTTP API).
    Queue {
        #[command(flatten)]
        target: crate::api_client::ApiTarget,
        #[command(subcommand)]
        action: crate::admin::QueueAction,
    },
    /// SMTP TLS reports (RFC 8460) of the running relay (through its HTTP API).
    TlsReports {
        #[command(flatten)]
        target: crate::api_client::ApiTarget,
        #[command(subcommand)]
        action: crate::tls_reports::TlsReportsAction,
    },
    /// The pending queue in the layout of Postfix's `mailq` (through the relay's HTTP API).
    Mailq {
        #[command(flatten)]
        target: crate::api_client::ApiTarget,
    },
    /// DKIM key management.
    Dkim {
        #[command(subcommand)]
        action: DkimAction,
    },
    /// Check a sender domain's SPF, DKIM and DMARC records against this relay's settings.
    CheckDomain {
        /// The domain mail is sent from (the From: domain).
        domain: String,
        /// TOML configuration file (for DNS servers, DKIM keys and egress addresses).
        #[arg(long, short, env = "POSTRIDER_CONFIG")]
        config: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the relay's /healthz answers 200 (for container health checks).
    Healthcheck {
        /// Base URL of the relay's HTTP API.
        #[arg(long, env = "POSTRIDER_API", default_value = "http://127.0.0.1:8025")]
        api: String,
    },
    /// Manage REST API keys.
    Apikey {
        #[command(subcommand)]
        action: ApikeyAction,
    },
    /// Submit a message from standard input to the running relay, like `/usr/sbin/sendmail`
    /// (also what the binary does when run under the name `sendmail`); `--help` lists the flags.
    #[command(disable_help_flag = true)]
    Sendmail {
        /// sendmail flags and recipients (`-t`, `-i`, `-f sender`, `-F name`, `-v`, ...).
        #[arg(allow_hyphen_values = true, trailing_var_arg = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
    /// Check or rebuild the queue's data directory offline (for a damaged database).
    Store {
        #[command(subcommand)]
        action: crate::storage::StoreAction,
    },
}

#[derive(Debug, Subcommand)]
enum DkimAction {
    /// Generate a signing key, write it to a file and print the DNS TXT record to publish.
    Keygen {
        /// Signing domain (d=).
        #[arg(long)]
        domain: String,
        /// Selector (s=); the record goes at SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        /// rsa-sha256 (RSA-2048) or ed25519-sha256.
        #[arg(long, default_value = "rsa-sha256")]
        algorithm: String,
        /// Where to write the PEM private key (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ApikeyAction {
    /// Generate a new key; prints the key once and the config line holding its hash.
    New {
        /// Label of the key (shown in logs).
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: send, read, admin.
        #[arg(long, value_delimiter = ',', default_value = "send,read")]
        scopes: Vec<String>,
    },
}

/// Replaces this process with a fresh copy of itself (same arguments), which reopens the store.
/// Returns only if that fails.
pub(crate) fn reexec() -> anyhow::Error {
    use std::os::unix::process::CommandExt as _;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return anyhow::Error::new(e)
                .context("cannot find the postrider executable to restart");
        }
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::Error::new(err).context("cannot restart postrider")
}

/// Whether `error` is a queue that cannot be opened as it is (a damaged database, missing
/// journal records): restarting does not help, an operator must act.
fn is_unusable_queue(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<postrider_store::StoreError>(),
            Some(
                postrider_store::StoreError::DatabaseDamaged { .. }
                    | postrider_store::StoreError::JournalIncomplete { .. }
            )
        )
    })
}

/// Reports a configuration that cannot be used, once, on stderr: exit status 64 (EX_CONFIG).
fn config_refused(error: &ConfigError) -> ExitCode {
    eprintln!("postrider: {error}");
    ExitCode::from(EXIT_CONFIG)
}

/// Sends SIGHUP (reload the configuration) to process `pid`.
fn signal_reload(pid: u32) -> anyhow::Result<()> {
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .with_context(|| format!("{pid} is not a process id"))?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP)
        .with_context(|| format!("cannot signal postrider (pid {pid})"))
}

/// The exit status of a `serve` that failed to start or run: 65 for a queue that cannot be
/// opened as it is, 64 where only a change of configuration (or privileges) helps, 1 for the
/// rest (which a restart may cure).
fn serve_failure_status(error: &anyhow::Error) -> u8 {
    if is_unusable_queue(error) {
        return EXIT_DATA;
    }
    let needs_new_config = error.chain().any(|cause| {
        cause
            .downcast_ref::<crate::app::ListenError>()
            .is_some_and(crate::app::ListenError::is_configuration)
            || matches!(
                cause.downcast_ref::<crate::pidfile::PidFileError>(),
                Some(crate::pidfile::PidFileError::InUse { .. })
            )
    });
    if needs_new_config { EXIT_CONFIG } else { 1 }
}

/// The `[[http.api_keys]]` table of a new key: appended to a config file, it adds the key to
/// the keys already there.
fn api_key_block(name: &str, hash: &str, scopes: &[String]) -> String {
    let scopes = scopes
        .iter()
        .map(|s| toml::Value::from(s.as_str()).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[http.api_keys]]\nname = {}\nkey_hash = \"{hash}\"\nscopes = [{scopes}]\n",
        toml::Value::from(name)
    )
}

/// Writes a new file readable by its owner only; refuses to overwrite.
fn write_private(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// Runs the parsed command.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            accept_journal_loss,
        } => {
            let prepared = match prepare(config.as_deref()) {
                Ok(p) => p,
                Err(e) => return Ok(config_refused(&e)),
            };
            let log = &prepared.config.raw.log;
            let log = crate::logging::init(log.format, &log.level);
            crate::logging::install_panic_hook();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let start = crate::app::StartOptions {
                accept_journal_loss,
                config_path: config,
                log,
            };
            match runtime.block_on(crate::app::serve(prepared, start)) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("postrider: {e:#}");
                    Ok(ExitCode::from(serve_failure_status(&e)))
                }
            }
        }
        Command::CheckConfig { config } => match prepare(config.as_deref()) {
            Ok(prepared) => {
                let c = &prepared.config;
                println!(
                    "configuration ok: hostname {}, data_dir {}, smtp {:?}, http {}, delivery port {}",
                    c.hostname,
                    c.raw.data_dir.display(),
                    c.raw.smtp.listen,
                    c.raw.http.listen,
                    c.raw.delivery.port
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(config_refused(&e)),
        },
        Command::Reload { config } => {
            let prepared = match prepare(config.as_deref()) {
                Ok(p) => p,
                Err(e) => return Ok(config_refused(&e)),
            };
            let data_dir = &prepared.config.raw.data_dir;
            let pid = crate::pidfile::running_pid(data_dir)?;
            signal_reload(pid)?;
            println!(
                "configuration ok; reload signalled to postrider (pid {pid}); its log tells which \
                 changed keys need a restart"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Passwd => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!("empty password");
            }
            println!("{}", postrider_smtp::hash_password(password)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue { target, action } => {
            crate::admin::run(&target, action)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::TlsReports { target, action } => {
            crate::tls_reports::run(&target, action)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mailq { target } => {
            crate::mailq::run(&target)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dkim {
            action:
                DkimAction::Keygen {
                    domain,
                    selector,
                    algorithm,
                    out,
                },
        } => {
            let domain = postrider_core::Domain::parse(&domain)
                .map_err(|e| anyhow::anyhow!("--domain: {e}"))?;
            let algorithm: postrider_trust::DkimAlgorithm = algorithm
                .parse()
                .map_err(|e| anyhow::anyhow!("--algorithm: {e}"))?;
            let key = postrider_trust::generate_dkim_key(&domain, &selector, algorithm)?;
            write_private(&out, key.private_pem.as_bytes())?;
            println!("private key written to {}", out.display());
            println!(
                "Publish this TXT record:\n{} IN TXT \"{}\"",
                key.dns_name, key.dns_txt
            );
            println!(
                "or, in zone-file syntax (strings of at most {} characters):\n{}",
                postrider_trust::MAX_TXT_STRING,
                key.zone_file_record()
            );
            println!(
                "and add to the config:\n[[dkim.keys]]\ndomain = {:?}\nselector = {selector:?}\nkey_file = {:?}\nalgorithm = \"{algorithm}\"",
                domain.as_str(),
                out.display().to_string()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckDomain {
            domain,
            config,
            json,
        } => {
            let prepared = match prepare(config.as_deref()) {
                Ok(p) => p,
                Err(e) => return Ok(config_refused(&e)),
            };
            let domain = postrider_core::Domain::parse(&domain)
                .map_err(|e| anyhow::anyhow!("domain: {e}"))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(crate::app::check_domain(&prepared, &domain))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(if report.status == postrider_trust::CheckStatus::Fail {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Healthcheck { api } => {
            let url = format!("{}/healthz", api.trim_end_matches('/'));
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(std::time::Duration::from_secs(5)))
                .build()
                .into();
            match agent.get(&url).call() {
                Ok(r) if r.status().as_u16() == 200 => Ok(ExitCode::SUCCESS),
                Ok(r) => {
                    eprintln!("{url}: HTTP {}", r.status().as_u16());
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => {
                    eprintln!("{url}: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Store { action } => crate::storage::run(action),
        Command::Sendmail { args } => Ok(crate::sendmail::main("postrider sendmail", &args)),
        Command::Apikey {
            action: ApikeyAction::New { name, scopes },
        } => {
            if let Some(bad) = scopes
                .iter()
                .find(|s| !matches!(s.as_str(), "send" | "read" | "admin"))
            {
                anyhow::bail!("unknown scope {bad:?}: use send, read, admin");
            }
            let (key, hash) = postrider_api::generate_api_key();
            println!("key: {key}");
            println!(
                "Append this block to the config (the key itself is not stored anywhere), then \
                 run `postrider reload`:\n"
            );
            print!("{}", api_key_block(&name, &hash, &scopes));
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_api_key_block_appends_to_an_existing_key_list() {
        let existing = format!(
            "[http]\nlisten = \"127.0.0.1:8025\"\n\n[[http.api_keys]]\nname = \"billing\"\nkey_hash = \"{}\"\nscopes = [\"send\"]\n",
            "b".repeat(64)
        );
        let (_, hash) = postrider_api::generate_api_key();
        let block = api_key_block(
            "ops \"night\" shift",
            &hash,
            &["read".to_owned(), "admin".to_owned()],
        );
        let config = crate::config::Config::from_toml(&format!("{existing}\n{block}"))
            .unwrap_or_else(|e| panic!("{e}\n{block}"));
        let keys = &config.raw.http.api_keys;
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name, "billing");
        assert_eq!(keys[1].name, "ops \"night\" shift");
        assert_eq!(keys[1].key_hash, hash);
        assert_eq!(keys[1].scopes, ["read", "admin"]);
    }
}
