-- Finance for one booked UTC day: per account, kind of entry, status, service and engine, the entries, credits and dollars, and the account's opening and closing balance of the day.
-- param date: Date = today
--
-- Days are booked days (ledger entry booked_at, the running maximum of
-- occurred_at per account; migration 005): an account's entries booked on
-- a day are one run of its sequences, so its opening and closing balances
-- come from that day's rows alone, and each closing is the opening of the
-- account's next booked day. Accounts without entries that day are not
-- listed (their balance did not move).
SELECT
    account_id,
    entry_type AS type,
    status,
    service,
    engine,
    entries,
    credits,
    dollars,
    opening_balance,
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
    FROM finance_booked_daily
    WHERE day = toDate({date})
    GROUP BY account_id, entry_type, status, service, engine
) AS day_totals
ANY LEFT JOIN
(
    SELECT account_id, argMinMerge(opening) AS opening_balance, argMaxMerge(closing) AS closing_balance
    FROM account_booked_daily
    WHERE day = toDate({date})
    GROUP BY account_id
) AS balances USING (account_id)
ORDER BY account_id, type, status, service, engine
