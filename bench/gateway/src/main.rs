//! `strait-bench-gateway`: helpers of `bench/gateway-run.sh` (docs/benchmarks.md, "East-west
//! gateway"): a bulk TCP source and reader, and time to first byte of a new cross-zone
//! connection over a netem link.

use std::process::ExitCode;

use clap::Parser;
use strait_bench_gateway::Command;

#[tokio::main]
async fn main() -> ExitCode {
    let command = Command::parse();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("error: a rustls crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    match strait_bench_gateway::run(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
