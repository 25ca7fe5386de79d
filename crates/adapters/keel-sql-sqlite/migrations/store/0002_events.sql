-- The transactional outbox, jobs and the subscribers' effects (issue 3). Ids are text, times are
-- unix microseconds, the same on every engine.
-- Outbox: a user write inserts its event here in the same transaction; the relay publishes rows in
-- `seq` order and deletes them.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL,
    topic      TEXT    NOT NULL,
    msg_key    TEXT,
    headers    TEXT    NOT NULL,
    body       BLOB    NOT NULL,
    expires_at INTEGER
);
-- One relay publishes at a time (order on the broker follows the outbox): a lease row.
CREATE TABLE outbox_relay (
    name        TEXT    NOT NULL PRIMARY KEY,
    holder      TEXT,
    lease_until INTEGER NOT NULL
);
INSERT INTO outbox_relay (name, holder, lease_until) VALUES ('relay', NULL, 0);
CREATE TABLE jobs (
    id         TEXT    NOT NULL PRIMARY KEY,
    kind       TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    result     TEXT,
    error      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
-- The audit subscriber's effect; the message id is the primary key, so a redelivery adds nothing.
CREATE TABLE user_audit (
    message_id  TEXT    NOT NULL PRIMARY KEY,
    topic       TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    version     INTEGER,
    occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX user_audit_user ON user_audit (user_id, occurred_at);
-- The notifier's effect (the notification it sent), once per message id.
CREATE TABLE notifications (
    message_id TEXT    NOT NULL PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    recipient  TEXT    NOT NULL,
    text       TEXT    NOT NULL,
    sent_at    INTEGER NOT NULL
);
CREATE INDEX notifications_user ON notifications (user_id);
