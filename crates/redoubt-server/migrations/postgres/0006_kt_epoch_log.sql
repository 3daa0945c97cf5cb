-- Each epoch's signature now also covers the root of the log of every
-- epoch's root up to it (RFC 9162), which lets devices check cheaply that
-- a newer epoch continues the history they saw. Epochs signed before are
-- given theirs, and signed again, when the relay next starts.
ALTER TABLE kt_epochs ADD COLUMN log_root BYTEA;
