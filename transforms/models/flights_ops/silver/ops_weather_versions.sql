MODEL (
  name silver.ops_weather_versions,
  start @flights_ops_start,
  description 'Every version of every hourly observation, each with the span in which it was current: a wrong reading is current until its correction is recorded.',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column obs_ts
  ),
  grain (origin, obs_ts, valid_from),
  audits (
    not_null(columns := (origin, obs_ts, valid_from)),
    unique_combination_of_columns(columns := (origin, obs_ts, valid_from)),
    versions_follow_each_other
  )
);

WITH recorded AS (
  SELECT
    b.*,
    ROW_NUMBER() OVER (
      PARTITION BY b.origin, b.time_hour, b.updated_at
      ORDER BY b._change_lsn DESC, b._change_seq DESC
    ) AS copy_rank
  FROM bronze.ops_weather AS b
  WHERE
    b.time_hour BETWEEN @start_tstz AND @end_tstz AND b._change_op <> 'delete'
)
SELECT
  origin::TEXT AS origin,
  time_hour::TIMESTAMPTZ AS obs_ts,
  updated_at::TIMESTAMPTZ AS valid_from,
  (LEAD(updated_at) OVER (PARTITION BY origin, time_hour ORDER BY updated_at))::TIMESTAMPTZ AS valid_to,
  temp::DOUBLE PRECISION AS temp,
  humid::DOUBLE PRECISION AS humid,
  CASE WHEN wind_speed <= 150 THEN wind_speed END::DOUBLE PRECISION AS wind_speed,
  precip::DOUBLE PRECISION AS precip,
  pressure::DOUBLE PRECISION AS pressure,
  visib::DOUBLE PRECISION AS visib
FROM recorded
WHERE
  copy_rank = 1;

@create_index(@this_model, origin, obs_ts);
@analyze_table(@this_model);
