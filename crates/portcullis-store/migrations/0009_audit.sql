-- The audit log: append-only, hash-chained. Each row's hash covers its fields and the previous
-- row's hash, so editing or deleting a row breaks the chain from there on.

CREATE TABLE audit_events (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    -- who: "cli:<os user>", "user:<id>", "client:<id>", "anonymous", "system"
    actor     TEXT NOT NULL,
    -- from where: an IP address, or "cli", "server"
    source    TEXT NOT NULL,
    -- what it is about: a username, group, client id, policy version... ("" when nothing)
    subject   TEXT NOT NULL,
    -- JSON object: before/after of documents, reasons, counts
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_events_by_at ON audit_events (at);
CREATE INDEX audit_events_by_subject ON audit_events (subject);
