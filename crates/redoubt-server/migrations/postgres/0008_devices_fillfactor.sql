-- Every send and every ack changes a `devices` row (the queue length of
-- migration 0002, and the row lock a group commit takes). Packed pages
-- leave no room for the new row version on the same page, so each change
-- was a non-HOT update that left a dead version for every lookup to walk
-- until vacuum: 19,194 dead versions for 100 live rows in a load run.
-- Room on each page lets PostgreSQL update in place (HOT) and prune dead
-- versions as it reads. Existing pages follow as they are rewritten.
ALTER TABLE devices SET (fillfactor = 50);
