//! `tally metering`: the metering service.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use tally_ledger::RateTable;
use tally_metering::MeteringConfig;

/// Options of `tally metering`.
#[derive(clap::Args)]
pub struct Args {
    /// Config file (see pipelines/metering.toml); TALLY_METERING__<FIELD> overrides it.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: Args, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let config = MeteringConfig::load(args.config.as_deref(), std::env::vars())?;
    let rates = RateTable::load(&config.rates_file)
        .with_context(|| format!("loading the rate table named by {}", config.origin))?;
    tracing::info!(
        brokers = %config.brokers,
        input = %config.input_topic,
        ledger = %config.ledger_topic,
        rates = %config.rates_file.display(),
        "starting metering"
    );
    tally_metering::run(config, Arc::new(rates), runtime.handle().clone()).context("metering stopped")?;
    tracing::info!("metering stopped cleanly");
    Ok(())
}
