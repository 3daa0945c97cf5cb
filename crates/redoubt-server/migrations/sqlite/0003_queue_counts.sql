-- Each device's queue length, kept by triggers on every insert into and
-- delete from `mailbox`, whatever the path (ack, expiry, revocation, market
-- purge). The mailbox cap is checked against it on every send; counting the
-- queue instead made a send cost time in proportion to the queue, so that
-- filling an offline device's mailbox took quadratic time.
ALTER TABLE devices ADD COLUMN queued INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET queued = (SELECT COUNT(*) FROM mailbox WHERE mailbox.device_id = devices.id);

CREATE TRIGGER mailbox_counts_insert AFTER INSERT ON mailbox
BEGIN
    UPDATE devices SET queued = queued + 1 WHERE id = NEW.device_id;
END;

CREATE TRIGGER mailbox_counts_delete AFTER DELETE ON mailbox
BEGIN
    UPDATE devices SET queued = queued - 1 WHERE id = OLD.device_id;
END;
