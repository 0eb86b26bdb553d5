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
///
/// A component whose `/config` has parts that change on their own (a renewed certificate, an
/// app's health) sets a [`ConfigSnapshot::set_computed`] function instead: rendered when
/// `/config` is asked for, not on a timer in a process that serves requests.
#[derive(Clone, Default)]
pub struct ConfigSnapshot {
    inner: Arc<RwLock<Snapshot>>,
}

#[derive(Clone)]
enum Snapshot {
    Value(serde_json::Value),
    Computed(Arc<dyn Fn() -> serde_json::Value + Send + Sync>),
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::Value(serde_json::Value::Null)
    }
}

impl std::fmt::Debug for ConfigSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSnapshot").finish_non_exhaustive()
    }
}

impl ConfigSnapshot {
    /// A snapshot holding `value`.
    pub fn new(value: serde_json::Value) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Snapshot::Value(value))),
        }
    }

    /// Replaces the snapshot.
    pub fn set(&self, value: serde_json::Value) {
        self.replace(Snapshot::Value(value));
    }

    /// Serves whatever `render` returns at the time of each `/config` request from now on.
    pub fn set_computed(&self, render: impl Fn() -> serde_json::Value + Send + Sync + 'static) {
        self.replace(Snapshot::Computed(Arc::new(render)));
    }

    fn replace(&self, snapshot: Snapshot) {
        // Assignment cannot leave a half-written value, so a poisoned lock is still usable.
        *self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot;
    }

    /// Replaces the snapshot with `config` rendered as JSON.
    pub fn set_from<T: serde::Serialize>(&self, config: &T) -> Result<(), ConfigError> {
        self.set(serde_json::to_value(config)?);
        Ok(())
    }

    /// The current snapshot.
    pub fn get(&self) -> serde_json::Value {
        let snapshot = self
            .inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        // Rendered outside the lock: a slow render does not hold up a `set`.
        match snapshot {
            Snapshot::Value(value) => value,
            Snapshot::Computed(render) => render(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn a_computed_snapshot_renders_on_each_get() {
        let snapshot = ConfigSnapshot::default();
        assert_eq!(snapshot.get(), serde_json::Value::Null);
        let version = Arc::new(AtomicU64::new(1));
        let source = version.clone();
        snapshot
            .set_computed(move || serde_json::json!({"version": source.load(Ordering::SeqCst)}));
        assert_eq!(snapshot.get()["version"], 1);
        version.store(2, Ordering::SeqCst);
        assert_eq!(snapshot.get()["version"], 2);
        snapshot.set(serde_json::json!("fixed"));
        assert_eq!(snapshot.get(), "fixed");
    }
}
