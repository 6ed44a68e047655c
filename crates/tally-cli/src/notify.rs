//! `tally notify`: the alerts topic to signed HTTP webhooks.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tally_notify::NotifyConfig;

/// Options of `tally notify`.
#[derive(clap::Args)]
pub struct Args {
    /// Config file (see pipelines/notify.toml); TALLY_NOTIFY__<FIELD> overrides it.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: Args, runtime: &tokio::runtime::Runtime) -> Result<()> {
    let config = NotifyConfig::load(args.config.as_deref(), std::env::vars())?;
    tracing::info!(
        brokers = %config.brokers,
        alerts = %config.alerts_topic,
        deliveries = %config.deliveries_topic,
        dead_letters = %config.dead_letter_topic,
        "starting the notifier"
    );
    tally_notify::run(config, runtime.handle().clone()).context("the notifier stopped")?;
    tracing::info!("the notifier stopped cleanly");
    Ok(())
}
