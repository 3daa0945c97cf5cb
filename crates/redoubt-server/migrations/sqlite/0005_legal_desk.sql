-- The legal desk's state: its audit log (every other piece of state is the
-- replay of it) and the blobs the log commits to by SHA-256 (order
-- documents as received, disclosure packages as released). Nothing else of
-- the relay's is reachable through these tables.
CREATE TABLE legal_audit (
    seq   INTEGER PRIMARY KEY,
    entry TEXT NOT NULL
);

CREATE TABLE legal_blobs (
    sha256 TEXT PRIMARY KEY,
    bytes  BLOB NOT NULL
);
