//! Command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Config;

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
    /// Read a password from standard input and print its argon2 hash for `[[smtp.users]]`.
    Passwd,
    /// Inspect and act on the running relay's queue (through its HTTP API).
    Queue {
        #[command(flatten)]
        target: crate::api_client::ApiTarget,
        #[command(subcommand)]
        action: crate::admin::QueueAction,
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
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("postrider: {e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            crate::logging::init(config.raw.log.format, &config.raw.log.level);
            crate::logging::install_panic_hook();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            match runtime.block_on(crate::app::serve(config, accept_journal_loss)) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) if is_unusable_queue(&e) => {
                    eprintln!("postrider: {e:#}");
                    Ok(ExitCode::from(EXIT_DATA))
                }
                Err(e) => Err(e),
            }
        }
        Command::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(c) => {
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
            Err(e) => {
                eprintln!("postrider: {e}");
                Ok(ExitCode::from(EXIT_CONFIG))
            }
        },
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
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("postrider: {e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let domain = postrider_core::Domain::parse(&domain)
                .map_err(|e| anyhow::anyhow!("domain: {e}"))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(crate::app::check_domain(&config, &domain))?;
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
            println!("Add to [http] in the config (the key itself is not stored anywhere):");
            let scopes = scopes
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "api_keys = [{{ name = {name:?}, key_hash = \"{hash}\", scopes = [{scopes}] }}]"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
