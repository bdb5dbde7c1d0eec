AUDIT (
  name anchored_two_hours_before_departure
);

SELECT
  example_id,
  anchor_ts,
  sched_dep_ts
FROM @this_model
WHERE
  anchor_ts <> sched_dep_ts - INTERVAL '2 hours'
