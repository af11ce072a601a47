//! `postrider store …`: offline check and rebuild of the queue's data directory, for a
//! database that `serve` refuses as damaged (exit status 65).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use postrider_store::{CheckVerdict, RepairError};

use crate::cli::{EXIT_CONFIG, EXIT_DATA};
use crate::config::{Config, LogFormat};

/// What to do with the data directory.
#[derive(Debug, Subcommand)]
pub(crate) enum StoreAction {
    /// Check the data directory: whether the database opens, what the journal holds and
    /// lacks, whether the queue is consistent. Works on a copy and never writes into the data
    /// directory, so it is safe while the relay runs. Exit status 0: clean; 1: problems
    /// found; 65: not even a copy can be opened.
    Check {
        #[command(flatten)]
        target: DataDirArgs,
        /// Where the copy is made (and removed afterwards); it needs room for the database
        /// and the journal. Default: the system's temporary directory ($TMPDIR).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// Rebuild a damaged database (stop the relay first): the damaged files are moved to
    /// quarantine/sled-TIMESTAMP/ (UTC), what can still be read of them goes into a new database,
    /// and the journal is replayed into it. Exit status 0 when the result is consistent.
    Rebuild {
        #[command(flatten)]
        target: DataDirArgs,
    },
}

/// Which data directory: given, or `data_dir` of a configuration file.
#[derive(Debug, clap::Args)]
pub(crate) struct DataDirArgs {
    /// The data directory (wins over --config).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Configuration file whose `data_dir` is meant.
    #[arg(long, short, env = "POSTRIDER_CONFIG")]
    config: Option<PathBuf>,
}

impl DataDirArgs {
    /// The data directory, or the message of a configuration that cannot be loaded.
    fn resolve(&self) -> Result<PathBuf, String> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        match &self.config {
            Some(path) => Config::load(Some(path))
                .map(|c| c.raw.data_dir)
                .map_err(|e| e.to_string()),
            None => Err("give --data-dir DIR or --config FILE".to_owned()),
        }
    }
}

/// Runs `postrider store …`.
pub(crate) fn run(action: StoreAction) -> anyhow::Result<ExitCode> {
    crate::logging::init(LogFormat::Text, "warn");
    crate::logging::install_panic_hook();
    let target = match &action {
        StoreAction::Check { target, .. } | StoreAction::Rebuild { target } => target,
    };
    let data_dir = match target.resolve() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("postrider: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(match action {
        StoreAction::Check { work_dir, .. } => {
            let work_dir = work_dir.unwrap_or_else(std::env::temp_dir);
            runtime.block_on(check(&data_dir, &work_dir))
        }
        StoreAction::Rebuild { .. } => runtime.block_on(rebuild(&data_dir)),
    })
}

/// `postrider store check`.
async fn check(data_dir: &Path, work_dir: &Path) -> ExitCode {
    match postrider_store::check_data_dir(data_dir, work_dir).await {
        Ok(report) => {
            print!("{report}");
            match report.verdict() {
                CheckVerdict::Clean => {
                    println!("clean");
                    ExitCode::SUCCESS
                }
                CheckVerdict::Problems => {
                    println!(
                        "problems found; with the relay stopped, `postrider store rebuild` \
                         rebuilds a damaged database"
                    );
                    ExitCode::FAILURE
                }
                CheckVerdict::Unreadable => ExitCode::from(EXIT_DATA),
            }
        }
        Err(e) => {
            eprintln!("postrider: {e}");
            ExitCode::from(EXIT_DATA)
        }
    }
}

/// `postrider store rebuild`.
async fn rebuild(data_dir: &Path) -> ExitCode {
    match postrider_store::rebuild(data_dir).await {
        Ok(report) => {
            print!("{report}");
            if report.is_consistent() {
                println!("rebuilt: start the relay again");
                ExitCode::SUCCESS
            } else {
                println!("rebuilt, but the queue is not consistent (see above)");
                ExitCode::FAILURE
            }
        }
        Err(e @ RepairError::InUse { .. }) => {
            eprintln!("postrider: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("postrider: {e}");
            ExitCode::from(EXIT_DATA)
        }
    }
}
