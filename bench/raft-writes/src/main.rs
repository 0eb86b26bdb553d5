//! `strait-bench-raft`: committed writes/s and commit latency of Strait's global control plane
//! next to a 3-node etcd cluster on the same disk. See `docs/benchmarks.md`.

use std::process::ExitCode;

use clap::Parser;
use strait_bench_raft::Args;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("error: a rustls crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    match strait_bench_raft::run_until_signal(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
