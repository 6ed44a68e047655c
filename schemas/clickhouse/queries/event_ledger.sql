-- One photo-booth event's jobs, newest first; page with the last row's at_ms, account_id and sequence as before_ms, before_account and before_sequence.
-- param event: String
-- param before_ms: UInt64 = 0
-- param before_account: String =
-- param before_sequence: UInt64 = 0
-- param limit: UInt64 = 50
-- param tz: Timezone = UTC
SELECT
    toUInt64(occurred_at) * 1000 + occurred_ms AS at_ms,
    toString(toDateTime(occurred_at, {tz})) AS time,
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
FROM event_entries
WHERE photo_event_id = {event}
    -- The page's rows occurred no earlier than the limit-th newest
    -- occurred_at on or after the keyset (the same rows ordered by time
    -- first), found from the few columns it needs: the full columns are
    -- then read from the event's last granules only, not all of its rows
    -- (about 20,000 an event in the queries bench: p50 33 -> 17.5 ms, p99
    -- 43 -> 25 ms by hand on 18.16). An empty page's bound is 1970.
    AND occurred_at >= (
        SELECT min(at) FROM (
            SELECT occurred_at AS at FROM event_entries
            WHERE photo_event_id = {event} AND ({before_ms} = 0
        OR toUInt64(occurred_at) * 1000 + occurred_ms < {before_ms}
        OR (toUInt64(occurred_at) * 1000 + occurred_ms = {before_ms}
            AND (account_id < {before_account} OR (account_id = {before_account} AND sequence < {before_sequence}))))
            ORDER BY occurred_at DESC LIMIT {limit}))
    AND ({before_ms} = 0
        OR toUInt64(occurred_at) * 1000 + occurred_ms < {before_ms}
        OR (toUInt64(occurred_at) * 1000 + occurred_ms = {before_ms}
            AND (account_id < {before_account} OR (account_id = {before_account} AND sequence < {before_sequence}))))
ORDER BY occurred_at DESC, occurred_ms DESC, account_id DESC, sequence DESC
LIMIT {limit}
