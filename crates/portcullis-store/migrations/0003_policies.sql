-- Versioned policy documents: every change is a new row; the highest version is in force.
CREATE TABLE policy_versions (
    version    BIGINT PRIMARY KEY,
    document   TEXT NOT NULL,
    comment    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
