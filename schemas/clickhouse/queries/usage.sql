-- Credits and jobs by service and engine per day, week or month between two dates, for every account or one (for forecasting).
-- param from: Date = start_of_month
-- param to: Date = today
-- param bucket: Choice(day|week|month) = day
-- param account: String =
-- param tz: Timezone = UTC
--
-- Every account: the account-less service_hourly rollup (migration 004).
-- One account: its raw entries (ordered by account first, a few ms). Only
-- one branch has rows: the other's condition is constant false. Buckets
-- of service_hourly start on UTC hours, so a zone with a half-hour offset
-- counts each hour in the bucket its start falls in; the raw branch is
-- exact to the millisecond.
SELECT bucket_start, service, engine, jobs, failed, quantity, credits, dollars
FROM
(
    SELECT
        toString(toDate(toDateTime(multiIf(
            {bucket} = 'day', toDateTime(toDate(hour, {tz}), {tz}),
            {bucket} = 'week', toDateTime(toMonday(toDate(hour, {tz})), {tz}),
            toDateTime(toStartOfMonth(toDate(hour, {tz})), {tz})), {tz}))) AS bucket_start,
        service,
        engine,
        sum(entries) AS jobs,
        sum(failures) AS failed,
        sum(quantity) AS quantity,
        sum(credits) AS credits,
        sum(dollars) AS dollars
    FROM service_hourly
    WHERE {account} = ''
        AND hour >= toDateTime(toDate({from}), {tz})
        AND hour < toDateTime(toDate({to}) + 1, {tz})
    GROUP BY bucket_start, service, engine
    UNION ALL
    SELECT
        toString(toDate(toDateTime(multiIf(
            {bucket} = 'day', toDateTime(toDate(occurred_at, {tz}), {tz}),
            {bucket} = 'week', toDateTime(toMonday(toDate(occurred_at, {tz})), {tz}),
            toDateTime(toStartOfMonth(toDate(occurred_at, {tz})), {tz})), {tz}))) AS bucket_start,
        service,
        engine,
        count() AS jobs,
        countIf(status = 'Failed') AS failed,
        sumIf(quantity, status = 'Success') AS quantity,
        sumIf(credits, status = 'Success') AS credits,
        sumIf(dollars, status = 'Success') AS dollars
    FROM ledger_entries
    WHERE {account} != ''
        AND account_id = {account}
        -- The account's ledger partitions only (see activity.sql).
        AND ledger_partition IN (SELECT DISTINCT ledger_partition FROM ledger_entries WHERE account_id = {account})
        AND entry_type = 'Consume'
        AND occurred_at >= toDateTime(toDate({from}), {tz})
        AND occurred_at < toDateTime(toDate({to}) + 1, {tz})
    GROUP BY bucket_start, service, engine
)
ORDER BY bucket_start, service, engine
