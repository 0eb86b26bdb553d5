//! The inbound side's HTTP/2 connection to the app (cleartext, prior knowledge: what a gRPC
//! server or an `h2c` app listens for), for callers that spoke HTTP/2 and ports declared
//! `grpc` or `http2`.
//!
//! One connection carries every request, as HTTP/2 is meant to be used; hyper's client
//! moves trailers, flow control and resets. When it closes (the app restarted, GOAWAY), the
//! next request opens another; a request the closing connection never took is sent on the new
//! one, so an app's graceful restart fails no call.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::client::conn::http2::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::app_pool::AppError;

/// Windows as the sidecars use between themselves: a response of a few MB is not held back
/// by round trips, and a slow reader still holds back the app.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// A ping unanswered this long closes the connection (an app that hung).
const KEEPALIVE: Duration = Duration::from_secs(10);

/// The HTTP/2 connection to one app, for requests with bodies of type `B`.
#[derive(Debug)]
pub struct AppH2<B> {
    app: SocketAddr,
    connect_timeout: Duration,
    current: Mutex<Option<SendRequest<B>>>,
    /// Held while a connection is opened, so a burst after a restart opens one, not many.
    connecting: tokio::sync::Mutex<()>,
}

impl<B> AppH2<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(app: SocketAddr, connect_timeout: Duration) -> Self {
        Self {
            app,
            connect_timeout,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `request` (origin-form or absolute URI; `:authority` from it or `Host`) to the
    /// app and waits for the response headers.
    pub async fn send(&self, mut request: Request<B>) -> Result<Response<Incoming>, AppError> {
        // Twice at most: a request refused unsent by a closing connection goes on a new one.
        for _ in 0..2 {
            let mut sender = self.sender().await?;
            if sender.ready().await.is_err() {
                self.forget(&sender);
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => {
                        self.forget(&sender);
                        request = unsent;
                    }
                    None => return Err(AppError::Request(err.into_error())),
                },
            }
        }
        Err(AppError::Connect(
            "the app closed two HTTP/2 connections in a row before taking the request".into(),
        ))
    }

    /// The open connection, or a new one.
    async fn sender(&self) -> Result<SendRequest<B>, AppError> {
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let _turn = self.connecting.lock().await;
        // Someone else may have connected while we waited for the turn.
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let sender = self.connect().await?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender.clone());
        Ok(sender)
    }

    fn open(&self) -> Option<SendRequest<B>> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Drops `failed` as the current connection (unless another replaced it already).
    fn forget(&self, failed: &SendRequest<B>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(SendRequest::is_closed) || failed.is_closed() {
            *current = None;
        }
    }

    async fn connect(&self) -> Result<SendRequest<B>, AppError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.app))
            .await
            .map_err(|_| AppError::Connect(format!("timed out after {:?}", self.connect_timeout)))?
            .map_err(|err| AppError::Connect(err.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|err| AppError::Connect(format!("HTTP/2 handshake: {err}")))?;
        let app = self.app;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%app, %err, "HTTP/2 connection to the app ended with an error");
            }
        });
        Ok(sender)
    }
}
