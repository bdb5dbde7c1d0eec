-- Actual departures and arrivals happen between 2 hours before and 2 days after the scheduled
-- departure. The transform flow relies on this bound: a change to flights of day D can only
-- move the windowed gold features of days D to D+4, which it restates.
AUDIT (
  name events_near_schedule
);

SELECT
  flight_id,
  sched_dep_ts,
  dep_ts,
  arr_ts
FROM @this_model
WHERE
  dep_ts < sched_dep_ts - INTERVAL '2 hours'
  OR dep_ts >= sched_dep_ts + INTERVAL '2 days'
  OR arr_ts < sched_dep_ts - INTERVAL '2 hours'
  OR arr_ts >= sched_dep_ts + INTERVAL '2 days'
