//! `strait-bench-raft`: committed writes/s and commit latency of Strait's global control plane
//! next to a 3-node etcd cluster on the same disk. See `docs/benchmarks.md`.

use clap::Parser;
use strait_bench_raft::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    strait_bench_raft::run_until_signal(args).await
}
