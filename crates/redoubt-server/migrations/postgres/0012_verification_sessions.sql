-- Pending codes belong to the session that asked for them, not to the
-- number (issue 16, item 4): strangers who asked for codes to someone
-- else's number spent that person's wrong-guess attempts and replaced the
-- code they were waiting for. Each request now has a session, whose secret
-- only the requester holds, its own code and its own attempts. Pending
-- codes live ten minutes; those of before go.
DROP TABLE verification_codes;
CREATE TABLE verification_codes (
    session_hash  BYTEA PRIMARY KEY,
    phone_key     BYTEA NOT NULL,
    code_hash     BYTEA NOT NULL,
    expires_at    BIGINT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX verification_codes_by_number ON verification_codes(phone_key);
CREATE INDEX verification_codes_by_expiry ON verification_codes(expires_at);
