//! The readiness flag a component flips and `/ready` reports.

use std::sync::{Arc, RwLock};

/// Whether the component can do its job right now, and if not, why.
///
/// A cheap clone handle: the component keeps one clone to flip, the admin server another to
/// read. A new handle starts not ready (reason `starting`), so a component is never reported
/// ready before it said so.
#[derive(Debug, Clone)]
pub struct Readiness {
    // `None` means ready; `Some(reason)` means not ready, for that reason.
    inner: Arc<RwLock<Option<String>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// A handle that is not ready, with reason `starting`.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(RwLock::new(Some("starting".to_owned()))),
        }
    }

    /// Marks the component ready.
    pub fn set_ready(&self) {
        *self.write() = None;
    }

    /// Marks the component not ready; `reason` is what `/ready` answers with its 503.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.write() = Some(reason.into());
    }

    /// Whether the component is ready.
    pub fn is_ready(&self) -> bool {
        self.read().is_none()
    }

    /// `Ok(())` when ready, else `Err(reason)`.
    pub fn status(&self) -> Result<(), String> {
        match &*self.read() {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    // A writer that panicked left a complete `Option<String>` behind (assignments are
    // atomic with respect to the lock), so a poisoned lock still holds a valid value.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<String>> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<String>> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_not_ready_and_flips_across_clones() {
        let readiness = Readiness::new();
        let seen_by_server = readiness.clone();
        assert_eq!(seen_by_server.status(), Err("starting".to_owned()));

        readiness.set_ready();
        assert!(seen_by_server.is_ready());

        readiness.set_not_ready("lost the leader");
        assert!(!seen_by_server.is_ready());
        assert_eq!(seen_by_server.status(), Err("lost the leader".to_owned()));
    }
}
