-- Each device's queue length, kept by triggers on every insert into and
-- delete from `mailbox`, whatever the path (see the SQLite migration of the
-- same name: counting the queue on every send made filling an offline
-- device's mailbox quadratic).
ALTER TABLE devices ADD COLUMN queued BIGINT NOT NULL DEFAULT 0;
UPDATE devices SET queued = (SELECT COUNT(*) FROM mailbox WHERE mailbox.device_id = devices.id);

CREATE FUNCTION mailbox_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE devices SET queued = queued + 1 WHERE id = NEW.device_id;
    ELSE
        UPDATE devices SET queued = queued - 1 WHERE id = OLD.device_id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER mailbox_counts AFTER INSERT OR DELETE ON mailbox
FOR EACH ROW EXECUTE FUNCTION mailbox_counts();
