MODEL (
  name bronze.ops_flights,
  start @flights_ops_start,
  description 'Typed changes of ops.flights from every loaded raw.ops_flights batch: one row per insert, update or delete, in the UTC hour of the flight''s scheduled departure (time_hour).',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column time_hour
  ),
  grain (_batch_id, _record_no),
  audits (
    values_cast,
    landed_rows_reach_bronze(source := raw.ops_flights, contract := @raw_ops_flights_contract),
    not_null(columns := (_batch_id, _record_no, flight_id, time_hour, updated_at, _change_op, _change_lsn, _change_seq)),
    unique_combination_of_columns(columns := (_batch_id, _record_no))
  )
);

SELECT
  @typed_columns(@raw_ops_flights_contract),
  @provenance_columns()
FROM raw.ops_flights
WHERE
  @kept_rows(@raw_ops_flights_contract)
  AND time_hour::TIMESTAMPTZ BETWEEN @start_tstz AND @end_tstz;

@create_index(@this_model, time_hour);
@create_index(@this_model, _batch_id);
@analyze_table(@this_model);
