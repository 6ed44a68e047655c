//! `tally inspect`: the records of a tally topic, decoded, one per line.
//!
//! What an operator reads to see why inputs were dead-lettered (reason,
//! detail, where the input was, what it held), what a ledger partition
//! holds (ledger records through the one fenced reader: a zombie's write
//! shows as not counted), or what a worker really published. Read-only: it joins no
//! consumer group and commits nothing. Text for people, `--json` (one
//! object per line, the Avro datum as plain JSON) for scripts.

use std::{io::Write, time::Duration};

use anyhow::{Context, Result};
use tally_events::{
    codec::{value_to_json, CodecError, RecordKind},
    ledger_reader::{FencedReader, LedgerRecord},
    names::topics,
    Codec, Input, Message as Record,
};
use tally_service::kafka::{partition_count, read_partition, Until};

/// Options of `tally inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Topic to read: tally.inputs, tally.ledger, tally.alerts,
    /// tally.dead-letters or tally.snapshots.
    #[arg(default_value = topics::DEAD_LETTERS)]
    topic: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "TALLY_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Only records of this account (dead letters: by their original key).
    #[arg(long)]
    account: Option<String>,
    /// Only dead letters with this reason code (for example unknown_service).
    #[arg(long)]
    reason: Option<String>,
    /// Stop after printing this many records.
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON object per line: partition, offset, record name and value
    /// (a dead letter's payload decoded too, when it decodes).
    #[arg(long)]
    json: bool,
}

/// Ends a partition read early (the limit is reached, or stdout closed).
#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped")
    }
}

pub fn run(args: Args) -> Result<()> {
    let count = partition_count(&args.brokers, &args.topic, Duration::from_secs(10))
        .with_context(|| format!("cannot reach the broker at {}", args.brokers))?
        .with_context(|| format!("topic {} does not exist", args.topic))?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) if (0..count).contains(&p) => vec![p],
        Some(p) => anyhow::bail!("topic {} has partitions 0 to {}, not {p}", args.topic, count - 1),
        None => (0..count).collect(),
    };
    let mut out = std::io::stdout().lock();
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut printed = 0usize;
    // A failed write (a closed pipe, as with `| head`) ends the read too.
    let mut failure: Option<std::io::Error> = None;
    for partition in partitions {
        if printed >= limit || failure.is_some() {
            break;
        }
        // Ledger records are read through the one fenced reader, so that
        // what a zombie wrote is shown as not counted.
        let mut fence = FencedReader::new(partition);
        let read =
            read_partition(&args.brokers, &args.topic, partition, 0, Until::End, Duration::from_secs(120), |m| {
                use rdkafka::Message;
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                let payload = m.payload().unwrap_or_default();
                let counted = counted(&mut fence, m.offset(), payload);
                if let Some(line) = render(&args, partition, m.offset(), key.as_deref(), payload, counted) {
                    if let Err(e) = writeln!(out, "{line}") {
                        failure = Some(e);
                        return Err(Stop);
                    }
                    printed += 1;
                    // Stop at the limit, not at the next record: it may be
                    // a whole fetch away.
                    if printed >= limit {
                        return Err(Stop);
                    }
                }
                Ok(())
            });
        // Stopped on purpose: the read's error is our own Stop.
        if printed >= limit || failure.is_some() {
            break;
        }
        read.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if let Some(e) = failure {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("writing to stdout");
        }
    }
    out.flush().ok();
    eprintln!("inspect: {printed} record(s) from {}", args.topic);
    Ok(())
}

/// The account a record belongs to, for `--account`.
fn account_of<'a>(record: &'a Record, key: Option<&'a str>) -> Option<&'a str> {
    match record {
        Record::Input(input) => Some(input.account_id()),
        Record::Ledger(entry) => Some(&entry.account_id),
        Record::Alert(alert) => Some(&alert.account_id),
        Record::DeadLetter(_) => key,
        Record::Marker(_) | Record::Snapshot(_) => None,
    }
}

/// Whether a ledger record counts under the fence (`None`: not a ledger
/// record, or one that does not read).
fn counted(fence: &mut FencedReader, offset: i64, payload: &[u8]) -> Option<bool> {
    match Codec::global().kind_of(payload) {
        Ok(RecordKind::LedgerEntry | RecordKind::LedgerMarker) => match fence.read(offset, payload) {
            Ok(LedgerRecord::Fenced(_)) => Some(false),
            Ok(_) => Some(true),
            Err(_) => None,
        },
        _ => None,
    }
}

/// One output line, or `None` when the filters drop the record.
fn render(
    args: &Args,
    partition: i32,
    offset: i64,
    key: Option<&str>,
    payload: &[u8],
    counted: Option<bool>,
) -> Option<String> {
    let codec = Codec::global();
    let record = codec.decode_any(payload);
    if let Some(reason) = &args.reason {
        match &record {
            Ok(Record::DeadLetter(letter)) if &letter.reason == reason => {}
            _ => return None,
        }
    }
    if let Some(account) = &args.account {
        match &record {
            Ok(r) if account_of(r, key) == Some(account.as_str()) => {}
            // Undecodable records have no account but their key.
            Err(_) if key == Some(account.as_str()) => {}
            _ => return None,
        }
    }
    Some(if args.json {
        let mut line = json_line(partition, offset, key, payload, &record);
        if let Some(counted) = counted {
            line["counted"] = counted.into();
        }
        line.to_string()
    } else if counted == Some(false) {
        format!("{}  (fenced: an older owner's write, not counted)", text_line(partition, offset, &record))
    } else {
        text_line(partition, offset, &record)
    })
}

fn json_line(
    partition: i32,
    offset: i64,
    key: Option<&str>,
    payload: &[u8],
    record: &Result<Record, CodecError>,
) -> serde_json::Value {
    let codec = Codec::global();
    let mut line = serde_json::json!({ "partition": partition, "offset": offset, "key": key });
    match codec.decode_value(payload) {
        Ok((kind, value)) => {
            line["record"] = format!("tally.{}", kind.name()).into();
            line["value"] = value_to_json(&value);
        }
        Err(e) => {
            line["record"] = serde_json::Value::Null;
            line["error"] = e.to_string().into();
            line["reason"] = e.reason().code().into();
        }
    }
    if let Ok(Record::DeadLetter(letter)) = record {
        // What the dead-lettered input held, when it decodes at all.
        if let Some(Ok((kind, value))) = letter.payload.as_deref().map(|p| codec.decode_value(p)) {
            line["payload_record"] = format!("tally.{}", kind.name()).into();
            line["payload_value"] = value_to_json(&value);
        }
    }
    line
}

fn text_line(partition: i32, offset: i64, record: &Result<Record, CodecError>) -> String {
    let at = |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let body = match record {
        Ok(Record::Input(Input::Usage(e))) => format!(
            "UsageEvent      {}  {}/{}  {} {:?}  {:?}  {}  id {}",
            e.account_id,
            e.service,
            e.engine,
            e.quantity,
            e.unit,
            e.outcome,
            at(&e.occurred_at),
            e.event_id
        ),
        Ok(Record::Input(Input::Purchase(p))) => format!(
            "CreditPurchase  {}  ${}  {}  id {}",
            p.account_id,
            p.amount_dollars,
            at(&p.occurred_at),
            p.purchase_id
        ),
        Ok(Record::Input(Input::Account(c))) => format!(
            "AccountChange   {}  {:?}  tier {:?}  low balance {}  {}  id {}",
            c.account_id,
            c.kind,
            c.tier,
            c.low_balance_threshold,
            at(&c.occurred_at),
            c.change_id
        ),
        Ok(Record::Ledger(e)) => format!(
            "LedgerEntry     {} #{}  {:?} {:?}  {}credits {}  balance after {}  {}{}",
            e.account_id,
            e.sequence,
            e.entry_type,
            e.status,
            if e.service.is_empty() { String::new() } else { format!("{}/{}  ", e.service, e.engine) },
            e.credits,
            e.balance_after,
            at(&e.occurred_at),
            if e.reason.is_empty() { String::new() } else { format!("  ({})", e.reason) }
        ),
        Ok(Record::Alert(a)) => format!(
            "Alert           {}  {:?}  balance {}  threshold {}  {}",
            a.account_id,
            a.kind,
            a.balance,
            a.threshold,
            at(&a.occurred_at)
        ),
        Ok(Record::DeadLetter(d)) => format!(
            "DeadLetter      {}  from {}/{}@{}  {}{}",
            d.reason,
            d.source.topic,
            d.source.partition,
            d.source.offset,
            d.detail,
            if d.truncated() {
                format!(
                    "  (holds the first {} of {} bytes)",
                    d.payload.as_ref().map_or(0, Vec::len),
                    d.original_payload_bytes
                )
            } else {
                String::new()
            }
        ),
        Ok(Record::Marker(m)) => format!(
            "LedgerMarker    {:?}  epoch {}  inputs below {}  by {}",
            m.kind, m.epoch, m.next_input_offset, m.instance
        ),
        Ok(Record::Snapshot(s)) => format!(
            "Snapshot        {}  chunk {}/{}  ledger below {}  {} accounts",
            s.snapshot_id,
            s.chunk + 1,
            s.chunks,
            s.ledger_next_offset,
            s.accounts.len()
        ),
        Err(e) => format!("undecodable     {}: {e}", e.reason()),
    };
    format!("{partition}@{offset:<8} {body}")
}
