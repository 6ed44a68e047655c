-- 003: the rollups again, with `old_parts_lifetime = 1`, so that a rollup
-- rebuild is durable within seconds. tally: rebuild rollups
--
-- Why: a rebuild swaps a rollup partition (DROP PARTITION, then ATTACH
-- PARTITION .. FROM a scratch table). On 18.16 a part a merge, a DROP or a
-- REPLACE made inactive stays on disk for old_parts_lifetime (480 s by
-- default) and comes back as active if the server is killed before it is
-- removed and no active part covers it. Measured: a rebuilt partition
-- counted twice after a kill -9 of the server (REPLACE: the replaced parts
-- came back; DROP + ATTACH: the sources of an earlier merge came back).
-- The rebuild waits until no such part is left (rollups.rs), and this
-- bounds that wait to a few seconds. Current ClickHouse removes or covers
-- them at once; the setting is accepted by both.
--
-- What the setting gives up: a merge's source parts guard against a power
-- loss before the merged part reaches the disk. Rollups are derived from
-- the raw table (`tally migrate --rebuild-rollups`), which keeps the
-- default. 18.16 has no ALTER .. MODIFY SETTING, so the tables are
-- recreated, and `tally migrate` refills them from raw before it records
-- this migration (the line "tally: rebuild rollups" above asks it to).
-- Stop the aggregators while it runs. Definitions are 002's otherwise.

-- Usage per account x service x engine x hour (consume entries).
DROP TABLE IF EXISTS usage_hourly_mv;
DROP TABLE IF EXISTS usage_hourly;
CREATE TABLE IF NOT EXISTS usage_hourly
(
    ledger_partition Int32,
    hour DateTime('UTC'),
    account_id String,
    service String,
    engine String,
    entries UInt64,
    successes UInt64,
    failures UInt64,
    quantity Decimal128(3),
    credits Decimal128(6),
    dollars Decimal128(2)
)
ENGINE = SummingMergeTree((entries, successes, failures, quantity, credits, dollars))
PARTITION BY (toYYYYMM(hour), ledger_partition)
ORDER BY (account_id, hour, service, engine)
SETTINGS old_parts_lifetime = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly_mv TO usage_hourly AS
SELECT
    ledger_partition,
    toStartOfHour(occurred_at) AS hour,
    account_id,
    service,
    engine,
    count() AS entries,
    countIf(status = 'Success') AS successes,
    countIf(status = 'Failed') AS failures,
    sumIf(quantity, status = 'Success') AS quantity,
    sumIf(credits, status = 'Success') AS credits,
    sumIf(dollars, status = 'Success') AS dollars
FROM ledger_entries
WHERE entry_type = 'Consume'
GROUP BY ledger_partition, hour, account_id, service, engine;

-- Usage per photo-booth event x service x engine x hour: the event donut
-- (credits by engine) and the event's activity over its period.
DROP TABLE IF EXISTS event_usage_hourly_mv;
DROP TABLE IF EXISTS event_usage_hourly;
CREATE TABLE IF NOT EXISTS event_usage_hourly
(
    ledger_partition Int32,
    photo_event_id String,
    hour DateTime('UTC'),
    service String,
    engine String,
    entries UInt64,
    successes UInt64,
    failures UInt64,
    quantity Decimal128(3),
    credits Decimal128(6),
    dollars Decimal128(2)
)
ENGINE = SummingMergeTree((entries, successes, failures, quantity, credits, dollars))
PARTITION BY (toYYYYMM(hour), ledger_partition)
ORDER BY (photo_event_id, hour, service, engine)
SETTINGS old_parts_lifetime = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_usage_hourly_mv TO event_usage_hourly AS
SELECT
    ledger_partition,
    photo_event_id,
    toStartOfHour(occurred_at) AS hour,
    service,
    engine,
    count() AS entries,
    countIf(status = 'Success') AS successes,
    countIf(status = 'Failed') AS failures,
    sumIf(quantity, status = 'Success') AS quantity,
    sumIf(credits, status = 'Success') AS credits,
    sumIf(dollars, status = 'Success') AS dollars
FROM ledger_entries
WHERE entry_type = 'Consume' AND photo_event_id != ''
GROUP BY ledger_partition, photo_event_id, hour, service, engine;

-- The consume entries of each photo-booth event, ordered by event and time:
-- the event's ledger page reads one range instead of scanning every account.
DROP TABLE IF EXISTS event_entries_mv;
DROP TABLE IF EXISTS event_entries;
CREATE TABLE IF NOT EXISTS event_entries
(
    ledger_partition Int32,
    photo_event_id String,
    occurred_at DateTime('UTC'),
    occurred_ms UInt16,
    account_id String,
    sequence Int64,
    booth_id String,
    service String,
    engine String,
    status Enum8('Success' = 1, 'Failed' = 2),
    reason String,
    quantity Decimal64(3),
    credits Decimal128(6),
    dollars Decimal64(2),
    balance_after Decimal128(6)
)
ENGINE = MergeTree
PARTITION BY (toYYYYMM(occurred_at), ledger_partition)
ORDER BY (photo_event_id, occurred_at, account_id, sequence)
SETTINGS old_parts_lifetime = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS event_entries_mv TO event_entries AS
SELECT
    ledger_partition,
    photo_event_id,
    occurred_at,
    occurred_ms,
    account_id,
    sequence,
    booth_id,
    service,
    engine,
    status,
    reason,
    quantity,
    credits,
    dollars,
    balance_after
FROM ledger_entries
WHERE entry_type = 'Consume' AND photo_event_id != '';

-- Per account per UTC day per kind of entry, for finance: counts and sums of
-- every entry type (consumes by service and engine, adds, forfeits).
DROP TABLE IF EXISTS finance_daily_mv;
DROP TABLE IF EXISTS finance_daily;
CREATE TABLE IF NOT EXISTS finance_daily
(
    ledger_partition Int32,
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
PARTITION BY (toYYYYMM(day), ledger_partition)
ORDER BY (day, account_id, entry_type, status, service, engine)
SETTINGS old_parts_lifetime = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS finance_daily_mv TO finance_daily AS
SELECT
    ledger_partition,
    toDate(occurred_at) AS day,
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
GROUP BY ledger_partition, day, account_id, entry_type, status, service, engine;

-- Per account per UTC day: the last balance, tier, pause state and
-- threshold of the day (by sequence, so the latest over all days is
-- argMaxMerge over the account's rows), and the day's sequence range.
DROP TABLE IF EXISTS account_daily_mv;
DROP TABLE IF EXISTS account_daily;
CREATE TABLE IF NOT EXISTS account_daily
(
    ledger_partition Int32,
    day Date,
    account_id String,
    entries AggregateFunction(count),
    first_sequence AggregateFunction(min, Int64),
    last_sequence AggregateFunction(max, Int64),
    balance AggregateFunction(argMax, Decimal128(6), Int64),
    tier AggregateFunction(argMax, String, Int64),
    paused AggregateFunction(argMax, UInt8, Int64),
    threshold AggregateFunction(argMax, Decimal128(6), Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY (toYYYYMM(day), ledger_partition)
ORDER BY (account_id, day)
SETTINGS old_parts_lifetime = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS account_daily_mv TO account_daily AS
SELECT
    ledger_partition,
    toDate(occurred_at) AS day,
    account_id,
    countState() AS entries,
    minState(sequence) AS first_sequence,
    maxState(sequence) AS last_sequence,
    argMaxState(balance_after, sequence) AS balance,
    argMaxState(toString(tier), sequence) AS tier,
    argMaxState(paused, sequence) AS paused,
    argMaxState(low_balance_threshold, sequence) AS threshold
FROM ledger_entries
GROUP BY ledger_partition, day, account_id;
