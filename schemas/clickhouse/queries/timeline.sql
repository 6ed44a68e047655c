-- An account's activity per month, week, day or hour between two dates (the months of this year by default), every bucket listed, empty ones as 0.
-- param account: String
-- param from: Date = start_of_year
-- param to: Date = today
-- param bucket: Choice(hour|day|week|month) = month
-- param tz: Timezone = UTC
SELECT
    toString(toDateTime(bucket, {tz})) AS bucket_start,
    sum(entries) AS entries,
    sum(consumes) AS consumes,
    sum(adds) AS adds,
    sum(failures) AS failures,
    sum(credits_consumed) AS credits_consumed
FROM
(
    SELECT
        toDateTime(multiIf(
            {bucket} = 'hour', toStartOfHour(occurred_at, {tz}),
            {bucket} = 'day', toDateTime(toDate(occurred_at, {tz}), {tz}),
            {bucket} = 'week', toDateTime(toMonday(toDate(occurred_at, {tz})), {tz}),
            toDateTime(toStartOfMonth(toDate(occurred_at, {tz})), {tz})), {tz}) AS bucket,
        count() AS entries,
        countIf(entry_type = 'Consume') AS consumes,
        countIf(entry_type = 'Add') AS adds,
        countIf(status = 'Failed') AS failures,
        sumIf(credits, entry_type = 'Consume' AND status = 'Success') AS credits_consumed
    FROM ledger_entries
    WHERE account_id = {account}
        AND occurred_at >= toDateTime(toDate({from}), {tz})
        AND occurred_at < toDateTime(toDate({to}) + 1, {tz})
    GROUP BY bucket
    UNION ALL
    SELECT
        bucket,
        toUInt64(0) AS entries,
        toUInt64(0) AS consumes,
        toUInt64(0) AS adds,
        toUInt64(0) AS failures,
        toDecimal128(0, 6) AS credits_consumed
    FROM
    (
        SELECT toDateTime(multiIf(
            {bucket} = 'hour', toDateTime(toDate({from}), {tz}) + number * 3600,
            {bucket} = 'day', toDateTime(toDate({from}) + number, {tz}),
            {bucket} = 'week', toDateTime(toMonday(toDate({from})) + number * 7, {tz}),
            toDateTime(addMonths(toStartOfMonth(toDate({from})), number), {tz})), {tz}) AS bucket
        FROM numbers(100000)
        -- One row per bucket of the range, so no value leaves the Date range.
        WHERE number <= multiIf(
            {bucket} = 'hour', (toRelativeDayNum(toDate({to})) - toRelativeDayNum(toDate({from})) + 1) * 24,
            {bucket} = 'day', toRelativeDayNum(toDate({to})) - toRelativeDayNum(toDate({from})),
            {bucket} = 'week', intDiv(toRelativeDayNum(toDate({to})) - toRelativeDayNum(toDate({from})), 7) + 1,
            toRelativeMonthNum(toDate({to})) - toRelativeMonthNum(toDate({from})))
    ) AS zero
    -- Buckets past the Date range wrap around: keep those from the one
    -- holding {from} (at most 31 days before it) to {to}.
    WHERE bucket >= toDateTime(toDate({from}) - 31, {tz}) AND bucket < toDateTime(toDate({to}) + 1, {tz})
) AS filled
GROUP BY bucket
ORDER BY bucket
