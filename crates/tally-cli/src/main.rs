//! `tally`: one binary, one module per subcommand.

use std::io::IsTerminal;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod aggregator;
mod finance;
mod inspect;
mod metering;
mod notify;
mod rates;
mod reconcile;
mod simulate;
mod summary;
mod warehouse;

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
    /// Run the metering service: usage -> priced ledger entries, exactly once.
    Metering(metering::Args),
    /// Show the service rate table.
    Rates {
        #[command(subcommand)]
        command: rates::Command,
    },
    /// Print balances and analytics from the ledger topic.
    Summary(summary::Args),
    /// Print the records of a tally topic, decoded (dead letters by default).
    Inspect(inspect::Args),
    /// Run the aggregator: the ledger topic into ClickHouse, exactly once.
    Aggregator(aggregator::Args),
    /// Run the notifier: alerts to signed HTTP webhooks, in order per account, once per alert.
    Notify(notify::Args),
    /// Create or upgrade the ClickHouse schema; rebuild rollups from the raw table.
    Migrate(warehouse::MigrateArgs),
    /// Finance from ClickHouse: daily per-account totals that must tie out.
    Finance {
        #[command(subcommand)]
        command: finance::Command,
    },
    /// Check the ledger topic against ClickHouse and its rollups (exit 1: mismatch, 2: could not check).
    Reconcile(reconcile::Args),
    /// Run a named ClickHouse query (balance, activity, timeline, ...; --list shows them).
    Query(warehouse::QueryArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; plain text for log files and
        // collectors (and for the tests that read service logs).
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Simulate(args) => runtime.block_on(simulate::run(args)),
        Command::Metering(args) => metering::run(args, &runtime),
        Command::Rates { command } => rates::run(command),
        Command::Summary(args) => summary::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Aggregator(args) => aggregator::run(args, &runtime),
        Command::Notify(args) => notify::run(args, &runtime),
        Command::Migrate(args) => runtime.block_on(warehouse::migrate(args)),
        Command::Query(args) => runtime.block_on(warehouse::query(args)),
        Command::Finance { command } => runtime.block_on(finance::run(command)),
        Command::Reconcile(args) => runtime.block_on(reconcile::run(args)),
    }
}
