MODEL (
  name silver.weather,
  start @flights_start,
  description 'Hourly weather dimension: one row per (origin, obs_ts), the latest ingested version. Physically implausible readings become NULL (wind speed over 150 mph: the source has one reading of 1048 mph).',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column obs_ts
  ),
  grain (origin, obs_ts),
  audits (
    not_null(columns := (origin, obs_ts)),
    unique_combination_of_columns(columns := (origin, obs_ts)),
    accepted_range(column := wind_speed, min_v := 0, max_v := 150),
    accepted_range(column := humid, min_v := 0, max_v := 100)
  ),
  column_descriptions (
    obs_ts = 'Observation time in UTC (the source time_hour); the time column and the as-of key.'
  )
);

WITH versions AS (
  SELECT
    b.*,
    @newest_version_rank(b.origin, b.time_hour) AS version_rank
  FROM bronze.weather AS b
  WHERE
    b.time_hour BETWEEN @start_tstz AND @end_tstz
)
SELECT
  origin,
  time_hour AS obs_ts,
  temp,
  dewp,
  humid,
  wind_dir,
  CASE WHEN wind_speed <= 150 THEN wind_speed END AS wind_speed,
  CASE WHEN wind_gust <= 250 THEN wind_gust END AS wind_gust,
  precip,
  pressure,
  visib,
  _batch_id,
  _record_no,
  _ingested_at
FROM versions
WHERE
  version_rank = 1;

@create_index(@this_model, origin, obs_ts);
@analyze_table(@this_model);
