//! Helpers of the east-west gateway benchmark (`bench/gateway-run.sh`):
//!
//! - [`blast`]: a TCP source that streams zeros to whoever connects, and a reader that
//!   measures one stream's throughput (the bulk step, through the real binaries);
//! - [`ttfb`]: two in-process gateways whose QUIC sockets sit in two network namespaces
//!   joined by a netem link, and the time to first byte of a new cross-zone connection over
//!   the pooled QUIC connection vs fresh TCP+TLS connections over the same link;
//! - [`netns`]: binding sockets inside a named network namespace;
//! - [`pki`]: a throwaway federation PKI (root, zone intermediates, leaves).

pub mod blast;
pub mod netns;
pub mod pki;
pub mod ttfb;

use clap::{Parser, Subcommand};

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "strait-bench-gateway", about)]
pub struct Command {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, Subcommand)]
pub enum What {
    /// Streams zeros to every connection once it sent its first line, until it closes.
    BlastServer(blast::ServerArgs),
    /// Reads one stream from a blast server for a while; prints one JSON line.
    BlastClient(blast::ClientArgs),
    /// Time to first byte over a netem link: pooled QUIC tunnel vs fresh TCP+TLS.
    Ttfb(ttfb::Args),
}

/// Runs one subcommand.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command.what {
        What::BlastServer(args) => blast::serve(args).await,
        What::BlastClient(args) => blast::read(args).await,
        What::Ttfb(args) => ttfb::run(args).await,
    }
}
