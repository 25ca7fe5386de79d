-- Users: the seed's cached-read example. Ids are UUIDv7 text made by keel (time-ordered, so the
-- primary key order is creation order and doubles as the listing cursor); CHAR(36) ascii rather
-- than MariaDB's UUID type so that MySQL runs the same schema. Emails are stored lower-cased by the
-- domain. DATETIME(6) keeps microseconds in UTC (keel always writes UTC).
-- `version` grows by one per update; writes apply only over an older version (idempotent replay).
CREATE TABLE users (
    id         CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    name       VARCHAR(100) NOT NULL,
    email      VARCHAR(254) NOT NULL,
    created_at DATETIME(6)  NOT NULL,
    updated_at DATETIME(6)  NOT NULL,
    version    BIGINT       NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
