//! `tally rates show`: the public price list.

use std::path::PathBuf;

use anyhow::Result;
use chrono::{DateTime, Utc};
use tally_events::PlanTier;
use tally_ledger::RateTable;

/// `tally rates` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the price list in force at an instant: service, engine, unit,
    /// credits per unit and dollars per unit for each tier.
    Show {
        /// Rate table file.
        #[arg(long, default_value = "pipelines/rates.toml")]
        file: PathBuf,
        /// Instant (RFC 3339, UTC); default: now.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        /// Only this tier (PAYG, BASIC or PRO).
        #[arg(long)]
        tier: Option<PlanTier>,
    },
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Show { file, at, tier } => {
            let table = RateTable::load(&file)?;
            // The one place this command reads the clock: "now" is only a
            // default for a display, never a price applied to usage.
            #[allow(clippy::disallowed_methods)]
            let at = at.unwrap_or_else(Utc::now);
            print!("{}", tally_ledger::rates::render_price_list(&table, at, tier)?);
            Ok(())
        }
    }
}
