//! Limits on connections, as opposed to requests: the `CircuitBreaker` counters
//! ([`breaker`]: `maxConnections`, `maxPendingRequests`, `maxRequests`) and the idle timeout
//! of proxied connections ([`idle`]: `Timeout.idle`).
//!
//! Both are accounting the IO code consults; the decisions (may one more start? has this
//! connection been silent long enough?) are pure and unit-tested here.

pub mod breaker;
pub mod idle;
