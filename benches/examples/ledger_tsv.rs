//! The benches' ledger data set as TabSeparated rows of `ledger_entries`,
//! on stdout: for loading it into a ClickHouse by hand and looking into a
//! bench's figure with `clickhouse-client`.
//!
//! `cargo run --release -p tally-benches --example ledger_tsv -- [ROWS]
//!   | clickhouse-client --database tally --query "INSERT INTO ledger_entries FORMAT TabSeparated"`
//!
//! ROWS defaults to 10,000,000; 10,000 accounts, 500 events, 90 days and 4
//! ledger partitions, seed 42: the queries and reconcile benches' set.

use std::io::Write;

use tally_benches::ledger_rows::{tsv_line, LedgerRows};

fn main() -> anyhow::Result<()> {
    let rows: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|_| anyhow::anyhow!("ROWS must be a whole number, not {n:?}"))?,
        None => 10_000_000,
    };
    let mut out = std::io::stdout().lock();
    let mut next = [1i64; 4];
    let mut buffer = String::with_capacity(1 << 22);
    for (partition, entry) in LedgerRows::new(42, rows, 10_000, 500, 90, 4) {
        tsv_line(&mut buffer, &entry, partition, next[partition as usize]);
        next[partition as usize] += 1;
        if buffer.len() > (1 << 22) {
            out.write_all(buffer.as_bytes())?;
            buffer.clear();
        }
    }
    out.write_all(buffer.as_bytes())?;
    Ok(())
}
