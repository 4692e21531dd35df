-- Second factors: a TOTP secret per user (sealed by the caller with the instance secret), its
-- last accepted time step (a code is accepted once), and single-use recovery codes (SHA-256).
-- Sessions remember how the user signed in (amr, space-separated: pwd otp mfa ...).

CREATE TABLE mfa_totp (
    user_id    TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    sealed     TEXT NOT NULL,
    -- 0 while enrolment waits for the first code
    confirmed  BIGINT NOT NULL DEFAULT 0,
    last_step  BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE mfa_recovery_codes (
    code_hash  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX mfa_recovery_codes_by_user ON mfa_recovery_codes (user_id);

ALTER TABLE sessions ADD COLUMN amr TEXT NOT NULL DEFAULT 'pwd';
