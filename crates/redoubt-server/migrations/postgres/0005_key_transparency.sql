-- The key-transparency directory (akd): the append-only tree's nodes and
-- its root record, by akd's binary key, and each label's value states by
-- (label, epoch). Labels are phone numbers; values are public (account id,
-- identity key, device-list hash). Records are akd's own, serialised.
CREATE TABLE kt_nodes (
    key    BYTEA PRIMARY KEY,
    record BYTEA NOT NULL
);

CREATE TABLE kt_values (
    label   BYTEA NOT NULL,
    epoch   BIGINT NOT NULL,
    version BIGINT NOT NULL,
    record  BYTEA NOT NULL,
    PRIMARY KEY (label, epoch)
);

CREATE INDEX kt_values_version ON kt_values (label, version);

-- Changes waiting for the next epoch: the newest value per number.
CREATE TABLE kt_pending (
    label     BYTEA PRIMARY KEY,
    value     BYTEA NOT NULL,
    queued_at BIGINT NOT NULL
);

-- Every published epoch's root, signed with the directory key.
CREATE TABLE kt_epochs (
    epoch        BIGINT PRIMARY KEY,
    root         BYTEA NOT NULL,
    published_at BIGINT NOT NULL,
    signature    BYTEA NOT NULL
);

-- The directory's VRF key and epoch-signing key, made once by the first
-- node to start, so every node (sharing the database) uses the same ones.
CREATE TABLE kt_keys (
    name   TEXT PRIMARY KEY,
    secret BYTEA NOT NULL
);
