-- Tasks that reach people in time (issue 26): each has a due time from its kind's SLA, is
-- escalated once when the due time passes open, and may be cancelled with a reason; a false
-- alarm keeps the same finding of the same device from being raised again for a while.
ALTER TABLE tasks
    ADD COLUMN due_at        timestamptz,
    ADD COLUMN escalated_at  timestamptz,
    ADD COLUMN cancel_reason text,
    ADD COLUMN cancelled_by  text;
UPDATE tasks SET due_at = opened_at + interval '1 day' WHERE due_at IS NULL;
CREATE INDEX tasks_due ON tasks (due_at) WHERE status <> 'closed' AND escalated_at IS NULL;

CREATE TABLE finding_suppressions (
    device_id  text NOT NULL,
    kind       text NOT NULL,
    until      timestamptz NOT NULL,
    reason     text NOT NULL,
    by_login   text NOT NULL,
    task_id    bigint,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, kind)
);
