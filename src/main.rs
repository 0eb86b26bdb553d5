//! The `strait` binary: parse the command line, install the crypto provider, run the command.
//! Every component lives in a library crate; this file only wires them together.

use clap::Parser;

mod cli;
#[macro_use]
mod output;
mod commands;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // One crypto provider for the whole process (ring); libraries never pick one themselves.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("error: a rustls crypto provider was already installed");
        return std::process::ExitCode::FAILURE;
    }
    let built = match cli.worker_threads() {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
