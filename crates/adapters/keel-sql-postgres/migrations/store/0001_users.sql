-- Users: the seed's cached-read example. Ids are UUIDv7 made by keel (time-ordered, so the primary
-- key order is creation order and doubles as the listing cursor). Emails are stored lower-cased by
-- the domain, so the plain unique constraint is case-insensitive in effect.
-- `version` grows by one per update; writes apply only over an older version (idempotent replay).
CREATE TABLE users (
    id         UUID        NOT NULL PRIMARY KEY,
    name       TEXT        NOT NULL,
    email      TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    version    BIGINT      NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);
