-- The identity provider: clients, resource servers, signing keys, sessions, authorization
-- codes, refresh tokens and revocations. Secrets and tokens are stored as SHA-256 digests (hex);
-- private keys are sealed (AES-256-GCM) by the caller before they get here.

CREATE TABLE clients (
    client_id     TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    secret_hash   TEXT,
    redirect_uris TEXT NOT NULL,
    logout_uris   TEXT NOT NULL,
    grants        TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    access_ttl    BIGINT NOT NULL,
    id_ttl        BIGINT NOT NULL,
    refresh_ttl   BIGINT NOT NULL,
    id_token_alg  TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE resource_servers (
    identifier TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    public_jwk  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    -- signs from this time on (published before, so caches learn it first)
    activate_at BIGINT NOT NULL,
    -- no longer published after this time; NULL while in use
    retire_at   BIGINT
);

CREATE TABLE sessions (
    sid         TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    auth_time   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE auth_codes (
    code_hash      TEXT PRIMARY KEY,
    client_id      TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    sid            TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    scope          TEXT NOT NULL,
    nonce          TEXT,
    code_challenge TEXT,
    auth_time      BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT
);

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family      TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    sid         TEXT NOT NULL,
    scope       TEXT NOT NULL,
    auth_time   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    -- absolute end of the family, copied from the first token
    expires_at  BIGINT NOT NULL,
    rotated_at  BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_by_sid ON refresh_tokens (sid);

-- What the gateway must reject: a session (kind 'sid') or one access token (kind 'jti'),
-- until expires_at, after which the token could not be used anyway.
CREATE TABLE revocations (
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX revocations_by_created ON revocations (created_at);

CREATE TABLE login_failures (
    username_key TEXT PRIMARY KEY,
    failures     BIGINT NOT NULL,
    locked_until BIGINT NOT NULL
);
