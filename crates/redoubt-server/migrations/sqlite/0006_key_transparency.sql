-- The key-transparency directory (akd): the append-only tree's nodes and
-- its root record, by akd's binary key, and each label's value states by
-- (label, epoch). Labels are phone numbers; values are public (account id,
-- identity key, device-list hash). Records are akd's own, serialised.
CREATE TABLE kt_nodes (
    key    BLOB PRIMARY KEY,
    record BLOB NOT NULL
);

CREATE TABLE kt_values (
    label   BLOB NOT NULL,
    epoch   INTEGER NOT NULL,
    version INTEGER NOT NULL,
    record  BLOB NOT NULL,
    PRIMARY KEY (label, epoch)
);

CREATE INDEX kt_values_version ON kt_values (label, version);

-- Changes waiting for the next epoch: the newest value per number.
CREATE TABLE kt_pending (
    label     BLOB PRIMARY KEY,
    value     BLOB NOT NULL,
    queued_at INTEGER NOT NULL
);

-- Every published epoch's root, signed with the directory key.
CREATE TABLE kt_epochs (
    epoch        INTEGER PRIMARY KEY,
    root         BLOB NOT NULL,
    published_at INTEGER NOT NULL,
    signature    BLOB NOT NULL
);

-- The directory's VRF key and epoch-signing key, made once by the first
-- node to start, so every node (sharing the database) uses the same ones.
CREATE TABLE kt_keys (
    name   TEXT PRIMARY KEY,
    secret BLOB NOT NULL
);
