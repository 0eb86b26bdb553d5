//! What every Strait component uses to be observable.
//!
//! - [`serve`]: the admin HTTP server (`/metrics`, `/ready`, `/healthz`, `/config`) on a
//!   listener the component binds and passes in.
//! - [`Readiness`]: the handle a component flips when it can (or can no longer) do its job;
//!   `/ready` reports it, and `strait up` waits on it.
//! - [`ConfigSnapshot`]: the component's effective config as JSON, served at `/config`.
//! - [`init_tracing`]: logging to stderr, plain text or JSON lines.

mod admin;
mod config;
mod logging;
mod readiness;

pub use admin::{AdminState, CONTENT_TYPE_METRICS, serve};
pub use config::{ConfigError, ConfigSnapshot};
pub use logging::init_tracing;
pub use readiness::Readiness;
