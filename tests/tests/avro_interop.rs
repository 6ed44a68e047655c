//! tally's wire format against an independent Avro implementation.
//!
//! The codec tests prove tally reads what tally writes; that would hold even
//! if tally's fingerprints or bytes were its own dialect. Here a second
//! implementation, Python's fastavro (`tests/interop/fastavro_peer.py`),
//! reads every kind of record tally writes, resolving the writer schema only
//! by the fingerprint in the single-object header, and writes them back; and
//! tally reads what fastavro writes with the previous schema versions. That
//! is the promise to AI workers and BI tools in other languages: any Avro
//! implementation decodes tally's messages without a registry.
//!
//! The peer needs Python with fastavro: `deploy/local/install.sh python`
//! puts one under `~/.cache/tally/python` (`TALLY_PYTHON` names another).
//! Without it the test fails, saying so.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value as Json};
use tally_events::{
    codec::{value_to_json, HEADER_LEN},
    Codec, LedgerMarker, MarkerKind, SourceOffset,
};
use tally_ledger::{Ledger, LedgerConfig, RateTable};
use tally_metering::{
    snapshot::{chunks, SnapshotPoint},
    step::{step, Step},
};
use tally_simulator::{SimConfig, Simulator};
use uuid::Uuid;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Python with fastavro: `TALLY_PYTHON`, or the one install.sh caches.
fn python() -> Result<PathBuf> {
    let python = match std::env::var_os("TALLY_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("TALLY_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tally"));
            cache.join("python/bin/python")
        }
    };
    let ok = Command::new(&python).args(["-c", "import fastavro"]).status().map(|s| s.success()).unwrap_or(false);
    ensure!(
        ok,
        "no Python with fastavro at {} (run deploy/local/install.sh python, or set TALLY_PYTHON)",
        python.display()
    );
    Ok(python)
}

/// Runs the peer with `lines` on stdin; its JSON lines back.
fn peer(args: &[&str], lines: &[String]) -> Result<Vec<Json>> {
    let script = repo().join("tests/interop/fastavro_peer.py");
    let mut child = Command::new(python()?)
        .arg(&script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the fastavro peer")?;
    let mut stdin = child.stdin.take().context("peer stdin")?;
    let input = lines.join("\n") + "\n";
    // Written from a thread: the peer answers while it reads, so a full
    // stdout pipe would otherwise stall both.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output()?;
    let written = writer.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
    // A peer that stopped early closed its stdin: its own message says why.
    if !output.status.success() {
        bail!("fastavro peer failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    written.context("writing to the fastavro peer")?;
    String::from_utf8(output.stdout)?
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("peer output {line:?}")))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    ensure!(text.len() % 2 == 0 && text.is_ascii(), "not hex: {text:?}");
    (0..text.len()).step_by(2).map(|i| Ok(u8::from_str_radix(&text[i..i + 2], 16)?)).collect()
}

/// The datum of a tally message, decoded by tally's own Avro library with
/// the schema its header names, as plain JSON (the form the peer prints:
/// bytes as hex, timestamps as epoch ms, enums as symbols, unions as the
/// value).
fn datum(message: &[u8]) -> Result<(String, Json)> {
    let (kind, value) = Codec::global().decode_value(message)?;
    Ok((format!("tally.{}", kind.name()), value_to_json(&value)))
}

/// Every kind of record tally writes, from a simulated workload run through
/// the real pricing and ledger step: inputs, entries, alerts, dead letters,
/// claim and progress markers, snapshot chunks.
fn workload() -> Vec<Vec<u8>> {
    let codec = Codec::global();
    let rates = std::sync::Arc::new(RateTable::load(repo().join("pipelines/rates.toml")).expect("rates load"));
    let mut ledger = Ledger::new(rates, LedgerConfig::default());
    let sim = Simulator::new(SimConfig { seed: 7, accounts: 12, usage_events: 3_000, ..SimConfig::default() });
    let mut out = Vec::new();
    for (offset, message) in sim.enumerate() {
        // Inputs tally cannot decode are bad input, not the format.
        if codec.decode_any(&message.payload).is_ok() {
            out.push(message.payload.clone());
        }
        let source = SourceOffset { topic: "tally.inputs".into(), partition: 0, offset: offset as i64 };
        match step(&mut ledger, Some(&message.key), Some(&message.payload), None, &source, tally_events::Epoch(0)) {
            Step::Entry { entry, alerts, .. } => {
                out.push(codec.encode(&entry).expect("entry encodes"));
                out.extend(alerts.iter().map(|a| codec.encode(a).expect("alert encodes")));
            }
            Step::DeadLetter { letter, .. } => out.push(codec.encode(&letter).expect("dead letter encodes")),
            Step::Duplicate { .. } => {}
        }
    }
    let claim_id = Uuid::from_u128(0x5eed);
    for (kind, offset) in [(MarkerKind::Claim, 0), (MarkerKind::Progress, 3_100)] {
        let marker = LedgerMarker {
            kind,
            claim_id,
            epoch: tally_events::Epoch(0),
            instance: "interop-test".into(),
            input_topic: "tally.inputs".into(),
            input_partition: 0,
            next_input_offset: offset,
        };
        out.push(codec.encode(&marker).expect("marker encodes"));
    }
    let point = SnapshotPoint {
        input_topic: "tally.inputs".into(),
        input_partition: 0,
        ledger_next_offset: 3_000,
        claim_epoch: tally_events::Epoch(0),
        claim_id,
        resume_input_offset: 3_100,
    };
    for chunk in chunks(&ledger.snapshot(), &point, Uuid::from_u128(0x5a9)) {
        out.push(codec.encode(&chunk).expect("snapshot chunk encodes"));
    }
    out
}

#[test]
fn fastavro_reads_every_record_tally_writes_and_writes_the_same_bytes() -> Result<()> {
    let messages = workload();
    let lines: Vec<String> = messages.iter().map(|m| hex(m)).collect();
    let answers = peer(&["decode", repo().join("schemas/avro").to_str().context("path")?], &lines)?;
    ensure!(answers.len() == messages.len(), "peer answered {} of {} messages", answers.len(), messages.len());

    let mut kinds = BTreeMap::<String, usize>::new();
    for (n, (message, answer)) in messages.iter().zip(&answers).enumerate() {
        let (schema, expected) = datum(message)?;
        // The peer found the schema from the fingerprint alone.
        assert_eq!(answer["schema"], json!(schema), "message {n}: schema");
        assert_eq!(answer["version"], json!("current"), "message {n}: version");
        assert_eq!(answer["fingerprint"], json!(hex(&message[2..HEADER_LEN])), "message {n}");
        // It decoded the same datum, field by field...
        assert_eq!(answer["record"], expected, "message {n} ({schema}): fastavro decoded another datum");
        // ... and its own encoding of that datum is tally's, byte for byte.
        assert_eq!(answer["reencoded"], json!(hex(message)), "message {n} ({schema}): bytes differ");
        *kinds.entry(schema).or_default() += 1;
    }
    println!("[interop] fastavro read and rewrote {} messages: {kinds:?}", messages.len());
    // Every record kind took part.
    let all: BTreeSet<String> =
        tally_events::codec::RecordKind::ALL.iter().map(|k| format!("tally.{}", k.name())).collect();
    assert_eq!(kinds.keys().cloned().collect::<BTreeSet<_>>(), all, "record kinds covered");
    Ok(())
}

#[test]
fn tally_reads_what_fastavro_writes_with_previous_schema_versions() -> Result<()> {
    let codec = Codec::global();
    let current_dir = repo().join("schemas/avro");
    // One record of each kind that has a previous version.
    let mut samples = BTreeMap::<String, Vec<u8>>::new();
    for message in workload() {
        let (schema, _) = datum(&message)?;
        samples.entry(schema).or_insert(message);
    }
    let mut checked = 0;
    // The current schema of each record, by name.
    let mut current_by_name = BTreeMap::<String, Json>::new();
    for file in std::fs::read_dir(&current_dir)? {
        let path = file?.path();
        if path.extension().is_some_and(|e| e == "avsc") {
            let schema: Json = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
            current_by_name.insert(schema["name"].as_str().context("schema name")?.to_string(), schema);
        }
    }
    for previous in std::fs::read_dir(current_dir.join("previous"))? {
        let previous = previous?.path();
        let file = previous.file_name().context("file name")?.to_owned();
        let old: Json = serde_json::from_str(&std::fs::read_to_string(&previous)?)?;
        let current =
            current_by_name.get(old["name"].as_str().context("schema name")?).context("no current schema")?.clone();
        let name = format!("tally.{}", current["name"].as_str().context("schema name")?);
        let message = samples.get(&name).with_context(|| format!("no {name} in the workload"))?;
        let (_, original) = datum(message)?;

        let answer = peer(&["encode", previous.to_str().context("path")?], &[original.to_string()])?;
        let bytes = unhex(answer[0]["hex"].as_str().context("peer gave no hex")?)?;
        let dropped: Vec<String> = serde_json::from_value(answer[0]["dropped"].clone())?;
        ensure!(!dropped.is_empty(), "{}: the previous version should lack a field", file.to_string_lossy());
        ensure!(
            bytes[2..HEADER_LEN] != message[2..HEADER_LEN],
            "{name}: the previous schema has the current fingerprint"
        );

        // tally resolves the older writer schema by its fingerprint, into
        // its record type and into the current schema's datum, whose fields
        // the previous version lacks take their defaults.
        codec.decode_any(&bytes).with_context(|| format!("{name} written by fastavro"))?;
        let (_, got) = datum(&bytes)?;
        let mut expected = original;
        for field in &dropped {
            // A dotted path is a field of a record in an array field (the
            // snapshot's accounts): every item takes the default.
            let find = |fields: &Json, name: &str| {
                fields.as_array().and_then(|fields| fields.iter().find(|f| f["name"] == json!(name))).cloned()
            };
            match field.split_once('.') {
                None => {
                    let default = find(&current["fields"], field)
                        .map(|f| f["default"].clone())
                        .with_context(|| format!("{name}.{field} has no default"))?;
                    expected[field] = default;
                }
                Some((outer, inner)) => {
                    let items = find(&current["fields"], outer).map(|f| f["type"]["items"]["fields"].clone());
                    let default = items
                        .and_then(|fields| find(&fields, inner))
                        .map(|f| f["default"].clone())
                        .with_context(|| format!("{name}.{field} has no default"))?;
                    for item in expected[outer].as_array_mut().into_iter().flatten() {
                        item[inner] = default.clone();
                    }
                }
            }
        }
        assert_eq!(got, expected, "{name} written by fastavro with {}", file.to_string_lossy());
        println!("[interop] {name}: fastavro wrote the previous version, tally read it (defaults for {dropped:?})");
        checked += 1;
    }
    assert!(checked >= 9, "checked {checked} previous schema versions");
    Ok(())
}

/// A worker in another language derives the same event ids as the Rust
/// client, so its retries deduplicate against each other and against Rust
/// workers' reports of the same job.
#[test]
fn python_workers_derive_the_same_event_ids() -> Result<()> {
    let jobs = [
        ("job-77", "ai_modify", "nano_banana_2"),
        ("req/2026-07-01/0001", "ai_image_to_video", "kling"),
        ("a", "bc", "d"),
        ("ab", "c", "d"),
        ("fête-été-🎉", "sms", "standard"),
    ];
    let lines: Vec<String> = jobs.iter().map(|(j, s, e)| json!([j, s, e]).to_string()).collect();
    let answers = peer(&["event-id"], &lines)?;
    ensure!(answers.len() == jobs.len(), "peer answered {} of {} jobs", answers.len(), jobs.len());
    for ((job, service, engine), answer) in jobs.iter().zip(&answers) {
        let rust = tally_client::event_id(job, service, engine);
        assert_eq!(answer, &json!(rust.to_string()), "event id of ({job}, {service}, {engine})");
    }
    Ok(())
}
