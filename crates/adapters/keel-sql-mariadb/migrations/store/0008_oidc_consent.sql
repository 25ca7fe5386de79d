-- OpenID Connect conformance (issue 15). Each person's consent per client: the scopes they
-- allowed it (space-separated, the union of what they allowed so far), so that a request within
-- them asks nothing and `prompt=none` can answer with a code. Deleted with the user, and by the
-- person from /account/consents.
CREATE TABLE identity_consents (
    user_id    VARCHAR(255) NOT NULL,
    client_id  VARCHAR(255) NOT NULL,
    scope      TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- How the person signed in when the code was issued (RFC 8176 `amr` values, space-separated),
-- for the ID token's `amr`. Codes issued before this migration were password sign-ins.
ALTER TABLE identity_codes ADD COLUMN amr VARCHAR(255) NOT NULL DEFAULT 'pwd';
-- The same for refresh-token families, and when the person signed in, so that a refresh repeats
-- the sign-in's \`amr\` and \`auth_time\` instead of claiming a password sign-in now. 0: unknown
-- (families from before this migration; their ID tokens carry no \`auth_time\`).
ALTER TABLE identity_refresh_families ADD COLUMN amr VARCHAR(255) NOT NULL DEFAULT 'pwd';
ALTER TABLE identity_refresh_families ADD COLUMN auth_time BIGINT NOT NULL DEFAULT 0;
