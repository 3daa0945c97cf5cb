-- Signed device lists: each account's list of devices, signed by the
-- account's identity key on a device, versioned and hash-chained. The
-- relay stores them as opaque bytes and serves them; clients verify them
-- and trust nothing else about who an account's devices are.
CREATE TABLE device_lists (
    account_id  BLOB NOT NULL REFERENCES accounts(id),
    version     INTEGER NOT NULL,
    list        BLOB NOT NULL,            -- the signed list, as sent
    stored_at   INTEGER NOT NULL,
    PRIMARY KEY (account_id, version)
) STRICT;

-- Linking a new device to an account: a short-lived rendezvous where the
-- two devices exchange the messages of a password-authenticated key
-- exchange. The relay relays them without learning the password or the
-- secrets they protect, creates the device once an existing device of
-- the account approves it, and hands it a token once it proves it holds
-- the key that was approved.
CREATE TABLE links (
    id             BLOB PRIMARY KEY,
    expires_at     INTEGER NOT NULL,
    offer          BLOB,                  -- new device -> existing device
    answer         BLOB,                  -- existing -> new
    confirm        BLOB,                  -- new -> existing
    secrets        BLOB,                  -- existing -> new, encrypted end to end
    account_id     BLOB,                  -- set on approval
    device_id      BLOB,
    signature_key  BLOB,
    claimed        INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX links_by_expiry ON links(expires_at);
CREATE INDEX links_by_account ON links(account_id);
