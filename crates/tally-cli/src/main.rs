//! `tally`: one binary, one module per subcommand.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod simulate;

/// tally: streaming usage metering for AI credits.
#[derive(Parser)]
#[command(name = "tally", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish a realistic workload of photo-booth operators and AI workers.
    Simulate(simulate::Args),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Simulate(args) => runtime.block_on(simulate::run(args)),
    }
}
