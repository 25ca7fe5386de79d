-- Users: the seed's cached-read example. Ids are UUIDv7 text made by keel (time-ordered, so the
-- primary key order is creation order and doubles as the listing cursor). Emails are stored
-- lower-cased by the domain, so the plain UNIQUE constraint is case-insensitive in effect.
-- Timestamps are RFC 3339 text with microseconds, the precision every backend keeps.
-- `version` grows by one per update; writes apply only over an older version (idempotent replay).
CREATE TABLE users (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    email      TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);
