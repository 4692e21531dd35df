-- Self-service accounts: the mail outbox, single-use account codes (e-mail verification,
-- password reset, invitations), e-mail lookup and forced password changes.

-- Every message to send. A worker on any node claims due rows with a lease, sends, and marks
-- them sent, or schedules a retry; a row is never deleted before it is sent or given up.
CREATE TABLE mail_outbox (
    id              TEXT PRIMARY KEY,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    text_body       TEXT NOT NULL,
    html_body       TEXT NOT NULL,
    -- the template it came from (verify, reset, ...), for metrics and logs
    kind            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT NOT NULL DEFAULT 0,
    sent_at         BIGINT,
    failed_at       BIGINT,
    last_error      TEXT
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at);

-- Codes mailed to a user, stored as SHA-256 digests (hex). purpose: verify | reset | invite.
CREATE TABLE account_codes (
    code_hash  TEXT PRIMARY KEY,
    purpose    TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- the address it was sent to (a verification proves this address, not a later one)
    email      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX account_codes_by_user ON account_codes (user_id, purpose);

ALTER TABLE users ADD COLUMN email_key TEXT;
UPDATE users SET email_key = lower(email) WHERE email IS NOT NULL;
CREATE INDEX users_by_email ON users (email_key);

-- 1: the password was set by an operator and must be changed at the next sign-in.
ALTER TABLE users ADD COLUMN password_change_required BIGINT NOT NULL DEFAULT 0;

-- 1: imported (from Cognito) without a password hash: the next sign-in checks the password
-- with the configured legacy verifier and stores its Argon2id hash.
ALTER TABLE users ADD COLUMN legacy_password BIGINT NOT NULL DEFAULT 0;
