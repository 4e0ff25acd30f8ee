-- Notes on a task by the people working it (the agent on site, ops), in order (issue 26).
CREATE TABLE task_notes (
    note_id  bigserial PRIMARY KEY,
    task_id  bigint NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    at       timestamptz NOT NULL,
    login    text NOT NULL,
    text     text NOT NULL
);
CREATE INDEX task_notes_task ON task_notes (task_id, note_id);
