-- Leakage gate: every feature comes from events strictly before the anchor, which is a Monday
-- 00:00 UTC.
AUDIT (
  name features_known_at_the_anchor
);

SELECT
  example_id,
  anchor_ts,
  last_event_ts
FROM @this_model
WHERE
  last_event_ts >= anchor_ts
  OR EXTRACT(ISODOW FROM TIMEZONE('UTC', anchor_ts)) <> 1
  OR TIMEZONE('UTC', anchor_ts) <> DATE_TRUNC('day', TIMEZONE('UTC', anchor_ts))
  OR days_since_last_event > tenure_days
