-- The OpenID Connect provider (issue 4): registered relying parties and the authorization codes
-- issued to them, each stored by its hash and deleted when redeemed (a code works once).
CREATE TABLE identity_clients (
    id            VARCHAR(255) NOT NULL PRIMARY KEY,
    name          TEXT NOT NULL,
    -- SHA-256 of the client secret, hex; NULL for a public client.
    secret_hash   TEXT,
    -- JSON array of the exact redirect URIs allowed.
    redirect_uris TEXT NOT NULL,
    created_at    BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE identity_codes (
    code_hash    VARCHAR(255) NOT NULL PRIMARY KEY,
    client_id    TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scope        TEXT NOT NULL,
    nonce        TEXT,
    challenge    TEXT,
    auth_time    BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
