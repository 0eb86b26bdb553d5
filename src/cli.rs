//! The command line: clap types and dispatch to the commands.

use clap::{Parser, Subcommand};

/// Strait: a federated service mesh — one trust root, every service reachable from every zone.
#[derive(Debug, Parser)]
#[command(name = "strait", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {}
    }
}
