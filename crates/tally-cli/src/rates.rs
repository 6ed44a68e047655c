//! `tally rates show`: the public price list.

use std::path::PathBuf;

use anyhow::Result;
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use tally_events::PlanTier;
use tally_ledger::{RateTable, RatesError};

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
            print!("{}", render_price_list(&table, at, tier)?);
            Ok(())
        }
    }
}

fn instant_text(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Money for display: at least 2 fractional digits, more only when exact
/// (a per-unit price such as $0.006 is shown exactly, not rounded).
fn money_text(value: Decimal) -> String {
    let mut value = value.normalize();
    if value.scale() < 2 {
        value.rescale(2);
    }
    value.to_string()
}

/// Renders the price list in force at `at` — every service's credits per
/// unit and dollars per unit for each tier (or only `tier`) — as a text
/// table for `tally rates show`. Pure: the output depends only on the
/// arguments.
pub fn render_price_list(table: &RateTable, at: DateTime<Utc>, tier: Option<PlanTier>) -> Result<String, RatesError> {
    let version =
        table.version_at(at).ok_or_else(|| RatesError::NoVersionAt { file: table.source().to_string(), at })?;
    let tiers: Vec<PlanTier> = match tier {
        Some(tier) => vec![tier],
        None => PlanTier::ALL.to_vec(),
    };

    let mut header: Vec<String> = ["Service", "Engine", "Unit", "Credits/unit"].iter().map(|s| s.to_string()).collect();
    header.extend(tiers.iter().map(|t| format!("{} $/unit", t.name())));
    let mut rows: Vec<Vec<String>> = vec![header];
    for rate in version.services() {
        let mut row = vec![
            rate.display().to_string(),
            rate.engine().to_string(),
            rate.unit().code().to_string(),
            rate.credits_per_unit().normalize().to_string(),
        ];
        // Per-unit prices are exact products (at most 3 + 4 fractional
        // digits); charges round only their total, to the cent.
        row.extend(
            tiers
                .iter()
                .map(|&t| money_text(rate.credits_per_unit().decimal() * version.dollars_per_credit(t).decimal())),
        );
        rows.push(row);
    }
    // Width in chars, not bytes: display names contain "·".
    let columns = rows[0].len();
    let widths: Vec<usize> =
        (0..columns).map(|c| rows.iter().map(|row| row[c].chars().count()).max().unwrap_or(0)).collect();

    let mut out = String::new();
    out.push_str(&format!(
        "Rates version {} from {} (in force at {}; table {})\n",
        version.id(),
        instant_text(version.effective_from()),
        instant_text(at),
        table.source()
    ));
    let per_credit: Vec<String> = tiers
        .iter()
        .map(|&t| format!("{} ${}", t.name(), money_text(version.dollars_per_credit(t).decimal())))
        .collect();
    out.push_str(&format!("Dollars per credit: {}\n\n", per_credit.join(" · ")));
    for (index, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                // Text columns left-aligned, numbers right-aligned.
                if c < 3 {
                    format!("{cell:<width$}", width = widths[c])
                } else {
                    format!("{cell:>width$}", width = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if index == 0 {
            let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    if let Some(next) = table.versions().iter().find(|v| v.effective_from() > at) {
        out.push_str(&format!("\nNext version: {} from {}\n", next.id(), instant_text(next.effective_from())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_TABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/rates.toml");

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("instant literal")
    }

    #[test]
    fn price_list_shows_every_tier_for_the_version_in_force() {
        let table = RateTable::load(DEFAULT_TABLE).expect("loads");
        let list = render_price_list(&table, at("2026-03-15T12:00:00Z"), None).expect("a version is in force");
        print!("{list}");
        assert!(list.starts_with("Rates version 2026-01 from 2026-01-01T00:00:00Z"), "{list}");
        assert!(list.contains("Dollars per credit: PAYG $0.12 · Basic $0.10 · Pro $0.08"), "{list}");
        let gpt = list.lines().find(|l| l.starts_with("AI Modify · GPT-Image 2")).expect("a GPT-Image 2 row");
        // 6 credits × 0.12 / 0.10 / 0.08 = $0.72 / $0.60 / $0.48.
        assert_eq!(gpt.split_whitespace().rev().take(4).collect::<Vec<_>>(), ["0.48", "0.60", "0.72", "6"]);
        let sms = list.lines().find(|l| l.starts_with("SMS")).expect("an SMS row");
        // 0.05 × 0.12 = $0.006 per message, shown exactly.
        assert_eq!(sms.split_whitespace().rev().take(4).collect::<Vec<_>>(), ["0.004", "0.005", "0.006", "0.05"]);
        assert!(list.contains("Next version: 2026-07 from 2026-07-01T00:00:00Z"), "{list}");

        let pro_only = render_price_list(&table, at("2026-08-01T00:00:00Z"), Some(PlanTier::Pro)).expect("in force");
        print!("{pro_only}");
        assert!(pro_only.contains("Pro $/unit") && !pro_only.contains("PAYG $/unit"), "{pro_only}");
        let gpt = pro_only.lines().find(|l| l.starts_with("AI Modify · GPT-Image 2")).expect("row");
        // 7 credits × 0.08 = $0.56 in 2026-07.
        assert_eq!(gpt.split_whitespace().rev().take(2).collect::<Vec<_>>(), ["0.56", "7"]);
        assert!(!pro_only.contains("Next version"));

        let error = render_price_list(&table, at("2025-06-01T00:00:00Z"), None).expect_err("nothing in force");
        assert!(error.to_string().contains("no version in force at 2025-06-01T00:00:00Z"), "{error}");
    }

    #[test]
    fn price_list_is_deterministic() {
        let table = RateTable::load(DEFAULT_TABLE).expect("loads");
        let instant = at("2026-07-02T00:00:00Z");
        assert_eq!(render_price_list(&table, instant, None).ok(), render_price_list(&table, instant, None).ok());
    }
}
