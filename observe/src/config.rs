//! The component's effective config, as JSON, for `/config`.

use std::sync::{Arc, RwLock};

/// A config could not be turned into JSON.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config's `Serialize` impl failed (for example a map with non-string keys).
    #[error("cannot render the config as JSON: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// A snapshot of the component's config that `/config` serves; a cheap clone handle.
///
/// The component sets it after validating its config, and again whenever the config changes
/// (a reload, a new leader). It starts as JSON `null`. Secrets must be left out by the
/// component: whatever is set here is served to anyone who can reach the admin port.
#[derive(Debug, Clone, Default)]
pub struct ConfigSnapshot {
    inner: Arc<RwLock<serde_json::Value>>,
}

impl ConfigSnapshot {
    /// A snapshot holding `value`.
    pub fn new(value: serde_json::Value) -> Self {
        Self {
            inner: Arc::new(RwLock::new(value)),
        }
    }

    /// Replaces the snapshot.
    pub fn set(&self, value: serde_json::Value) {
        // Assignment cannot leave a half-written value, so a poisoned lock is still usable.
        *self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = value;
    }

    /// Replaces the snapshot with `config` rendered as JSON.
    pub fn set_from<T: serde::Serialize>(&self, config: &T) -> Result<(), ConfigError> {
        self.set(serde_json::to_value(config)?);
        Ok(())
    }

    /// The current snapshot.
    pub fn get(&self) -> serde_json::Value {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}
