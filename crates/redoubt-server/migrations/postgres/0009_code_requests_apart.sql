-- The rate limits on code requests kept, in one row, a hash of the phone
-- number and the address that asked for it. The hash was unkeyed, so
-- 100,000 numbers were reversed in 0.09 s, each beside its client's IP
-- (issue 16, item 10). Each limit needs only its own key and the time:
-- the per-number limit a keyed hash (HMAC under a secret derived from the
-- service key, so the database alone gives nothing away), the per-address
-- limit the address. They now live in two tables, and no row ties a number
-- to an address.
CREATE TABLE code_requests_per_number (
    phone_key     BYTEA NOT NULL,
    requested_at  BIGINT NOT NULL
);
CREATE INDEX code_requests_per_number_key ON code_requests_per_number(phone_key, requested_at);

CREATE TABLE code_requests_per_ip (
    ip            TEXT NOT NULL,
    requested_at  BIGINT NOT NULL
);
CREATE INDEX code_requests_per_ip_key ON code_requests_per_ip(ip, requested_at);

-- The per-address windows carry over. The per-number ones, and pending
-- codes, were keyed by the unkeyed hash: they go (a code lives ten
-- minutes; a window at most an hour).
INSERT INTO code_requests_per_ip (ip, requested_at) SELECT ip, requested_at FROM code_requests;
DROP TABLE code_requests;
DELETE FROM verification_codes;
