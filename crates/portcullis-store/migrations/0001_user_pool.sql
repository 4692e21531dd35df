-- Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- Booleans are BIGINT 0/1 and times are Unix seconds so both backends read them the same way.

CREATE TABLE instance_settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL,
    -- lower-cased username: uniqueness is case-insensitive ("Admin" and "admin" are one user)
    username_key   TEXT NOT NULL UNIQUE,
    email          TEXT,
    email_verified BIGINT NOT NULL DEFAULT 0,
    attributes     TEXT NOT NULL DEFAULT '{}',
    status         TEXT NOT NULL,
    password_hash  TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE user_groups (
    name_key    TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    precedence  BIGINT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE group_members (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    group_key  TEXT NOT NULL REFERENCES user_groups (name_key) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, group_key)
);

CREATE INDEX group_members_by_group ON group_members (group_key);
