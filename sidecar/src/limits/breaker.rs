//! `CircuitBreaker` accounting: a [`Counter`] per limited quantity of an outbound service
//! (upstream connections, requests waiting for one, requests in flight) and the permits that
//! hold a place in it.
//!
//! A counter always counts, whether or not a limit is set, so a limit that arrives with a new
//! config applies at once to what is already open. Acquiring is one atomic add (and a
//! subtract when over the limit); a permit gives its place back when dropped, however the
//! work it stands for ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Which `CircuitBreaker` limit refused something: the label of
/// `strait_sidecar_outbound_overflows_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `maxConnections`: upstream connections open to the service.
    Connections,
    /// `maxPendingRequests`: requests (and TCP connections) waiting for an upstream
    /// connection.
    Pending,
    /// `maxRequests`: requests in flight.
    Requests,
}

impl Overflow {
    pub fn label(self) -> &'static str {
        match self {
            Overflow::Connections => "max_connections",
            Overflow::Pending => "max_pending_requests",
            Overflow::Requests => "max_requests",
        }
    }
}

/// How many of something are open, against an optional ceiling.
#[derive(Debug, Default)]
pub struct Counter {
    count: AtomicU32,
}

impl Counter {
    /// Takes a place if fewer than `max` are taken (`None`: no limit). `false`: over the
    /// limit, nothing taken.
    pub fn try_acquire(&self, max: Option<u32>) -> bool {
        let before = self.count.fetch_add(1, Ordering::AcqRel);
        match max {
            Some(max) if before >= max => {
                self.count.fetch_sub(1, Ordering::AcqRel);
                false
            }
            _ => true,
        }
    }

    /// Gives back a place taken by [`Counter::try_acquire`].
    pub fn release(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }

    /// How many places are taken now.
    pub fn current(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }

    /// A place held for as long as the returned permit lives.
    pub fn acquire(&self, max: Option<u32>) -> Option<Permit<'_>> {
        self.try_acquire(max).then(|| Permit(self))
    }

    /// [`Counter::acquire`] for a permit that outlives the caller (one moved into the task
    /// that drives a connection).
    pub fn acquire_owned(self: &Arc<Self>, max: Option<u32>) -> Option<OwnedPermit> {
        self.try_acquire(max).then(|| OwnedPermit(self.clone()))
    }
}

/// A place in a [`Counter`], given back on drop.
#[derive(Debug)]
pub struct Permit<'a>(&'a Counter);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A place in a shared [`Counter`], given back on drop.
#[derive(Debug)]
pub struct OwnedPermit(Arc<Counter>);

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A `CircuitBreakerPolicy` count field: `0` (the proto's unset) is no limit.
pub fn limit(value: u32) -> Option<u32> {
    (value > 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_admits_up_to_max_and_permits_give_places_back() {
        let c = Counter::default();
        let a = c.acquire(Some(2)).expect("first");
        let b = c.acquire(Some(2)).expect("second");
        assert!(c.acquire(Some(2)).is_none(), "third is over the limit");
        assert_eq!(c.current(), 2, "a refusal takes no place");
        drop(a);
        assert_eq!(c.current(), 1);
        let _c = c.acquire(Some(2)).expect("a freed place is reused");
        drop(b);
        assert_eq!(c.current(), 1);
    }

    #[test]
    fn no_limit_still_counts_so_a_new_limit_sees_what_is_open() {
        let c = Arc::new(Counter::default());
        let held: Vec<_> = (0..5).map(|_| c.acquire_owned(None).unwrap()).collect();
        assert_eq!(c.current(), 5);
        // A limit of 3 arrives with a config while 5 are open: nothing new until below 3.
        assert!(c.acquire_owned(Some(3)).is_none());
        drop(held);
        assert_eq!(c.current(), 0);
        assert!(c.acquire_owned(Some(3)).is_some());
        assert_eq!(c.current(), 0, "the temporary permit was dropped");
    }

    #[test]
    fn zero_means_unlimited() {
        assert_eq!(limit(0), None);
        assert_eq!(limit(7), Some(7));
        assert_eq!(Overflow::Pending.label(), "max_pending_requests");
    }
}
