-- Device keys were remembered per contact account to warn of key changes.
-- Account identity keys replaced that: contacts are now pinned by phone
-- number with their identity key and signed device list (the sealed
-- "contacts" document), so the old table goes.
DROP TABLE contact_devices;
