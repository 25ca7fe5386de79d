-- The embedded message queue. One row per (group, message): a publish copies the message to every
-- group bound to a matching pattern, in one transaction, so fan-out is as durable as the publish.
-- Times are unix microseconds (INTEGER) so that both engines compare them the same way.
CREATE TABLE queue_groups (
    grp   TEXT    NOT NULL PRIMARY KEY,
    -- Messages stored for the group, kept in the publish and ack transactions: the bound that
    -- turns a flood into backpressure is checked without counting rows.
    depth INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE queue_bindings (
    grp     TEXT NOT NULL REFERENCES queue_groups (grp),
    pattern TEXT NOT NULL,
    PRIMARY KEY (grp, pattern)
);
CREATE TABLE queue_messages (
    -- Publish order; ordering per key and "oldest first" both follow it.
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    grp          TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    topic        TEXT    NOT NULL,
    msg_key      TEXT,
    headers      TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    published_at INTEGER NOT NULL,
    expires_at   INTEGER,
    -- Not delivered before this time (a retry's backoff).
    available_at INTEGER NOT NULL,
    -- The lease of the worker holding it; the message is delivered again once it has passed.
    lease        TEXT,
    lease_until  INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    -- A producer that retries a publish stores the message once per group.
    UNIQUE (grp, id)
);
CREATE INDEX queue_messages_ready ON queue_messages (grp, available_at);
CREATE INDEX queue_messages_keys ON queue_messages (grp, msg_key, seq);
