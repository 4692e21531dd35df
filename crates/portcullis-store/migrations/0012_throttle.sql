-- Attempts per client network (sign-in, account actions), counted for the whole cluster: a
-- GCRA bucket per (scope, network) holding its theoretical arrival time in milliseconds. A row
-- whose time has passed is a full budget, the same as no row, and is pruned.

CREATE TABLE attempt_throttle (
    scope   TEXT NOT NULL,
    network TEXT NOT NULL,
    tat_ms  BIGINT NOT NULL,
    PRIMARY KEY (scope, network)
);
CREATE INDEX attempt_throttle_by_tat ON attempt_throttle (tat_ms);
