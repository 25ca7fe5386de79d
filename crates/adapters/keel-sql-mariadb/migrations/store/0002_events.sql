-- The transactional outbox, jobs and the subscribers' effects (issue 3). Ids are text, times are
-- unix microseconds, the same on every engine.
-- Outbox: a user write inserts its event here in the same transaction; the relay publishes rows in
-- `seq` order and deletes them.
CREATE TABLE outbox (
    seq        BIGINT PRIMARY KEY AUTO_INCREMENT,
    id         TEXT    NOT NULL,
    topic      TEXT    NOT NULL,
    msg_key    TEXT,
    headers    TEXT    NOT NULL,
    body       LONGBLOB    NOT NULL,
    expires_at BIGINT
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- One relay publishes at a time (order on the broker follows the outbox): a lease row.
CREATE TABLE outbox_relay (
    name        VARCHAR(64)    NOT NULL PRIMARY KEY,
    holder      TEXT,
    lease_until BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
INSERT INTO outbox_relay (name, holder, lease_until) VALUES ('relay', NULL, 0);
CREATE TABLE jobs (
    id         VARCHAR(64)    NOT NULL PRIMARY KEY,
    kind       TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    result     TEXT,
    error      TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- The audit subscriber's effect; the message id is the primary key, so a redelivery adds nothing.
CREATE TABLE user_audit (
    message_id  VARCHAR(64)    NOT NULL PRIMARY KEY,
    topic       TEXT    NOT NULL,
    user_id     VARCHAR(64)    NOT NULL,
    version     BIGINT,
    occurred_at BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX user_audit_user ON user_audit (user_id, occurred_at);
-- The notifier's effect (the notification it sent), once per message id.
CREATE TABLE notifications (
    message_id VARCHAR(64)    NOT NULL PRIMARY KEY,
    user_id    VARCHAR(64)    NOT NULL,
    recipient  TEXT    NOT NULL,
    text       TEXT    NOT NULL,
    sent_at    BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX notifications_user ON notifications (user_id);
