-- Finance for one booked UTC day, a page of accounts at a time: per account, kind of entry, status, service and engine, the entries, credits and dollars, and the account's opening and closing balance of the day. Next page: after_account = the last row's account_id.
-- param date: Date = today
-- param after_account: String =
-- param accounts: UInt64 = 100
--
-- Days are booked days (ledger entry booked_at, the running maximum of
-- occurred_at per account; migration 005): an account's entries booked on
-- a day are one run of its sequences, so its opening and closing balances
-- come from that day's rows alone, and each closing is the opening of the
-- account's next booked day. Accounts without entries that day are not
-- listed (their balance did not move).
--
-- Paged by account (keyset: account_id > after_account, `accounts` of
-- them), every row of an account on one page: a whole day of 10,000
-- accounts is about 80,000 rows, and grouping, joining and sending them
-- took p99 280 ms (queries bench), where a dashboard wants 50. Both
-- rollups are ordered by (day, account_id), so a page reads its own
-- granules. The whole day at once is `tally finance daily`. Three scans,
-- not four: the balances side picks its page itself (GROUP BY, ORDER BY,
-- LIMIT) rather than through a second copy of the IN.
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
        AND account_id IN
        (
            SELECT DISTINCT account_id
            FROM account_booked_daily
            WHERE day = toDate({date}) AND account_id > {after_account}
            ORDER BY account_id
            LIMIT {accounts}
        )
    GROUP BY account_id, entry_type, status, service, engine
) AS day_totals
ANY LEFT JOIN
(
    -- The page's accounts and their balances in one scan: the same
    -- accounts the IN above picks (same table, condition, order and
    -- limit), so every row of day_totals finds its balances.
    SELECT account_id, argMinMerge(opening) AS opening_balance, argMaxMerge(closing) AS closing_balance
    FROM account_booked_daily
    WHERE day = toDate({date}) AND account_id > {after_account}
    GROUP BY account_id
    ORDER BY account_id
    LIMIT {accounts}
) AS balances USING (account_id)
ORDER BY account_id, type, status, service, engine
