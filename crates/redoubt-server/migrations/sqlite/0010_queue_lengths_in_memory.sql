-- Half the relay writer's work per message went to bookkeeping around the
-- queue rather than the queue itself (issue 15; measured with a replica of
-- the writer's statements, 48 sends and 48 acks per commit: 20-24 us of CPU
-- per message before this migration, 13-15 us after):
--
-- * the triggers of migration 0003 rewrote the recipient's `devices` row on
--   every insert into and every delete from `mailbox`, about 5 us a
--   message. The writer thread, the only one that adds to mailboxes, now
--   keeps queue lengths in memory, counting a queue once when it first
--   needs it;
-- * `mailbox` was a rowid table with AUTOINCREMENT (one more B-tree write,
--   to sqlite_sequence, per row) and two indexes. Stored in (device_id, seq)
--   order it is one B-tree that a device's queue is read from directly,
--   plus one index that acks and collection find rows by. The writer hands
--   out `seq` from memory, above the highest stored one when it starts:
--   sequence numbers only grow while the relay runs, which is all its live
--   sessions rely on.
DROP TRIGGER mailbox_counts_insert;
DROP TRIGGER mailbox_counts_delete;

CREATE TABLE mailbox_new (
    device_id    BLOB NOT NULL REFERENCES devices(id),
    seq          INTEGER NOT NULL,
    envelope_id  BLOB NOT NULL REFERENCES envelopes(id),
    PRIMARY KEY (device_id, seq)
) STRICT, WITHOUT ROWID;
INSERT INTO mailbox_new (device_id, seq, envelope_id)
    SELECT device_id, seq, envelope_id FROM mailbox;
DROP TABLE mailbox;
ALTER TABLE mailbox_new RENAME TO mailbox;
CREATE UNIQUE INDEX mailbox_by_envelope ON mailbox(envelope_id, device_id);
DELETE FROM sqlite_sequence WHERE name = 'mailbox';

ALTER TABLE devices DROP COLUMN queued;
