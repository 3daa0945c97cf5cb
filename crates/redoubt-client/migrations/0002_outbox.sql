-- Several processes may open one profile (`redoubt chat` in one terminal,
-- `redoubt send` in another). Each operation holds profile.lock and bumps
-- this counter when it writes, so a process knows when its in-memory MLS
-- state is stale and must be reloaded before it is used.
CREATE TABLE state_generation (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    value  INTEGER NOT NULL
) STRICT;
INSERT INTO state_generation (id, value) VALUES (1, 0);

-- Messages encrypted but not yet accepted by the relay (it was unreachable,
-- or the process stopped in between). Each keeps the envelope id it was
-- first sent under, so a retry is recognised by the relay and delivered
-- exactly once. The payload is MLS ciphertext; who it goes to is sealed.
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    envelope_id  BLOB NOT NULL UNIQUE,
    message_id   BLOB NOT NULL,
    group_id     BLOB NOT NULL,
    payload      BLOB NOT NULL,
    sealed       BLOB NOT NULL,          -- the recipient devices
    created_at   INTEGER NOT NULL
) STRICT;
