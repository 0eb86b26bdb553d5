//! What `strait demo` asks a running federation the way a user's tools would: a call through a
//! VIP (the demo app's JSON answer), the zone-pinned VIPs a client sidecar runs with (its
//! `/config`), and an A query to a zone's DNS server. Plain IO, no printing: the binary prints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// Why a probe got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{status}: {body}")]
    Status { status: String, body: String },
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Dns(#[from] hickory_proto::ProtoError),
    #[error("{0}")]
    DnsDecode(#[from] hickory_proto::serialize::binary::DecodeError),
    #[error("{0}")]
    Address(#[from] std::net::AddrParseError),
}

/// How often [`until`] tries again.
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// `attempt` until it succeeds, gives an error `retry` refuses, or `within` has passed (then
/// its last error): right after `strait up` the zones are still learning about each other and
/// a client sidecar may not listen on a new VIP yet.
pub async fn until<T, E>(
    within: Duration,
    retry: impl Fn(&E) -> bool,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Err(err) if retry(&err) && Instant::now() < deadline => {
                tokio::time::sleep(RETRY_EVERY).await;
            }
            done => return done,
        }
    }
}

/// One call through a VIP, retried for up to 30 s; the demo app's JSON answer.
pub async fn call(target: &str) -> Result<serde_json::Value, ProbeError> {
    let addr: SocketAddr = target.parse()?;
    until(
        Duration::from_secs(30),
        |_| true,
        async || fetch_json(addr).await,
    )
    .await
}

/// `GET /` through `addr`: the JSON body of a 200 answer.
async fn fetch_json(addr: SocketAddr) -> Result<serde_json::Value, ProbeError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
        .await
        .map_err(|_| ProbeError::Timeout(Duration::from_secs(5)))??;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(ProbeError::Status {
            status: status.to_owned(),
            body: body.trim().to_owned(),
        });
    }
    Ok(serde_json::from_str(body.trim())?)
}

/// Zone-pinned VIPs of `service`, from the client sidecar's running config (waiting up to
/// 15 s for the service to show up there).
pub async fn pinned_vips(admin: Option<&str>, service: &str) -> BTreeMap<String, String> {
    let found = until(
        Duration::from_secs(15),
        |_| true,
        async || {
            let found = pinned_vips_now(admin, service).await;
            if found.is_empty() {
                Err(found)
            } else {
                Ok(found)
            }
        },
    )
    .await;
    found.unwrap_or_else(|none| none)
}

async fn pinned_vips_now(admin: Option<&str>, service: &str) -> BTreeMap<String, String> {
    let Some(admin) = admin.and_then(|a| a.parse::<SocketAddr>().ok()) else {
        return BTreeMap::new();
    };
    let body = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
        stream
            .write_all(b"GET /config HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.ok()?;
        let text = String::from_utf8_lossy(&reply).into_owned();
        let body = text.split_once("\r\n\r\n")?.1.to_owned();
        serde_json::from_str::<serde_json::Value>(&body).ok()
    };
    let Ok(Some(config)) = tokio::time::timeout(Duration::from_secs(5), body).await else {
        return BTreeMap::new();
    };
    config["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["service"]["name"] == service)
        .and_then(|s| s["zone_vips"].as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(z, v)| Some((z.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// An A query over UDP: the response code and the addresses.
pub async fn resolve(
    server: SocketAddr,
    name: &str,
) -> Result<(ResponseCode, Vec<String>), ProbeError> {
    let mut message = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(&message.to_vec()?, server).await?;
    let mut buf = vec![0_u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .map_err(|_| ProbeError::Timeout(Duration::from_secs(2)))??;
    let reply = Message::from_vec(&buf[..len])?;
    let addresses = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    Ok((reply.metadata.response_code, addresses))
}

fn rand_id() -> u16 {
    // Good enough for a one-shot query on loopback; the reply is matched by its socket.
    (std::process::id() as u16) ^ (Instant::now().elapsed().subsec_nanos() as u16)
}
