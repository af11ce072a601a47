//! Logging setup: human-readable lines by default, JSON objects with `[log] format = "json"`.

use std::io::IsTerminal;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::reload::Handle;

use crate::config::LogFormat;

/// Replaces the log filter of the running process (`log.level` on a configuration reload);
/// the error says why the filter was not applied.
pub(crate) type LevelSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured filter (and
/// then the filter does not change on a reload). Returns the setter of the filter, `None` when a
/// subscriber was installed already (tests).
pub(crate) fn init(format: LogFormat, level: &str) -> Option<LevelSetter> {
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let colour = wants_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let builder = builder.with_target(false).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().ok()?;
            Some(level_setter(handle, pinned))
        }
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().ok()?;
            Some(level_setter(handle, pinned))
        }
    }
}

/// A [`LevelSetter`] over `handle`; with `pinned` (`RUST_LOG` set) it keeps the filter.
fn level_setter<S: 'static>(handle: Handle<EnvFilter, S>, pinned: bool) -> LevelSetter {
    Arc::new(move |level: &str| {
        if pinned {
            return Err("RUST_LOG is set and wins over log.level".to_owned());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// Whether log lines may carry ANSI colour codes: only for a person at a terminal, never into a
/// pipe or file (journald, `docker logs`, log shippers keep the escape bytes verbatim), and not
/// when `NO_COLOR` asks for plain text.
fn wants_colour(stderr_is_terminal: bool, no_color_set: bool) -> bool {
    stderr_is_terminal && !no_color_set
}

/// Sends panics to the log (ERROR, with the thread and where it happened) instead of bare text
/// on stderr, so that they reach the journal in JSON mode too; with `RUST_BACKTRACE` set the
/// backtrace goes with them. A panic the store contains (sled panicking on a damaged database,
/// turned into an error the caller reports) is logged at DEBUG only.
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info.payload_as_str().unwrap_or("a panic without a message");
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let current = std::thread::current();
        let thread = current.name().unwrap_or("unnamed");
        if postrider_store::panic_is_contained() {
            tracing::debug!(panic = message, %location, thread, "panic inside sled, reported as an error");
            return;
        }
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(panic = message, %location, thread, %backtrace, "panic");
        } else {
            tracing::error!(panic = message, %location, thread, "panic");
        }
    }));
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log sink for one test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn colour_only_for_a_terminal_without_no_color() {
        assert!(wants_colour(true, false));
        assert!(!wants_colour(false, false));
        assert!(!wants_colour(true, true));
        assert!(!wants_colour(false, true));
    }

    #[test]
    fn panics_are_logged_as_json_errors_with_their_location() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || sink.clone())
            .finish();
        let previous = std::panic::take_hook();
        install_panic_hook();
        let outcome = std::thread::spawn(move || {
            tracing::subscriber::with_default(subscriber, || panic!("the queue fell over"))
        })
        .join();
        std::panic::set_hook(previous);
        assert!(outcome.is_err());
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect(&text);
        assert_eq!(line["level"], "ERROR", "{text}");
        assert_eq!(line["panic"], "the queue fell over", "{text}");
        assert!(
            line["location"]
                .as_str()
                .is_some_and(|l| l.contains("logging.rs")),
            "{text}"
        );
    }
}
