MODEL (
  name silver.user_days,
  start @events_start,
  description 'Each user''s activity per UTC day: events, purchases, amount spent, first and last event time. Gold''s windows start and end at UTC midnight, so whole days add up to them exactly.',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column day_ts
  ),
  grain (user_id, day_ts),
  audits (
    not_null(columns := (user_id, day_ts, events, purchases, amount, first_ts, last_ts)),
    unique_combination_of_columns(columns := (user_id, day_ts))
  ),
  column_descriptions (
    day_ts = 'The UTC day (its midnight, UTC); the time column.'
  )
);

SELECT
  user_id::TEXT AS user_id,
  TIMEZONE('UTC', DATE_TRUNC('day', TIMEZONE('UTC', ts)))::TIMESTAMPTZ AS day_ts,
  COUNT(*)::INT AS events,
  (COUNT(*) FILTER(WHERE event_type = 'purchase'))::INT AS purchases,
  COALESCE(SUM(amount), 0)::DOUBLE PRECISION AS amount,
  MIN(ts)::TIMESTAMPTZ AS first_ts,
  MAX(ts)::TIMESTAMPTZ AS last_ts
FROM silver.events
WHERE
  ts BETWEEN @start_tstz AND @end_tstz
GROUP BY
  user_id,
  TIMEZONE('UTC', DATE_TRUNC('day', TIMEZONE('UTC', ts)));

@create_index(@this_model, day_ts);
@analyze_table(@this_model);
