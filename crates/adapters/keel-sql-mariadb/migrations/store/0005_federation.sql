-- Federation (issue 4): an account's identities at external OpenID Connect providers. One
-- external identity signs in one account; an account may link several. Deleted with the user.
CREATE TABLE identity_links (
    provider  VARCHAR(255) NOT NULL,
    subject   VARCHAR(255) NOT NULL,
    user_id   VARCHAR(255) NOT NULL,
    linked_at BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX identity_links_user ON identity_links (user_id);
