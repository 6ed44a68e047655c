//! `tally aggregator`: the ledger topic into ClickHouse.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tally_aggregator::AggregatorConfig;

/// Options of `tally aggregator`.
#[derive(clap::Args)]
pub struct Args {
    /// Config file (see pipelines/aggregator.toml); TALLY_AGGREGATOR__<FIELD> overrides it.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: Args, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let config = AggregatorConfig::load(args.config.as_deref(), std::env::vars())?;
    tracing::info!(
        brokers = %config.brokers,
        ledger = %config.ledger_topic,
        clickhouse = %config.warehouse.url,
        database = %config.warehouse.database,
        "starting the aggregator"
    );
    tally_aggregator::run(config, runtime.handle().clone()).context("the aggregator stopped")?;
    tracing::info!("the aggregator stopped cleanly");
    Ok(())
}
