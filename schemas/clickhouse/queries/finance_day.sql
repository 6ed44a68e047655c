-- Finance for one UTC day: per account, kind of entry, status, service and engine, the entries, credits and dollars, and the account's closing balance of the day.
-- param date: Date = today
SELECT
    account_id,
    entry_type AS type,
    status,
    service,
    engine,
    entries,
    credits,
    dollars,
    closing_balance
FROM
(
    SELECT
        account_id,
        entry_type,
        status,
        service,
        engine,
        sum(entries) AS entries,
        sum(credits) AS credits,
        sum(dollars) AS dollars
    FROM finance_daily
    WHERE day = toDate({date})
    GROUP BY account_id, entry_type, status, service, engine
) AS day_totals
ANY LEFT JOIN
(
    SELECT account_id, argMaxMerge(balance) AS closing_balance
    FROM account_daily
    WHERE day <= toDate({date})
    GROUP BY account_id
) AS closing USING (account_id)
ORDER BY account_id, type, status, service, engine
