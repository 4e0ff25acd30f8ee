-- Least privilege (issue 30): a remote command and the merchant's settings keep the merchant and
-- the store their device had when they were sent, so that after the device moves its new
-- merchant (and field agent) reach only what was sent in their period (db/hierarchy.py).
-- Rows from before carry NULL: only the whole fleet's accounts (ops) reach them.
ALTER TABLE device_commands ADD COLUMN merchant_id text, ADD COLUMN store_id text;
ALTER TABLE device_settings ADD COLUMN merchant_id text, ADD COLUMN store_id text;
