-- 001: the raw ledger in ClickHouse, and the aggregator's own bookkeeping.
--
-- Runs unchanged on ClickHouse 18.16 (Debian's package, the local stack)
-- and on current ClickHouse (production; checked on 26.x by chDB in the
-- tests). Choices both accept (see ../../shared/CLICKHOUSE.md, measured):
-- - money is Decimal with a fixed scale, written by the aggregator as
--   scaled integers in RowBinary after an exact rescale (a value with more
--   digits than the scale is refused in Rust; 18.16 would err, current
--   versions would truncate silently). Credits and balances have up to 6
--   fractional digits and reach 10^15, 21 digits: Decimal128(6). Dollars are
--   cents below 10^8: Decimal64(2). Quantities have up to 3 digits below
--   10^6: Decimal64(3).
-- - time is DateTime('UTC') plus the milliseconds in a column of their own
--   (DateTime64 is missing on 18.16); zones are applied at query time.
-- - enums are Enum8 with the display names operators see; values are only
--   ever appended.
-- - no LowCardinality, Nullable, TTL or CODEC (missing or behind a setting
--   on 18.16): defaults ('' and 0) instead of NULL.
-- - modern PARTITION BY / ORDER BY syntax (the old MergeTree(date, ...) is
--   rejected by current versions).

-- One row per counted ledger entry: the fenced ledger, nothing else (no
-- markers, no zombie writes), every field of the entry plus where it sits in
-- the ledger topic.
--
-- Partitioned by month and by ledger partition. The month is what BI and
-- retention need; the ledger partition makes each ClickHouse partition
-- belong to exactly one aggregator (each owns whole ledger partitions), so
-- that an INSERT of one batch's rows of one month is one ClickHouse
-- partition, all or nothing (measured: an INSERT across two partitions can
-- keep only one), and so that an aggregator can rebuild the rollups of its
-- own partitions without pausing the others. Ordered by (account_id,
-- sequence): every per-account question (balance, activity, gaps) reads one
-- range.
CREATE TABLE IF NOT EXISTS ledger_entries
(
    ledger_partition Int32,
    ledger_offset Int64,
    entry_id UUID,
    account_id String,
    sequence Int64,
    epoch Int64,
    entry_type Enum8('Open' = 1, 'Consume' = 2, 'Add' = 3, 'Update' = 4, 'Forfeit' = 5),
    status Enum8('Success' = 1, 'Failed' = 2),
    reason String,
    input_id UUID,
    service String,
    engine String,
    photo_event_id String,
    booth_id String,
    quantity Decimal64(3),
    credits Decimal128(6),
    dollars Decimal64(2),
    tier Enum8('PAYG' = 1, 'Basic' = 2, 'Pro' = 3),
    rate_version String,
    balance_after Decimal128(6),
    low_balance_threshold Decimal128(6),
    paused UInt8,
    occurred_at DateTime('UTC'),
    occurred_ms UInt16,
    input_topic String,
    input_partition Int32,
    input_offset Int64,
    input_digest String
)
ENGINE = MergeTree
PARTITION BY (toYYYYMM(occurred_at), ledger_partition)
ORDER BY (account_id, sequence);

-- How far each ledger partition is in ClickHouse: one row per batch, after
-- every INSERT of the batch succeeded. Every ledger record below
-- next_offset is in ledger_entries exactly once (if it counts); records at
-- or above it may be present (an INSERT whose outcome is unknown) and are
-- read back by the aggregator before it goes on (docs/DESIGN.md, "The
-- ledger in ClickHouse"). fence_epoch/fence_claim_id are the ledger's claim
-- fence in force at next_offset, so that reading resumes there under the
-- same fence. claim_epoch is the aggregator claim that wrote the row.
CREATE TABLE IF NOT EXISTS sink_progress
(
    ledger_partition Int32,
    next_offset Int64,
    fence_epoch Int64,
    fence_claim_id String,
    claim_epoch Int64,
    written_at DateTime('UTC')
)
ENGINE = MergeTree
ORDER BY (ledger_partition, next_offset);

-- Which aggregator may write a ledger partition: the claim with the highest
-- (epoch, claim_id) is in force; a claimer waits until no INSERT of an
-- earlier owner can still land before it reads where to resume. released =
-- 1 marks a clean stop (the next claimer need not wait).
CREATE TABLE IF NOT EXISTS sink_claims
(
    ledger_partition Int32,
    epoch Int64,
    claim_id String,
    instance String,
    released UInt8,
    claimed_at DateTime('UTC')
)
ENGINE = MergeTree
ORDER BY (ledger_partition, epoch, claim_id);
