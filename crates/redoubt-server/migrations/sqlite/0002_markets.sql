-- Market exits. An account's market is its phone number's region, kept in
-- its own column so the accounts of one market are found by index (the
-- relay fills it for older rows when it opens the database).
ALTER TABLE accounts ADD COLUMN region TEXT;
CREATE INDEX accounts_by_region ON accounts(region);

-- Who has been told about an exit, per announcement and phase, so that a
-- notice goes once to each account even across restarts. Deleted with the
-- account when the market is purged.
CREATE TABLE market_notices (
    exit_key    TEXT NOT NULL,            -- jurisdiction and announcement time
    phase       TEXT NOT NULL,            -- "announced" or "reminder"
    account_id  BLOB NOT NULL REFERENCES accounts(id),
    sent_at     INTEGER NOT NULL,
    PRIMARY KEY (exit_key, phase, account_id)
) STRICT;
CREATE INDEX market_notices_by_account ON market_notices(account_id);
