-- When a refresh token was rotated, in Unix milliseconds: the grace window after a rotation is
-- compared to the millisecond (whole seconds made it up to a second too long, and a replay in the
-- same second at a grace of 0 was not seen as reuse). Rows rotated before this migration have
-- only rotated_at (seconds), which still counts.
ALTER TABLE refresh_tokens ADD COLUMN rotated_at_ms BIGINT;
