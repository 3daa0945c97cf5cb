-- The relay's schema on PostgreSQL, the same tables as the SQLite schema
-- (see migrations/sqlite) with PostgreSQL types. It holds no plaintext and
-- no private key: envelopes are MLS ciphertext, key packages are public,
-- tokens and codes are hashed.

CREATE TABLE accounts (
    id          BYTEA PRIMARY KEY,
    phone       TEXT NOT NULL UNIQUE,      -- E.164; readable by the legal desk
    created_at  BIGINT NOT NULL,           -- ms since epoch
    region      TEXT                       -- the number's region, for market exits
);
CREATE INDEX accounts_by_region ON accounts(region);

CREATE TABLE devices (
    id             BYTEA PRIMARY KEY,
    account_id     BYTEA NOT NULL REFERENCES accounts(id),
    name           TEXT NOT NULL,
    signature_key  BYTEA NOT NULL,
    token_hash     BYTEA NOT NULL UNIQUE,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT
);
CREATE INDEX devices_by_account ON devices(account_id);

CREATE TABLE verification_codes (
    phone_key   BYTEA PRIMARY KEY,
    code_hash   BYTEA NOT NULL,
    expires_at  BIGINT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE code_requests (
    id            BIGSERIAL PRIMARY KEY,
    phone_key     BYTEA NOT NULL,
    ip            TEXT NOT NULL,
    requested_at  BIGINT NOT NULL
);
CREATE INDEX code_requests_by_phone ON code_requests(phone_key, requested_at);
CREATE INDEX code_requests_by_ip ON code_requests(ip, requested_at);

CREATE TABLE key_packages (
    seq          BIGSERIAL PRIMARY KEY,
    device_id    BYTEA NOT NULL REFERENCES devices(id),
    kp_ref       BYTEA NOT NULL,
    data         BYTEA NOT NULL,
    last_resort  BOOLEAN NOT NULL,
    created_at   BIGINT NOT NULL,
    UNIQUE (device_id, kp_ref)
);
CREATE INDEX key_packages_for_claim ON key_packages(device_id, last_resort, seq);

CREATE TABLE envelopes (
    id           BYTEA PRIMARY KEY,
    kind         TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    received_at  BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX envelopes_by_expiry ON envelopes(expires_at);

-- `seq` orders each device's queue. Enqueues lock the recipients' device
-- rows, so per device the sequence is taken in commit order.
CREATE TABLE mailbox (
    seq          BIGSERIAL PRIMARY KEY,
    device_id    BYTEA NOT NULL REFERENCES devices(id),
    envelope_id  BYTEA NOT NULL REFERENCES envelopes(id),
    UNIQUE (device_id, envelope_id)
);
CREATE INDEX mailbox_by_device ON mailbox(device_id, seq);
CREATE INDEX mailbox_by_envelope ON mailbox(envelope_id);

CREATE TABLE envelope_receipts (
    id            BYTEA PRIMARY KEY,
    payload_hash  BYTEA NOT NULL,
    received_at   BIGINT NOT NULL
);
CREATE INDEX envelope_receipts_by_time ON envelope_receipts(received_at);

CREATE TABLE ip_log (
    account_id  BYTEA NOT NULL,
    ip          TEXT NOT NULL,
    port        INTEGER NOT NULL,
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    PRIMARY KEY (account_id, ip, port)
);
CREATE INDEX ip_log_by_last_seen ON ip_log(last_seen);

CREATE TABLE market_notices (
    exit_key    TEXT NOT NULL,
    phase       TEXT NOT NULL,
    account_id  BYTEA NOT NULL REFERENCES accounts(id),
    sent_at     BIGINT NOT NULL,
    PRIMARY KEY (exit_key, phase, account_id)
);
CREATE INDEX market_notices_by_account ON market_notices(account_id);
