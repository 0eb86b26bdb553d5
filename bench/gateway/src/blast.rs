//! One bulk TCP stream. The client speaks first (`BLAST\n`, not HTTP), so a sidecar's sniffer
//! classifies the connection as TCP at once instead of after its 300 ms timeout; the server
//! then writes zeros until the client closes. The client counts what arrives during
//! `--seconds` from the first byte on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 256 * 1024;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
}

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Where to connect (the app, a VIP or a proxy in front of it).
    #[arg(long)]
    pub connect: SocketAddr,
    /// How long to read.
    #[arg(long, default_value = "10")]
    pub seconds: f64,
}

/// Accepts until killed; each connection gets zeros until it goes away.
pub async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    loop {
        let (mut tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            // Wait for the request line so that nothing is sent before the proxy decided.
            let mut first = [0_u8; 64];
            match tcp.read(&mut first).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let zeros = vec![0_u8; CHUNK];
            while tcp.write_all(&zeros).await.is_ok() {}
        });
    }
}

/// Reads for `--seconds` and prints `{"bytes", "seconds", "gbit_s", "connect_ms", "first_byte_ms"}`.
pub async fn read(args: ClientArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut tcp = TcpStream::connect(args.connect)
        .await
        .with_context(|| format!("connecting to {}", args.connect))?;
    let connected = t0.elapsed();
    tcp.write_all(b"BLAST\n").await?;
    let mut buf = vec![0_u8; CHUNK];
    let n = tcp.read(&mut buf).await?;
    anyhow::ensure!(n > 0, "{} closed before sending anything", args.connect);
    let start = Instant::now();
    let first_byte = start - t0;
    let window = Duration::from_secs_f64(args.seconds);
    let mut bytes: u64 = 0;
    loop {
        let n = tcp.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "{} closed the stream early", args.connect);
        bytes += n as u64;
        if start.elapsed() >= window {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "bytes": bytes,
            "seconds": secs,
            "gbit_s": bytes as f64 * 8.0 / secs / 1e9,
            "connect_ms": connected.as_secs_f64() * 1e3,
            "first_byte_ms": first_byte.as_secs_f64() * 1e3,
        })
    );
    Ok(())
}
