-- Quota usage per route quota, client and period (the gateway's usage plans), counted by every
-- node: each adds what it served and reads back the total.

CREATE TABLE quota_usage (
    quota      TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    period     TEXT NOT NULL,
    used       BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (quota, client_id, period)
);
CREATE INDEX quota_usage_by_updated ON quota_usage (updated_at);
