-- MLS messages from an epoch this device has not reached yet: the relay
-- delivered them before the commit that leads there (or withholds it).
-- Kept, not dropped, and processed once the commit arrives; reported as
-- lost only after a bounded wait. The payload is MLS ciphertext.
CREATE TABLE parked (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id   BLOB NOT NULL,
    epoch      INTEGER NOT NULL,
    payload    BLOB NOT NULL,
    parked_at  INTEGER NOT NULL
) STRICT;
