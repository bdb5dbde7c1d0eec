-- The UTC scheduled departure computed from the local New York date and time falls in the
-- UTC hour that the source itself reports (time_hour): the timezone conversion is right.
AUDIT (
  name scheduled_hour_matches_time_hour
);

SELECT
  _batch_id,
  _record_no,
  sched_dep_ts,
  time_hour
FROM @this_model
WHERE
  time_hour IS NOT NULL AND DATE_TRUNC('hour', sched_dep_ts) <> time_hour
