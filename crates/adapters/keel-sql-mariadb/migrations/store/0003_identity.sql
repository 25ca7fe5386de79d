-- The built-in IdP's state (issue 4). Its accounts are the users: credentials hang off users.id
-- (as text, like the events tables; deleting a user deletes them in the same transaction).
-- Times are unix seconds. Secrets are stored protected: argon2id hashes, sealed TOTP secrets and
-- signing keys, hashed recovery codes.
CREATE TABLE identity_credentials (
    user_id             VARCHAR(64) NOT NULL PRIMARY KEY,
    password_hash       TEXT,
    password_changed_at BIGINT,
    email_verified_at   BIGINT,
    disabled_at         BIGINT,
    -- JSON arrays: the role names (sorted) and the unused recovery codes' hashes.
    roles               TEXT   NOT NULL,
    totp_secret         TEXT,
    totp_last_step      BIGINT,
    recovery_codes      TEXT   NOT NULL,
    last_login_at       BIGINT,
    -- Writes apply over the version before theirs only (optimistic concurrency).
    version             BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- The roles again, one row each, kept with the credentials: "who holds a role" by index.
CREATE TABLE identity_roles (
    role    VARCHAR(64) NOT NULL,
    user_id VARCHAR(64) NOT NULL,
    PRIMARY KEY (role, user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- Consecutive failed sign-ins per key (client, account, account on a device).
CREATE TABLE identity_failures (
    failure_key VARCHAR(255) NOT NULL PRIMARY KEY,
    count      BIGINT NOT NULL,
    wait_until BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- Refresh-token families: only the current generation's token works (tokens are never stored).
CREATE TABLE identity_refresh_families (
    id         VARCHAR(64)  NOT NULL PRIMARY KEY,
    subject    VARCHAR(64)  NOT NULL,
    client_id  VARCHAR(255) NOT NULL,
    scope      TEXT   NOT NULL,
    generation BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked    BIGINT NOT NULL,
    INDEX identity_refresh_families_subject (subject)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- The token signing keys: one sealed set, versioned so that two processes starting together
-- agree on one.
CREATE TABLE identity_signing_keys (
    id      BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    sealed  TEXT   NOT NULL,
    version BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- The authentication audit log: append-only (the triggers refuse changes and deletions).
CREATE TABLE identity_audit (
    id      BIGINT PRIMARY KEY AUTO_INCREMENT,
    at      BIGINT NOT NULL,
    actor   VARCHAR(64)  NOT NULL,
    action  VARCHAR(64)  NOT NULL,
    subject VARCHAR(64),
    client  VARCHAR(255),
    detail  TEXT   NOT NULL,
    INDEX identity_audit_subject (subject, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TRIGGER identity_audit_no_update BEFORE UPDATE ON identity_audit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the identity audit log is append-only';
CREATE TRIGGER identity_audit_no_delete BEFORE DELETE ON identity_audit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the identity audit log is append-only';
