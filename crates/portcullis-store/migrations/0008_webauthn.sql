-- Passkeys (WebAuthn): each credential with its public key and signature counter (the
-- webauthn-rs Passkey as JSON), and the ceremonies in progress (single use, short-lived).

CREATE TABLE webauthn_credentials (
    -- base64url of the credential id
    cred_id      TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    passkey      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX webauthn_credentials_by_user ON webauthn_credentials (user_id);

CREATE TABLE webauthn_ceremonies (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    user_id    TEXT,
    state      TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
