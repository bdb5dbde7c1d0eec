-- Leakage gate for the as-of join: the weather features come from an observation made at or
-- before the anchor.
AUDIT (
  name weather_observed_by_anchor
);

SELECT
  example_id,
  anchor_ts,
  wx_obs_ts
FROM @this_model
WHERE
  wx_obs_ts > anchor_ts
