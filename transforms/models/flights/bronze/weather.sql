MODEL (
  name bronze.weather,
  start @flights_start,
  description 'Typed hourly weather observations from every loaded raw.weather batch: one row per landed record, all versions kept.',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column time_hour
  ),
  grain (_batch_id, _record_no),
  audits (
    values_cast,
    landed_rows_reach_bronze(source := raw.weather, contract := @raw_weather_contract),
    not_null(columns := (_batch_id, _record_no, _ingested_at, origin, time_hour)),
    unique_combination_of_columns(columns := (_batch_id, _record_no)),
    accepted_range(column := humid, min_v := 0, max_v := 100),
    accepted_range(column := wind_dir, min_v := 0, max_v := 360),
    accepted_range(column := wind_speed, min_v := 0),
    accepted_range(column := precip, min_v := 0),
    accepted_range(column := visib, min_v := 0)
  ),
  column_descriptions (
    time_hour = 'Observation hour in UTC, as reported by the source; the time column.'
  )
);

/* OFFSET 0: see bronze.flights (each value is parsed once for its check, once for its cast). */
WITH checked AS (
  SELECT
    @checked_columns(@raw_weather_contract),
    @provenance_columns()
  FROM raw.weather
  WHERE
    @kept_rows(@raw_weather_contract)
  OFFSET 0
), typed AS (
  SELECT
    @typed_checked_columns(@raw_weather_contract),
    @provenance_columns()
  FROM checked
  OFFSET 0
)
SELECT
  origin,
  year,
  month,
  day,
  hour,
  temp,
  dewp,
  humid,
  wind_dir,
  wind_speed,
  wind_gust,
  precip,
  pressure,
  visib,
  time_hour,
  _cast_failures,
  @provenance_columns()
FROM typed
WHERE
  time_hour BETWEEN @start_tstz AND @end_tstz;

@create_index(@this_model, time_hour);
@create_index(@this_model, _batch_id);
@analyze_table(@this_model);
