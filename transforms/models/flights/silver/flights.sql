MODEL (
  name silver.flights,
  start @flights_start,
  description 'Conformed flights: one row per natural flight key (local date, carrier, flight number, origin, scheduled departure time), keeping the latest ingested version (greatest _ingested_at, then _batch_id, then _record_no). Times in UTC; actual departure and arrival placed in time from the scheduled times and the delays; cancelled flights flagged.',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column sched_dep_ts
  ),
  grain flight_id,
  audits (
    not_null(columns := (flight_id, flight_date, carrier, flight, origin, dest, sched_dep_time, sched_dep_ts, cancelled)),
    unique_combination_of_columns(columns := (flight_id)),
    unique_combination_of_columns(columns := (flight_date, carrier, flight, origin, sched_dep_time)),
    flights_keep_one_version_per_key,
    arrivals_placed_in_time,
    events_near_schedule,
    accepted_range(column := distance, min_v := 1),
    accepted_range(column := air_time, min_v := 1)
  ),
  column_descriptions (
    flight_id = 'Stable text id of the natural key, e.g. 20130101-UA-1545-EWR-0515 (no dots).',
    flight_date = 'Local (New York) date of the scheduled departure.',
    sched_dep_ts = 'Scheduled departure, UTC; the time column.',
    sched_arr_ts = 'Scheduled arrival, UTC, from the local arrival time in the destination time zone (the next day when it would fall before departure).',
    dep_ts = 'Actual departure, UTC: sched_dep_ts + dep_delay minutes. NULL when the flight never left.',
    arr_ts = 'Actual arrival, UTC: sched_arr_ts + arr_delay minutes. NULL when no arrival delay is known.',
    cancelled = 'True when the flight never departed (no departure time).'
  )
);

WITH versions AS (
  SELECT
    b.*,
    @newest_version_rank(b.flight_date, b.carrier, b.flight, b.origin, b.sched_dep_time) AS version_rank
  FROM bronze.flights AS b
  WHERE
    b.sched_dep_ts BETWEEN @start_tstz AND @end_tstz
), timed AS (
  SELECT
    v.*,
    a.tzone AS dest_tzone,
    @local_hhmm_after(v.flight_date, v.sched_arr_time, a.tzone, v.sched_dep_ts) AS sched_arr_ts
  FROM versions AS v
  LEFT JOIN silver.airports AS a
    ON a.faa = v.dest
  WHERE
    v.version_rank = 1
  /* Not inlined: arr_ts reads sched_arr_ts, which would otherwise be computed twice. */
  OFFSET 0
)
SELECT
  (
    TO_CHAR(flight_date, 'YYYYMMDD') || '-' || carrier || '-' || flight::TEXT || '-' || origin || '-' || LPAD(sched_dep_time::TEXT, 4, '0')
  )::TEXT AS flight_id,
  flight_date::DATE AS flight_date,
  carrier::TEXT AS carrier,
  flight::INT AS flight,
  origin::TEXT AS origin,
  dest::TEXT AS dest,
  tailnum::TEXT AS tailnum,
  sched_dep_time::INT AS sched_dep_time,
  sched_arr_time::INT AS sched_arr_time,
  sched_dep_ts::TIMESTAMPTZ AS sched_dep_ts,
  sched_arr_ts::TIMESTAMPTZ AS sched_arr_ts,
  (sched_dep_ts + dep_delay * INTERVAL '1 minute')::TIMESTAMPTZ AS dep_ts,
  (sched_arr_ts + arr_delay * INTERVAL '1 minute')::TIMESTAMPTZ AS arr_ts,
  dep_delay::DOUBLE PRECISION AS dep_delay,
  arr_delay::DOUBLE PRECISION AS arr_delay,
  air_time::DOUBLE PRECISION AS air_time,
  distance::DOUBLE PRECISION AS distance,
  (dep_time IS NULL)::BOOLEAN AS cancelled,
  dest_tzone::TEXT AS dest_tzone,
  _batch_id::TEXT AS _batch_id,
  _record_no::BIGINT AS _record_no,
  _ingested_at::TIMESTAMPTZ AS _ingested_at
FROM timed;

@create_index(@this_model, sched_dep_ts);
@create_index(@this_model, dep_ts);
@create_index(@this_model, arr_ts);
@analyze_table(@this_model);
