-- An account's current balance (exact, and rounded down to the cent), its plan tier, and whether its AI features are paused.
-- param account: String
SELECT
    account_id,
    current_balance AS balance,
    toDecimal128(current_balance, 2) AS balance_to_cent,
    current_tier AS tier,
    current_paused AS paused,
    current_threshold AS low_balance_threshold,
    last AS last_sequence
FROM
(
    SELECT
        account_id,
        argMaxMerge(balance) AS current_balance,
        argMaxMerge(tier) AS current_tier,
        argMaxMerge(paused) AS current_paused,
        argMaxMerge(threshold) AS current_threshold,
        maxMerge(last_sequence) AS last
    FROM account_daily
    WHERE account_id = {account}
    GROUP BY account_id
) AS merged
