-- Rate limits on contact lookups and key-package claims (issue 16, items 2
-- and 3), shared by every node on one database. A key is a keyed hash of
-- what is limited (an account, a client address, a caller and the device
-- it claims from), so the table names no account and no address.
CREATE TABLE rate_events (
    key  BLOB NOT NULL,
    at   INTEGER NOT NULL
) STRICT;
CREATE INDEX rate_events_by_key ON rate_events(key, at);
CREATE INDEX rate_events_by_time ON rate_events(at);
