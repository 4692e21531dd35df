-- Federated sign-in: an identity at an upstream provider (its id in the configuration and the
-- provider's subject) linked to one local user. A user may have several; an identity belongs to
-- one user. Deleting the user forgets its identities.

CREATE TABLE federated_identities (
    provider     TEXT NOT NULL,
    subject      TEXT NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- the address the provider last asserted, shown on the account page
    email        TEXT,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX federated_identities_by_user ON federated_identities (user_id);
