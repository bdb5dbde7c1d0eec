MODEL (
  name bronze.flights,
  start @flights_start,
  description 'Typed flights from every loaded raw.flights batch: one row per landed record, all versions kept. Casts cannot fail silently: a present value that does not cast is listed in _cast_failures and fails the values_cast audit.',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column sched_dep_ts
  ),
  grain (_batch_id, _record_no),
  audits (
    values_cast,
    landed_rows_reach_bronze(source := raw.flights, contract := @raw_flights_contract),
    not_null(columns := (_batch_id, _record_no, _ingested_at, year, month, day, carrier, flight, origin, sched_dep_time)),
    unique_combination_of_columns(columns := (_batch_id, _record_no)),
    accepted_range(column := month, min_v := 1, max_v := 12),
    accepted_range(column := day, min_v := 1, max_v := 31),
    valid_clock_times(columns := (sched_dep_time, sched_arr_time, dep_time, arr_time)),
    scheduled_hour_matches_time_hour
  ),
  column_descriptions (
    sched_dep_ts = 'Scheduled departure in UTC, from the local date and HHMM time; the time column.',
    flight_date = 'Local date of the scheduled departure, in the dataset''s time zone.',
    _cast_failures = 'Comma-separated names of the columns whose present value did not cast; empty when all cast.'
  )
);

/* OFFSET 0 keeps PostgreSQL from inlining a step into the next: inlined, each reference to a
   column computed in a step (a validity flag, a typed value, flight_date, sched_dep_ts)
   would compute it again, and bronze would parse every value several times. */
WITH checked AS (
  SELECT
    @checked_columns(@raw_flights_contract),
    @provenance_columns()
  FROM raw.flights
  WHERE
    @kept_rows(@raw_flights_contract)
  OFFSET 0
), typed AS (
  SELECT
    @typed_checked_columns(@raw_flights_contract),
    @provenance_columns()
  FROM checked
  OFFSET 0
), dated AS (
  SELECT
    typed.*,
    CASE
      WHEN PG_INPUT_IS_VALID(year || '-' || month || '-' || day, 'date')
      THEN MAKE_DATE(year::INT, month::INT, day::INT)
    END::DATE AS flight_date
  FROM typed
  OFFSET 0
), timed AS (
  SELECT
    dated.*,
    @local_hhmm_to_utc(flight_date, sched_dep_time, @flights_time_zone)::TIMESTAMPTZ AS sched_dep_ts
  FROM dated
  OFFSET 0
)
SELECT
  year,
  month,
  day,
  dep_time,
  sched_dep_time,
  dep_delay,
  arr_time,
  sched_arr_time,
  arr_delay,
  carrier,
  flight,
  tailnum,
  origin,
  dest,
  air_time,
  distance,
  hour,
  minute,
  time_hour,
  flight_date,
  sched_dep_ts,
  _cast_failures,
  @provenance_columns()
FROM timed
WHERE
  sched_dep_ts BETWEEN @start_tstz AND @end_tstz;

@create_index(@this_model, sched_dep_ts);
@create_index(@this_model, _batch_id);
@analyze_table(@this_model);
