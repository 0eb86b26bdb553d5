//! The inbound side's HTTP/1.1 connections to the local app, kept open between requests.
//!
//! Why not hyper-util's pooling client: every request it forwards with a response body still
//! to stream spawns a task that waits for the connection to become idle again, and each
//! checkout builds a connect future, locks a pool keyed by scheme and authority, and rewrites
//! the request. With one app behind a sidecar none of that is needed: here an idle connection
//! is a `SendRequest` in a list, and it goes back to the list when the response body it
//! carries has ended (docs/benchmarks.md, "Sidecar").
//!
//! A connection the app closed while it sat idle is noticed at checkout (hyper's connection
//! task sees the end of the stream) or when the request could not be written on it; the
//! request then goes out once more on a new connection, so an app's keep-alive timeout never
//! fails a request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Why a request did not reach the app, or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No connection could be opened (refused, timed out): nothing reached the app.
    #[error("connecting to the app: {0}")]
    Connect(String),
    /// The connection failed while the request was sent or its answer awaited.
    #[error("{0}")]
    Request(#[from] hyper::Error),
}

impl AppError {
    pub fn is_connect(&self) -> bool {
        matches!(self, AppError::Connect(_))
    }
}

/// Idle connections to one app, for requests with bodies of type `B` (the inbound side
/// forwards hyper's `Incoming`).
#[derive(Debug)]
pub struct AppPool<B> {
    app: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Most recently used last: checkouts take the warmest connection.
    idle: Mutex<Vec<Idle<B>>>,
    /// Wakes the expiry task when a connection goes idle (and when the pool is dropped).
    went_idle: Arc<Notify>,
}

#[derive(Debug)]
struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

impl<B> Idle<B> {
    /// Still open and idle for less than `timeout` at `now`.
    fn usable(&self, now: Instant, timeout: Duration) -> bool {
        !self.sender.is_closed() && now < self.since + timeout
    }
}

impl<B> AppPool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A pool for `app`; connections idle longer than `idle_timeout` are closed, at most
    /// `max_idle` are kept. Starts the task that closes expired ones (it ends with the pool).
    pub fn new(
        app: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            app,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
            went_idle: Arc::new(Notify::new()),
        });
        tokio::spawn(expire(Arc::downgrade(&pool), pool.went_idle.clone()));
        pool
    }

    /// Sends `request` (origin-form URI, `Host` set) to the app over an idle connection or a
    /// new one. The connection returns to the pool when the response body has ended.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<B>,
    ) -> Result<Response<PooledBody<B>>, AppError> {
        while let Some(mut sender) = self.checkout() {
            if sender.ready().await.is_err() {
                continue; // closed while we waited: the next one
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.wrap(response, sender)),
                Err(mut err) => match err.take_message() {
                    // Not written: the connection was closing. Another one takes it.
                    Some(unsent) => request = unsent,
                    None => return Err(AppError::Request(err.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender.send_request(request).await?;
        Ok(self.wrap(response, sender))
    }

    fn wrap(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: SendRequest<B>,
    ) -> Response<PooledBody<B>> {
        let (parts, inner) = response.into_parts();
        let mut body = PooledBody {
            inner,
            owner: Some((sender, Arc::downgrade(self))),
        };
        if body.inner.is_end_stream() {
            // No body (e.g. 204, or `Content-Length: 0`): the connection is free now.
            body.release();
        }
        Response::from_parts(parts, body)
    }

    /// The most recently used idle connection that is still open and not expired.
    fn checkout(&self) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while let Some(entry) = idle.pop() {
            if entry.usable(now, self.idle_timeout) {
                return Some(entry.sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<B>, AppError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.app))
            .await
            .map_err(|_| AppError::Connect(format!("timed out after {:?}", self.connect_timeout)))?
            .map_err(|err| AppError::Connect(err.to_string()))?;
        // Requests are small and latency-bound: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|err| AppError::Connect(err.to_string()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "app connection ended with an error");
            }
        });
        Ok(sender)
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<B> AppPool<B> {
    fn checkin(&self, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
            if idle.len() == 1 {
                // The expiry task sleeps with nothing to expire: it has a deadline now.
                self.went_idle.notify_one();
            }
        }
    }
}

impl<B> Drop for AppPool<B> {
    fn drop(&mut self) {
        // The expiry task may be waiting for a connection that will never come.
        self.went_idle.notify_one();
    }
}

/// Closes idle connections when their idle timeout passes, while the pool lives: sleeps until
/// the oldest one expires, or until a connection goes idle when there is none.
async fn expire<B: Send + 'static>(pool: Weak<AppPool<B>>, went_idle: Arc<Notify>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else {
                return;
            };
            let now = Instant::now();
            let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.retain(|e| e.usable(now, pool.idle_timeout));
            // Oldest first: entries are pushed as they go idle.
            idle.first().map(|e| e.since + pool.idle_timeout)
        };
        match next {
            Some(at) => tokio::time::sleep_until(at).await,
            None => went_idle.notified().await,
        }
    }
}

/// An app's response body; its connection goes back to the pool once the body has ended (a
/// body dropped before its end takes the connection with it: the rest of the response is
/// still on the wire).
#[derive(Debug)]
pub struct PooledBody<B> {
    inner: Incoming,
    owner: Option<(SendRequest<B>, Weak<AppPool<B>>)>,
}

impl<B> PooledBody<B> {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.owner.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.checkin(sender);
        }
    }
}

impl<B> Body for PooledBody<B> {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // An error: the connection is not reusable; dropping the sender closes it.
            Poll::Ready(Some(Err(_))) => self.owner = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A GET with an empty body through `pool`: its status and body.
    async fn get(pool: &Arc<AppPool<Empty<Bytes>>>, path: &str) -> Result<(u16, Bytes), AppError> {
        let request = Request::get(path)
            .header("host", "app")
            .body(Empty::new())
            .expect("request");
        let response = pool.send(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// An HTTP/1.1 server answering `ok` to each request, closing each connection after
    /// `per_connection` answers (saying so in the last one, as an app with a keep-alive
    /// limit does); returns its address and how many connections it accepted.
    async fn app(per_connection: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0_u8; 4096];
                    for answered in 1..=per_connection {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        let answer: &[u8] = if answered == per_connection {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if tcp.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn pool(app: SocketAddr) -> Arc<AppPool<Empty<Bytes>>> {
        AppPool::new(app, Duration::from_secs(2), Duration::from_secs(60), 8)
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (addr, accepted) = app(usize::MAX).await;
        let pool = pool(addr);
        for _ in 0..5 {
            let (status, body) = get(&pool, "/").await.expect("answer");
            assert_eq!((status, &body[..]), (200, &b"ok"[..]));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_app_closes_is_replaced_without_failing_a_request() {
        // The app answers once per connection and closes it: every request after the first
        // finds its pooled connection closed or closing and must still succeed.
        let (addr, accepted) = app(1).await;
        let pool = pool(addr);
        for _ in 0..5 {
            let (status, _) = get(&pool, "/").await.expect("answer");
            assert_eq!(status, 200);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_and_keep_them() {
        let (addr, accepted) = app(usize::MAX).await;
        let pool = pool(addr);
        let (a, b, c) = tokio::join!(get(&pool, "/a"), get(&pool, "/b"), get(&pool, "/c"));
        for r in [a, b, c] {
            assert_eq!(r.expect("answer").0, 200);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(pool.idle_count(), 3);
        // All three are reused: no new connection.
        for _ in 0..3 {
            get(&pool, "/").await.expect("answer");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_does_not_return_its_connection() {
        let (addr, _) = app(usize::MAX).await;
        let pool = pool(addr);
        let request = Request::get("/")
            .header("host", "app")
            .body(Empty::new())
            .expect("request");
        let response = pool.send(request).await.expect("answer");
        drop(response);
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn an_app_that_is_not_listening_is_a_connect_error() {
        let unused = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = unused.local_addr().expect("addr");
        drop(unused);
        let err = get(&pool(addr), "/").await.expect_err("nothing listens");
        assert!(err.is_connect(), "{err}");
    }

    #[tokio::test]
    async fn expired_idle_connections_are_not_used() {
        let (addr, accepted) = app(usize::MAX).await;
        let pool = AppPool::new(addr, Duration::from_secs(2), Duration::from_millis(50), 8);
        get(&pool, "/").await.expect("answer");
        assert_eq!(pool.idle_count(), 1);
        // The expiry task closes it once its idle timeout has passed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.idle_count() > 0 {
            assert!(
                Instant::now() < deadline,
                "the idle connection never expired"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        get(&pool, "/").await.expect("answer");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
