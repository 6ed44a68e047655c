-- One photo-booth event's jobs and credits per hour or day over its period.
-- param event: String
-- param bucket: Choice(hour|day) = hour
-- param tz: Timezone = UTC
SELECT
    toString(toDateTime(multiIf(
        {bucket} = 'hour', toStartOfHour(hour, {tz}),
        toDateTime(toDate(hour, {tz}), {tz})), {tz})) AS bucket_start,
    sum(entries) AS jobs,
    sum(failures) AS failed,
    sum(credits) AS credits,
    sum(dollars) AS dollars
FROM event_usage_hourly
WHERE photo_event_id = {event}
GROUP BY bucket_start
ORDER BY bucket_start
