//! `strait-bench-zone`: config propagation to simulated sidecars across 3 zones, and 3 x 10,000
//! exported services through global and the zone control planes. See `docs/benchmarks.md`.

use std::process::ExitCode;

use clap::Parser;
use strait_bench_zone::Args;

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
    match strait_bench_zone::run_until_signal(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
