-- The relay's schema. It holds no plaintext and no private key: envelopes
-- are MLS ciphertext, key packages are public, tokens and codes are hashed.

CREATE TABLE accounts (
    id          BLOB PRIMARY KEY,          -- AccountId, 16 bytes
    phone       TEXT NOT NULL UNIQUE,      -- E.164; readable by the legal desk
    created_at  INTEGER NOT NULL           -- ms since epoch
) STRICT;

CREATE TABLE devices (
    id             BLOB PRIMARY KEY,       -- DeviceId, 16 bytes
    account_id     BLOB NOT NULL REFERENCES accounts(id),
    name           TEXT NOT NULL,
    signature_key  BLOB NOT NULL,          -- Ed25519 public key
    token_hash     BLOB NOT NULL UNIQUE,   -- SHA-256 of the bearer token
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER                 -- kept so a revoked token is told apart from an unknown one
) STRICT;
CREATE INDEX devices_by_account ON devices(account_id);

-- One pending code per number, keyed by a hash of the number so that numbers
-- which never finish registering are not stored in clear.
CREATE TABLE verification_codes (
    phone_key   BLOB PRIMARY KEY,
    code_hash   BLOB NOT NULL,
    expires_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Code requests, kept only as long as the rate-limit windows need them.
CREATE TABLE code_requests (
    id            INTEGER PRIMARY KEY,
    phone_key     BLOB NOT NULL,
    ip            TEXT NOT NULL,
    requested_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX code_requests_by_phone ON code_requests(phone_key, requested_at);
CREATE INDEX code_requests_by_ip ON code_requests(ip, requested_at);

CREATE TABLE key_packages (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id    BLOB NOT NULL REFERENCES devices(id),
    kp_ref       BLOB NOT NULL,
    data         BLOB NOT NULL,
    last_resort  INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    UNIQUE (device_id, kp_ref)
) STRICT;
CREATE INDEX key_packages_for_claim ON key_packages(device_id, last_resort, seq);

-- Each envelope's bytes are stored once, however many devices it is for.
CREATE TABLE envelopes (
    id           BLOB PRIMARY KEY,         -- EnvelopeId chosen by the sender
    kind         TEXT NOT NULL,
    payload      BLOB NOT NULL,            -- MLS ciphertext, opaque
    received_at  INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX envelopes_by_expiry ON envelopes(expires_at);

-- The per-device queues. `seq` orders each device's queue.
CREATE TABLE mailbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id    BLOB NOT NULL REFERENCES devices(id),
    envelope_id  BLOB NOT NULL REFERENCES envelopes(id),
    UNIQUE (device_id, envelope_id)
) STRICT;
CREATE INDEX mailbox_by_device ON mailbox(device_id, seq);
CREATE INDEX mailbox_by_envelope ON mailbox(envelope_id);

-- Ids and payload hashes of accepted envelopes, kept after delivery for the
-- deduplication window, so that a sender's retry of an envelope that was
-- already delivered and deleted is recognised instead of delivered twice.
CREATE TABLE envelope_receipts (
    id            BLOB PRIMARY KEY,
    payload_hash  BLOB NOT NULL,
    received_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX envelope_receipts_by_time ON envelope_receipts(received_at);

-- The IP-address log: with the phone number, all the legal desk can read.
CREATE TABLE ip_log (
    account_id  BLOB NOT NULL,
    ip          TEXT NOT NULL,
    port        INTEGER NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    PRIMARY KEY (account_id, ip, port)
) STRICT;
CREATE INDEX ip_log_by_last_seen ON ip_log(last_seen);
