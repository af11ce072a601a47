//! Command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Config;

/// Exit status for a bad configuration (sysexits EX_CONFIG-style usage error).
const EXIT_CONFIG: u8 = 64;

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
        target: crate::admin::ApiTarget,
        #[command(subcommand)]
        action: crate::admin::QueueAction,
    },
    /// Manage REST API keys.
    Apikey {
        #[command(subcommand)]
        action: ApikeyAction,
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
fn reexec() -> anyhow::Error {
    use std::os::unix::process::CommandExt as _;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return anyhow::Error::new(e).context("cannot find the postrider executable to restart"),
    };
    let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
    anyhow::Error::new(err).context("cannot restart postrider")
}

/// Runs the parsed command.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("postrider: {e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            crate::logging::init(config.raw.log.format, &config.raw.log.level);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
            let exit = runtime.block_on(crate::app::serve(config))?;
            drop(runtime);
            if exit == crate::app::Exit::Restart {
                return Err(reexec());
            }
            Ok(ExitCode::SUCCESS)
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
            std::io::stdin().read_line(&mut line).context("cannot read the password from standard input")?;
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
        Command::Apikey { action: ApikeyAction::New { name, scopes } } => {
            if let Some(bad) = scopes.iter().find(|s| !matches!(s.as_str(), "send" | "read" | "admin")) {
                anyhow::bail!("unknown scope {bad:?}: use send, read, admin");
            }
            let (key, hash) = postrider_api::generate_api_key();
            println!("key: {key}");
            println!("Add to [http] in the config (the key itself is not stored anywhere):");
            let scopes = scopes.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
            println!("api_keys = [{{ name = {name:?}, key_hash = \"{hash}\", scopes = [{scopes}] }}]");
            Ok(ExitCode::SUCCESS)
        }
    }
}
