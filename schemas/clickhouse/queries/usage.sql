-- Credits and jobs by service and engine per day, week or month between two dates, for every account or one (for forecasting).
-- param from: Date = start_of_month
-- param to: Date = today
-- param bucket: Choice(day|week|month) = day
-- param account: String =
-- param tz: Timezone = UTC
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
FROM usage_hourly
WHERE hour >= toDateTime(toDate({from}), {tz})
    AND hour < toDateTime(toDate({to}) + 1, {tz})
    AND ({account} = '' OR account_id = {account})
GROUP BY bucket_start, service, engine
ORDER BY bucket_start, service, engine
