-- A device's local state. Everything sensitive is sealed with the profile
-- key (see seal.rs): identity, MLS state, chat names, message bodies,
-- contacts. Ids and ordering columns stay clear so queries can use them.

CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  BLOB NOT NULL
) STRICT;

-- Single sealed documents: the identity and the MLS state snapshot.
CREATE TABLE documents (
    name   TEXT PRIMARY KEY,
    value  BLOB NOT NULL
) STRICT;

CREATE TABLE chats (
    group_id    BLOB PRIMARY KEY,
    sealed      BLOB NOT NULL,          -- ChatRecord
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id    BLOB NOT NULL,
    message_id  BLOB NOT NULL UNIQUE,
    sealed      BLOB NOT NULL           -- MessageRecord
) STRICT;
CREATE INDEX messages_by_chat ON messages(group_id, seq);

-- Envelopes already processed, so a redelivery is dropped.
CREATE TABLE processed (
    envelope_id   BLOB PRIMARY KEY,
    processed_at  INTEGER NOT NULL
) STRICT;

-- Device keys seen per contact account, for safety numbers and key-change warnings.
CREATE TABLE contact_devices (
    account_id  BLOB NOT NULL,
    device_id   BLOB NOT NULL,
    sealed      BLOB NOT NULL,          -- the device's public signature key and the account's phone
    first_seen  INTEGER NOT NULL,
    PRIMARY KEY (account_id, device_id)
) STRICT;
