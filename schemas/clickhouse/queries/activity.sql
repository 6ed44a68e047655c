-- An account's activity ledger, newest first: date and time, service and engine, Consume/Add, Success/Failed with reason, credits, dollars, balance after. Filter by service, type, status and dates; page with before_sequence = the last row's sequence.
-- param account: String
-- param service: String =
-- param status: Choice(any|Success|Failed) = any
-- param type: Choice(any|Open|Consume|Add|Update|Forfeit) = any
-- param from: Date = 1970-01-02
-- param to: Date = 2105-12-30
-- param tz: Timezone = UTC
-- param before_sequence: UInt64 = 0
-- param limit: UInt64 = 50
SELECT
    sequence,
    toString(toDate(occurred_at, {tz})) AS date,
    substring(toString(toDateTime(occurred_at, {tz})), 12, 8) AS time,
    service,
    engine,
    entry_type AS type,
    status,
    reason,
    credits,
    dollars,
    balance_after
FROM ledger_entries
WHERE account_id = {account}
    -- The account's ledger partitions only (one, unless the input topic
    -- was repartitioned): the raw table is partitioned by month and ledger
    -- partition, and every part of the others costs a granule read per
    -- column (by hand, 10M rows, 18.16: p99 50-60 -> 25-27 ms). Not in
    -- balance.sql or timeline.sql, which read a few columns: there the
    -- extra scan cost more than it saved (timeline p99 +3 ms).
    AND ledger_partition IN (SELECT DISTINCT ledger_partition FROM ledger_entries WHERE account_id = {account})
    AND ({service} = '' OR service = {service})
    AND ({status} = 'any' OR toString(status) = {status})
    AND ({type} = 'any' OR toString(entry_type) = {type})
    AND occurred_at >= toDateTime(toDate({from}), {tz})
    AND occurred_at < toDateTime(toDate({to}) + 1, {tz})
    AND ({before_sequence} = 0 OR sequence < {before_sequence})
ORDER BY sequence DESC
LIMIT {limit}
