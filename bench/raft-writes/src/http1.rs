//! A plain HTTP/1.1 client on one kept-alive loopback connection: etcd's JSON gateway and the
//! Strait nodes' `/metrics`. No TLS, no pool: one connection per writer, like the gRPC side.

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Conn {
    addr: String,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
        // Ends when `sender` is dropped or the peer closes.
        tokio::spawn(connection);
        Ok(Conn {
            addr: addr.to_owned(),
            sender,
        })
    }

    /// Sends one request and reads the whole answer.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sender
            .ready()
            .await
            .with_context(|| format!("connection to {} closed", self.addr))?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.addr)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .with_context(|| format!("{path} on {}", self.addr))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// One request on a fresh connection (status polls, metric scrapes).
pub async fn once(
    addr: &str,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    Conn::connect(addr).await?.request(method, path, body).await
}
