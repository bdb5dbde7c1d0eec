MODEL (
  name bronze.ops_weather,
  start @flights_ops_start,
  description 'Typed changes of ops.weather from every loaded raw.ops_weather batch: inserted observations and their corrections.',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column time_hour
  ),
  grain (_batch_id, _record_no),
  audits (
    values_cast,
    landed_rows_reach_bronze(source := raw.ops_weather, contract := @raw_ops_weather_contract),
    not_null(columns := (_batch_id, _record_no, origin, time_hour, updated_at, _change_op)),
    unique_combination_of_columns(columns := (_batch_id, _record_no))
  )
);

SELECT
  @typed_columns(@raw_ops_weather_contract),
  @provenance_columns()
FROM raw.ops_weather
WHERE
  @kept_rows(@raw_ops_weather_contract)
  AND time_hour::TIMESTAMPTZ BETWEEN @start_tstz AND @end_tstz;

@create_index(@this_model, time_hour);
@create_index(@this_model, _batch_id);
@analyze_table(@this_model);
