//! Logging setup shared by every component: `tracing` to stderr, plain text or JSON lines.

use std::io::IsTerminal;
use std::sync::Once;

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset (or invalid).
const DEFAULT_FILTER: &str = "info";

/// Installs the process-wide `tracing` subscriber, writing to stderr.
///
/// - `RUST_LOG` picks what is logged (`info` when unset), e.g.
///   `RUST_LOG=info,strait_global=debug`.
/// - `STRAIT_LOG_FORMAT=json` writes one JSON object per line (for log shippers); anything
///   else, or unset, writes plain text.
///
/// Only the first call does anything, so tests and components may each call it. If another
/// subscriber was already installed by someone else, that one stays. A `RUST_LOG` or
/// `STRAIT_LOG_FORMAT` that cannot be understood falls back to the default and says so in the
/// log, rather than stopping the component over its logging.
///
/// Call it from `main` only: it reads the environment.
pub fn init_tracing(component: &str) {
    static INIT: Once = Once::new();
    INIT.call_once(|| install(component));
}

fn install(component: &str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, bad_filter) = match rust_log.as_deref() {
        None | Some("") => (EnvFilter::new(DEFAULT_FILTER), None),
        Some(spec) => match EnvFilter::try_new(spec) {
            Ok(filter) => (filter, None),
            Err(err) => (EnvFilter::new(DEFAULT_FILTER), Some(err.to_string())),
        },
    };
    let format = std::env::var("STRAIT_LOG_FORMAT").ok();
    let json = format.as_deref() == Some("json");

    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: under `strait up` stderr is a log file.
        .with_ansi(std::io::stderr().is_terminal());
    // `try_init` fails only when a subscriber is already installed; keeping that one is what
    // "safe to call twice" means when the other caller was not us.
    let installed = if json {
        builder.json().try_init().is_ok()
    } else {
        builder.try_init().is_ok()
    };
    if !installed {
        return;
    }

    if let Some(err) = bad_filter {
        tracing::warn!(
            rust_log = rust_log.as_deref().unwrap_or_default(),
            error = %err,
            "RUST_LOG is not a valid filter; logging at `{DEFAULT_FILTER}`"
        );
    }
    if let Some(other) = format
        .as_deref()
        .filter(|f| !f.is_empty() && *f != "json" && *f != "text")
    {
        tracing::warn!(
            format = other,
            "STRAIT_LOG_FORMAT is neither `json` nor `text`; logging plain text"
        );
    }
    // Every process of a local federation logs to its own file; this first line says whose.
    tracing::info!(
        component,
        pid = std::process::id(),
        version = env!("CARGO_PKG_VERSION"),
        "logging started"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_call_is_a_no_op() {
        init_tracing("test");
        init_tracing("test");
        tracing::info!("still logging after two calls");
    }
}
