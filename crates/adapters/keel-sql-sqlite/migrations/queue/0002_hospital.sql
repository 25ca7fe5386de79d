-- The error hospital. Attempts are recorded as they fail, keyed by group and message id, so an
-- admission carries every attempt's error whichever worker process made it.
CREATE TABLE hospital_attempts (
    grp        TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    attempt    INTEGER NOT NULL,
    error      TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (grp, message_id, attempt)
);
-- One row per admitted message; (grp, message_id) is unique so a redelivery after a crash between
-- admission and ack is admitted once. Rows are never evicted to make room.
CREATE TABLE hospital_patients (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    grp          TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    topic        TEXT    NOT NULL,
    msg_key      TEXT,
    headers      TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    published_at INTEGER NOT NULL,
    admitted_at  INTEGER NOT NULL,
    reason       TEXT    NOT NULL,
    trace_id     TEXT,
    UNIQUE (grp, message_id)
);
