-- The built-in IdP's state (issue 4). Its accounts are the users: credentials hang off users.id
-- (as text, like the events tables; deleting a user deletes them in the same transaction).
-- Times are unix seconds. Secrets are stored protected: argon2id hashes, sealed TOTP secrets and
-- signing keys, hashed recovery codes.
CREATE TABLE identity_credentials (
    user_id             TEXT    NOT NULL PRIMARY KEY,
    password_hash       TEXT,
    password_changed_at INTEGER,
    email_verified_at   INTEGER,
    disabled_at         INTEGER,
    -- JSON arrays: the role names (sorted) and the unused recovery codes' hashes.
    roles               TEXT    NOT NULL,
    totp_secret         TEXT,
    totp_last_step      INTEGER,
    recovery_codes      TEXT    NOT NULL,
    last_login_at       INTEGER,
    -- Writes apply over the version before theirs only (optimistic concurrency).
    version             INTEGER NOT NULL
);
-- The roles again, one row each, kept with the credentials: "who holds a role" by index.
CREATE TABLE identity_roles (
    role    TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (role, user_id)
);
-- Consecutive failed sign-ins per key (client, account, account on a device).
CREATE TABLE identity_failures (
    failure_key TEXT   NOT NULL PRIMARY KEY,
    count      INTEGER NOT NULL,
    wait_until INTEGER NOT NULL
);
-- Refresh-token families: only the current generation's token works (tokens are never stored).
CREATE TABLE identity_refresh_families (
    id         TEXT    NOT NULL PRIMARY KEY,
    subject    TEXT    NOT NULL,
    client_id  TEXT    NOT NULL,
    scope      TEXT   NOT NULL,
    generation INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked    INTEGER NOT NULL
);
CREATE INDEX identity_refresh_families_subject ON identity_refresh_families (subject);
-- The token signing keys: one sealed set, versioned so that two processes starting together
-- agree on one.
CREATE TABLE identity_signing_keys (
    id      INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    sealed  TEXT    NOT NULL,
    version INTEGER NOT NULL
);
-- The authentication audit log: append-only (the triggers refuse changes and deletions).
CREATE TABLE identity_audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    subject TEXT,
    client  TEXT,
    detail  TEXT    NOT NULL
);
CREATE INDEX identity_audit_subject ON identity_audit (subject, id);
CREATE TRIGGER identity_audit_no_update BEFORE UPDATE ON identity_audit
BEGIN
    SELECT RAISE(ABORT, 'the identity audit log is append-only');
END;
CREATE TRIGGER identity_audit_no_delete BEFORE DELETE ON identity_audit
BEGIN
    SELECT RAISE(ABORT, 'the identity audit log is append-only');
END;
