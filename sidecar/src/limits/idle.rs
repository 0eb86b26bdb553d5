//! The idle timeout of proxied connections (`Timeout.idle`): a connection silent in both
//! directions for that long is closed.
//!
//! The IO side wraps a connection's streams in [`Tracked`], which stamps an [`Activity`] with
//! the time of every read that returned bytes (what is written was read from the other side
//! first, so reads cover both directions). A watcher ([`silent_for`]) sleeps until the last
//! stamp plus the timeout and looks again: one timer wake-up per timeout period on a busy
//! connection, none per read. The decision itself is [`check`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The idle timeout of proxied connections when no `Timeout` policy sets one (TCP, and HTTP
/// from the app). One hour, as Envoy's.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// `Timeout.idle_ms` as a duration: `0` (unset) is [`DEFAULT_IDLE_TIMEOUT`].
pub fn from_policy_ms(idle_ms: u64) -> Duration {
    if idle_ms == 0 {
        DEFAULT_IDLE_TIMEOUT
    } else {
        Duration::from_millis(idle_ms)
    }
}

/// What a look at a connection's last activity says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Silent for the whole timeout: close it.
    Idle,
    /// Active within the timeout: look again at this time.
    LookAgainAt(Instant),
}

/// Whether a connection last active at `last` is idle at `now` under `timeout`.
pub fn check(last: Instant, now: Instant, timeout: Duration) -> Check {
    let silent = now.saturating_duration_since(last);
    if silent >= timeout {
        Check::Idle
    } else {
        Check::LookAgainAt(now + (timeout - silent))
    }
}

/// When a connection last read anything. Shared by its [`Tracked`] streams and its watcher.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    /// Nanoseconds from `base` to the last read.
    last: AtomicU64,
}

impl Activity {
    /// A connection that is active now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    /// The time of the last read (or of the connection's start).
    pub fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// Resolves once `activity` has seen no read for `timeout`.
pub async fn silent_for(activity: &Activity, timeout: Duration) {
    loop {
        match check(activity.last(), Instant::now(), timeout) {
            Check::Idle => return,
            Check::LookAgainAt(at) => tokio::time::sleep_until(at).await,
        }
    }
}

/// A stream whose reads stamp an [`Activity`].
#[derive(Debug)]
pub struct Tracked<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO> Tracked<IO> {
    pub fn new(inner: IO, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How a proxied byte stream ended.
#[derive(Debug)]
pub enum PipeEnd {
    /// Both sides finished: bytes from `a` to `b`, and back.
    Done(u64, u64),
    /// One side failed.
    Error(io::Error),
    /// Silent in both directions for the idle timeout; both sides are dropped (closed).
    Idle,
}

/// Copies bytes both ways between `a` and `b` until both finish, one fails, or nothing was
/// read from either for `timeout`.
pub async fn pipe<A, B>(a: A, b: B, timeout: Duration) -> PipeEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut a = Tracked::new(a, activity.clone());
    let mut b = Tracked::new(b, activity.clone());
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut a, &mut b) => match result {
            Ok((ab, ba)) => PipeEnd::Done(ab, ba),
            Err(err) => PipeEnd::Error(err),
        },
        () = silent_for(&activity, timeout) => PipeEnd::Idle,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn idle_once_silent_for_the_whole_timeout() {
        let t0 = Instant::now();
        assert_eq!(check(t0, t0, 10 * SEC), Check::LookAgainAt(t0 + 10 * SEC));
        assert_eq!(
            check(t0, t0 + 4 * SEC, 10 * SEC),
            Check::LookAgainAt(t0 + 10 * SEC)
        );
        assert_eq!(check(t0, t0 + 10 * SEC, 10 * SEC), Check::Idle);
        assert_eq!(check(t0, t0 + 11 * SEC, 10 * SEC), Check::Idle);
        // A stamp a little in the future (another thread stamped after `now` was read).
        assert_eq!(
            check(t0 + SEC, t0, 10 * SEC),
            Check::LookAgainAt(t0 + 10 * SEC)
        );
    }

    #[test]
    fn defaults() {
        assert_eq!(from_policy_ms(0), DEFAULT_IDLE_TIMEOUT);
        assert_eq!(DEFAULT_IDLE_TIMEOUT, Duration::from_secs(3600));
        assert_eq!(from_policy_ms(1500), Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn a_pipe_lives_while_bytes_move_and_ends_when_silent() {
        // Real time (the sidecar's tokio has no test clock): generous margins for a loaded
        // machine.
        let timeout = Duration::from_millis(800);
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let pipe = tokio::spawn(pipe(a, b, timeout));
        // Traffic every 200 ms keeps it open well past the timeout.
        for i in 0..8_u8 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.write_all(&[i]).await.unwrap();
            let mut byte = [0_u8; 1];
            server.read_exact(&mut byte).await.unwrap();
            assert_eq!(byte[0], i);
        }
        assert!(!pipe.is_finished(), "closed while bytes were moving");
        // Then silence: closed no sooner than the timeout after the last byte.
        let silent_since = Instant::now();
        let end = tokio::time::timeout(30 * SEC, pipe).await.unwrap().unwrap();
        assert!(matches!(end, PipeEnd::Idle), "{end:?}");
        assert!(silent_since.elapsed() >= timeout - Duration::from_millis(50));
        // Both sides see the close.
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_pipe_that_finishes_reports_its_bytes() {
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let pipe = tokio::spawn(pipe(a, b, 10 * SEC));
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        server.write_all(b"pong!").await.unwrap();
        server.shutdown().await.unwrap();
        match pipe.await.unwrap() {
            PipeEnd::Done(4, 5) => {}
            other => panic!("{other:?}"),
        }
    }
}
