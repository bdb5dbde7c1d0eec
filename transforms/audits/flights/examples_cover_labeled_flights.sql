-- Gold row-count sanity: the processed intervals hold exactly one example for every silver
-- flight that departed and has a known arrival delay, and nothing else.
AUDIT (
  name examples_cover_labeled_flights
);

WITH labeled AS (
  SELECT
    flight_id
  FROM silver.flights
  WHERE
    sched_dep_ts BETWEEN @start_tstz AND @end_tstz
    AND NOT cancelled
    AND NOT arr_delay IS NULL
)
SELECT
  COALESCE(l.flight_id, g.example_id) AS example_id,
  l.flight_id IS NULL AS only_in_gold
FROM labeled AS l
FULL OUTER JOIN @this_model AS g
  ON g.example_id = l.flight_id
WHERE
  l.flight_id IS NULL OR g.example_id IS NULL
