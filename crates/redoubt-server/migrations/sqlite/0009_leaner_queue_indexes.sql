-- Fewer B-trees to change per message on the hot path (issue 15). Every
-- index is one more seek and one more dirty page for each send and each
-- ack, and the writer's profile was dominated by them.
--
-- `mailbox` had four: its rows, UNIQUE (device_id, envelope_id) for acks,
-- (device_id, seq) for reading a queue in order, and (envelope_id) for
-- collecting an envelope no mailbox holds. One UNIQUE (envelope_id,
-- device_id) index serves both acks and collection, so the table now has
-- three. SQLite cannot drop an inline UNIQUE constraint, so the table is
-- rebuilt, keeping every row, its `seq` and the AUTOINCREMENT high-water
-- mark (sequence numbers never go back: live sessions rely on it).
DROP TRIGGER mailbox_counts_insert;
DROP TRIGGER mailbox_counts_delete;

CREATE TABLE mailbox_new (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id    BLOB NOT NULL REFERENCES devices(id),
    envelope_id  BLOB NOT NULL REFERENCES envelopes(id)
) STRICT;
INSERT INTO mailbox_new (seq, device_id, envelope_id)
    SELECT seq, device_id, envelope_id FROM mailbox ORDER BY seq;
DELETE FROM sqlite_sequence WHERE name = 'mailbox_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'mailbox_new', seq FROM sqlite_sequence WHERE name = 'mailbox';
DROP TABLE mailbox;
ALTER TABLE mailbox_new RENAME TO mailbox;
CREATE UNIQUE INDEX mailbox_by_envelope ON mailbox(envelope_id, device_id);
CREATE INDEX mailbox_by_device ON mailbox(device_id, seq);

-- The queue lengths of migration 0003, unchanged.
CREATE TRIGGER mailbox_counts_insert AFTER INSERT ON mailbox
BEGIN
    UPDATE devices SET queued = queued + 1 WHERE id = NEW.device_id;
END;

CREATE TRIGGER mailbox_counts_delete AFTER DELETE ON mailbox
BEGIN
    UPDATE devices SET queued = queued - 1 WHERE id = OLD.device_id;
END;

-- A receipt is looked up only by id: stored in that order (WITHOUT ROWID),
-- it is one B-tree instead of a table and its primary-key index.
CREATE TABLE envelope_receipts_new (
    id            BLOB PRIMARY KEY,
    payload_hash  BLOB NOT NULL,
    received_at   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO envelope_receipts_new (id, payload_hash, received_at)
    SELECT id, payload_hash, received_at FROM envelope_receipts;
DROP TABLE envelope_receipts;
ALTER TABLE envelope_receipts_new RENAME TO envelope_receipts;
CREATE INDEX envelope_receipts_by_time ON envelope_receipts(received_at);
