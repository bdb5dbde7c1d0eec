-- Silver row-count sanity: every natural flight key that bronze holds in the processed
-- intervals appears in silver (exactly once is the unique audit's job), and silver holds no
-- key that bronze does not.
AUDIT (
  name flights_keep_one_version_per_key
);

WITH bronze_keys AS (
  SELECT DISTINCT
    flight_date,
    carrier,
    flight,
    origin,
    sched_dep_time
  FROM bronze.flights
  WHERE
    sched_dep_ts BETWEEN @start_tstz AND @end_tstz
)
SELECT
  COALESCE(b.flight_date, s.flight_date) AS flight_date,
  COALESCE(b.carrier, s.carrier) AS carrier,
  COALESCE(b.flight, s.flight) AS flight,
  COALESCE(b.origin, s.origin) AS origin,
  COALESCE(b.sched_dep_time, s.sched_dep_time) AS sched_dep_time,
  b.flight_date IS NULL AS only_in_silver
FROM bronze_keys AS b
FULL OUTER JOIN @this_model AS s
  ON s.flight_date = b.flight_date
  AND s.carrier = b.carrier
  AND s.flight = b.flight
  AND s.origin = b.origin
  AND s.sched_dep_time = b.sched_dep_time
WHERE
  b.flight_date IS NULL OR s.flight_date IS NULL
