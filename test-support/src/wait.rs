//! Waiting for a condition: poll it until it holds or a deadline passes, then fail the test
//! with what was awaited. Tests never sleep for a condition to come true.

use std::future::Future;
use std::time::{Duration, Instant};

/// Long enough for any in-process condition to be observed on a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Between two checks of an in-process condition (a registry, a watch, a channel): cheap to
/// look at, so looked at often.
pub const POLL: Duration = Duration::from_millis(20);

/// What a check returns: `bool` (holds or not) or `Option<T>` (the value once it is there).
pub trait Outcome {
    /// What [`eventually`] returns once the check holds.
    type Value;
    /// `Some` once the condition holds.
    fn ready(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `check` every [`POLL`] until it holds, and returns what it returned; panics naming
/// `what` after `timeout`.
pub async fn eventually<R: Outcome>(
    what: &str,
    timeout: Duration,
    check: impl AsyncFnMut() -> R,
) -> R::Value {
    eventually_every(what, timeout, POLL, check).await
}

/// [`eventually`], checking every `every` (checks that cost a request or a process are made
/// less often; a race the test must not miss, more often).
pub async fn eventually_every<R: Outcome>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> R,
) -> R::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await.ready() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Awaits `f` for at most `timeout`; panics naming `what` after that.
pub async fn within<T>(what: &str, timeout: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(timeout, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_the_check_holds() {
        let mut calls = 0;
        let value = eventually("the third call", PATIENCE, async || {
            calls += 1;
            (calls == 3).then_some(calls)
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for nothing")]
    async fn panics_with_what_it_waited_for() {
        eventually("nothing", Duration::from_millis(50), async || false).await;
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for a pending future")]
    async fn within_panics_after_the_timeout() {
        within(
            "a pending future",
            Duration::from_millis(10),
            std::future::pending::<()>(),
        )
        .await;
    }
}
