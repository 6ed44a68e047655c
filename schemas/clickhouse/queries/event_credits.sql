-- Credits by engine for one photo-booth event (the donut): jobs, failures, credits and dollars per service and engine, largest first.
-- param event: String
SELECT
    service,
    engine,
    sum(entries) AS jobs,
    sum(failures) AS failed,
    sum(quantity) AS quantity,
    sum(credits) AS credits,
    sum(dollars) AS dollars
FROM event_usage_hourly
WHERE photo_event_id = {event}
GROUP BY service, engine
ORDER BY credits DESC, service, engine
