-- The next epoch of each group a commit was accepted for, keyed by the
-- SHA-256 of the MLS group id. The relay accepts one commit per group and
-- epoch, so two members changing a group at the same moment do not split
-- it: the later commit is refused and made again on the new state. A row
-- quiet for longer than the message lifetime goes (no commit made against
-- its epoch could still be waiting to be sent and delivered).
CREATE TABLE commit_positions (
    group_hash  BLOB PRIMARY KEY,
    next_epoch  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX commit_positions_by_time ON commit_positions(updated_at);
