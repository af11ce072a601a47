//! `postrider`: the relay's command-line entry point.
//!
//! Parses arguments, loads configuration (exit status 64 on a bad config), sets up logging and
//! runs the chosen command. Everything long-running lives in [`app`].

mod admin;
mod api_client;
mod app;
mod cli;
mod config;
mod gauges;
mod logging;
mod mailq;
mod pidfile;
mod prepare;
mod proxied_listener;
mod reload;
mod sendmail;
mod storage;
mod tls_reports;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: the relay allocates and frees many short-lived
/// buffers per message (commands, bodies, records), which glibc's malloc handles with more CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long mimalloc keeps freed memory committed before returning it to the OS. Its default
/// (1 s) lets the store's short-lived buffers (sled's 8 MiB log buffers, pages read and evicted)
/// pile up as resident memory under load; 100 ms keeps most of the reuse and bounds the
/// footprint (BENCHMARKS.md, "Peak RSS"). `MIMALLOC_PURGE_DELAY` in the environment still wins.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 100;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies [`ALLOCATOR_PURGE_DELAY_MS`] unless the operator set mimalloc's own variable.
#[allow(unsafe_code)]
fn configure_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none()
        && std::env::var_os("MIMALLOC_RESET_DELAY").is_none()
    {
        // SAFETY: stores an integer option; mimalloc reads it on every purge decision and
        // accepts any value (negative disables purging).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) };
    }
}

fn main() -> ExitCode {
    configure_allocator();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some((argv0, rest)) = argv.split_first()
        && sendmail::invoked_as_sendmail(argv0)
    {
        return sendmail::main("sendmail", rest);
    }
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postrider: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    fn purge_delay() -> std::ffi::c_long {
        // SAFETY: reads an integer option.
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
    }

    #[test]
    fn purge_delay_is_set_unless_the_environment_sets_it() {
        let from_env = std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
            || std::env::var_os("MIMALLOC_RESET_DELAY").is_some();
        let before = purge_delay();
        configure_allocator();
        if from_env {
            assert_eq!(purge_delay(), before);
        } else {
            assert_ne!(
                before, ALLOCATOR_PURGE_DELAY_MS,
                "mimalloc's own default differs"
            );
            assert_eq!(purge_delay(), ALLOCATOR_PURGE_DELAY_MS);
        }
    }
}
