-- A flight with a known arrival delay has an actual arrival time in UTC: its destination has a
-- known time zone (airports source or the curated silver.airport_timezones seed).
AUDIT (
  name arrivals_placed_in_time
);

SELECT
  flight_id,
  dest,
  arr_delay
FROM @this_model
WHERE
  NOT arr_delay IS NULL AND arr_ts IS NULL
