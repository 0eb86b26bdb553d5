//! The `strait` binary: parse the command line, install the crypto provider, run the command.
//! Every component lives in a library crate; this file only wires them together.

use clap::Parser;

mod cli;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // One crypto provider for the whole process (ring); libraries never pick one themselves.
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        eprintln!("error: a rustls crypto provider was already installed");
        return std::process::ExitCode::FAILURE;
    }
    match cli.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
