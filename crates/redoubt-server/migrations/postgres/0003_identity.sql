-- Signed device lists and device-link rendezvous; see the SQLite migration
-- of the same name for what each column holds.
CREATE TABLE device_lists (
    account_id  BYTEA NOT NULL REFERENCES accounts(id),
    version     BIGINT NOT NULL,
    list        BYTEA NOT NULL,
    stored_at   BIGINT NOT NULL,
    PRIMARY KEY (account_id, version)
);

CREATE TABLE links (
    id             BYTEA PRIMARY KEY,
    expires_at     BIGINT NOT NULL,
    offer          BYTEA,
    answer         BYTEA,
    confirm        BYTEA,
    secrets        BYTEA,
    account_id     BYTEA,
    device_id      BYTEA,
    signature_key  BYTEA,
    claimed        BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX links_by_expiry ON links(expires_at);
CREATE INDEX links_by_account ON links(account_id);
