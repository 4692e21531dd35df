-- Automatic certificates (ACME, RFC 8555), kept in the store so every node serves the same ones.
-- The account per directory URL and each certificate's private key are sealed with the instance
-- secret by the caller.
CREATE TABLE acme_accounts (
    directory TEXT PRIMARY KEY,
    sealed_credentials TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- One certificate per set of names (sorted, comma-separated).
CREATE TABLE acme_certificates (
    names TEXT PRIMARY KEY,
    chain_pem TEXT NOT NULL,
    sealed_key TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Challenge answers in progress, so whichever node the CA reaches can answer: HTTP-01 by token
-- (the key authorization), TLS-ALPN-01 by name (the SHA-256 of the key authorization).
CREATE TABLE acme_challenges (
    kind TEXT NOT NULL,
    lookup TEXT NOT NULL,
    answer TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (kind, lookup)
);

-- Who may order now: one node at a time, for a limited time.
CREATE TABLE acme_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
