-- 005: the booking time in the raw table, and finance's daily rollups by
-- booked day in place of the occurred-day ones. tally: rebuild rollups
--
-- Why: a day bucketed by occurred_at does not chain: a late event takes a
-- higher sequence than the day's last entry, so the day's closing balance
-- (the balance after its highest sequence) is not the next day's opening,
-- and finance_day had to take every account's argMax over all days up to
-- D (queries bench, 10M rows on 18.16: p99 243 ms). Ledger entry v4
-- carries booked_at, the running maximum of occurred_at per account
-- (tally-ledger's booking.rs): never decreasing along an account's
-- sequence, so the entries booked on a day are one run of sequences, the
-- balance before the run is the day's opening and the balance after it
-- the closing, and both come from that day's rollup rows alone.
--
-- booked_at: whole seconds, DateTime('UTC') like occurred_at. Rows written
-- before this migration take occurred_at (the DEFAULT; computed on read
-- for old parts), which is what they were booked by until now; their days
-- may not chain, as before. 18.16 has no ADD COLUMN IF NOT EXISTS:
-- `tally migrate` skips the ALTER when system.columns has the column.
--
-- The booked rollups are partitioned like the raw rows they come from:
-- `month` is toYYYYMM(occurred_at), not of the booked day, so one raw
-- partition feeds exactly one rollup partition and the rebuild unit stays
-- (month, ledger_partition) (rollups.rs). A booked day's rows may then sit
-- in two partitions (a late event of the previous month); queries sum or
-- merge them per day, and both tables are ordered by day first, so a day
-- reads its own granules. The rollup set stays at five views. `tally
-- migrate` fills the new tables from raw before it records this migration.
-- Stop the aggregators while it runs.

ALTER TABLE ledger_entries ADD COLUMN booked_at DateTime('UTC') DEFAULT occurred_at;

DROP TABLE IF EXISTS finance_daily_mv;
DROP TABLE IF EXISTS finance_daily;
DROP TABLE IF EXISTS account_daily_mv;
DROP TABLE IF EXISTS account_daily;

-- Per account per booked UTC day per kind of entry, for finance: counts and
-- sums of every entry type (consumes by service and engine at the dollars
-- of the tier in force at each entry, adds, forfeits).
CREATE TABLE IF NOT EXISTS finance_booked_daily
(
    ledger_partition Int32,
    month UInt32,
    day Date,
    account_id String,
    entry_type Enum8('Open' = 1, 'Consume' = 2, 'Add' = 3, 'Update' = 4, 'Forfeit' = 5),
    status Enum8('Success' = 1, 'Failed' = 2),
    service String,
    engine String,
    entries UInt64,
    quantity Decimal128(3),
    credits Decimal128(6),
    dollars Decimal128(2)
)
ENGINE = SummingMergeTree((entries, quantity, credits, dollars))
PARTITION BY (month, ledger_partition)
ORDER BY (day, account_id, entry_type, status, service, engine)
SETTINGS old_parts_lifetime = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS finance_booked_daily_mv TO finance_booked_daily AS
SELECT
    ledger_partition,
    toYYYYMM(occurred_at) AS month,
    toDate(booked_at) AS day,
    account_id,
    entry_type,
    status,
    service,
    engine,
    count() AS entries,
    sum(quantity) AS quantity,
    sum(credits) AS credits,
    sum(dollars) AS dollars
FROM ledger_entries
GROUP BY ledger_partition, month, day, account_id, entry_type, status, service, engine;

-- Per account per booked UTC day: the balance before the day's first entry
-- (opening) and after its last (closing), by sequence, the tier, pause
-- state and threshold after the last, and the day's sequence range. An
-- entry's balance before is balance_after minus its signed credits
-- (+credits for a successful ADD, -credits for a successful CONSUME or
-- FORFEIT, else 0), the ledger's balance chain.
CREATE TABLE IF NOT EXISTS account_booked_daily
(
    ledger_partition Int32,
    month UInt32,
    day Date,
    account_id String,
    entries AggregateFunction(count),
    first_sequence AggregateFunction(min, Int64),
    last_sequence AggregateFunction(max, Int64),
    opening AggregateFunction(argMin, Decimal128(6), Int64),
    closing AggregateFunction(argMax, Decimal128(6), Int64),
    tier AggregateFunction(argMax, String, Int64),
    paused AggregateFunction(argMax, UInt8, Int64),
    threshold AggregateFunction(argMax, Decimal128(6), Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY (month, ledger_partition)
ORDER BY (day, account_id)
SETTINGS old_parts_lifetime = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS account_booked_daily_mv TO account_booked_daily AS
SELECT
    ledger_partition,
    toYYYYMM(occurred_at) AS month,
    toDate(booked_at) AS day,
    account_id,
    countState() AS entries,
    minState(sequence) AS first_sequence,
    maxState(sequence) AS last_sequence,
    argMinState(
        balance_after - multiIf(
            status = 'Success' AND entry_type = 'Add', credits,
            status = 'Success' AND (entry_type = 'Consume' OR entry_type = 'Forfeit'), -credits,
            toDecimal128(0, 6)),
        sequence) AS opening,
    argMaxState(balance_after, sequence) AS closing,
    argMaxState(toString(tier), sequence) AS tier,
    argMaxState(paused, sequence) AS paused,
    argMaxState(low_balance_threshold, sequence) AS threshold
FROM ledger_entries
GROUP BY ledger_partition, month, day, account_id;
