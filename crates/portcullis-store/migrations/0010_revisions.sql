-- A revision per user and client, raised by every change, so the admin API can give each an
-- ETag and refuse (412) a write based on a copy someone else has changed since.

ALTER TABLE users ADD COLUMN revision BIGINT NOT NULL DEFAULT 1;
ALTER TABLE clients ADD COLUMN revision BIGINT NOT NULL DEFAULT 1;
CREATE INDEX sessions_by_created ON sessions (created_at);
