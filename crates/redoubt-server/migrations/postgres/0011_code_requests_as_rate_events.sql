-- The limits on code requests (per number, per address) are now rate
-- events like every other limit (migration 0012 here, 0010 on PostgreSQL),
-- keyed by a keyed hash, counted in the transaction that stores the code
-- together with the SMS budgets, all or nothing. Their own tables, one of
-- which kept client addresses in the clear, go. Their windows (an hour at
-- most) start afresh.
DROP TABLE code_requests_per_number;
DROP TABLE code_requests_per_ip;
