//! `postrider`: the relay's command-line entry point.
//!
//! Parses arguments, loads configuration (exit status 64 on a bad config), sets up logging and
//! runs the chosen command. Everything long-running lives in [`app`].

mod admin;
mod app;
mod cli;
mod config;
mod gauges;
mod logging;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: the relay allocates and frees many short-lived
/// buffers per message (commands, bodies, records), which glibc's malloc handles with more CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postrider: {e:#}");
            ExitCode::FAILURE
        }
    }
}
