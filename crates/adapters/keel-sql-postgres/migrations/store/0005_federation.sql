-- Federation (issue 4): an account's identities at external OpenID Connect providers. One
-- external identity signs in one account; an account may link several. Deleted with the user.
CREATE TABLE identity_links (
    provider  TEXT NOT NULL,
    subject   TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    linked_at BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX identity_links_user ON identity_links (user_id);
