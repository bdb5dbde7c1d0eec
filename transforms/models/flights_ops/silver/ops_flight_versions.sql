MODEL (
  name silver.ops_flight_versions,
  start @flights_ops_start,
  description 'Every version of every flight the operations database held, each with the span in which it was current: from its updated_at (when the source recorded it) to the next version''s. A flight whose schedule was withdrawn (deleted at the source) has no versions: it is in no example. Times in UTC, placed as silver.flights places them.',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column sched_dep_ts
  ),
  grain (flight_id, valid_from),
  audits (
    not_null(columns := (flight_id, valid_from, carrier, origin, dest, sched_dep_ts, cancelled)),
    unique_combination_of_columns(columns := (flight_id, valid_from)),
    versions_follow_each_other,
    events_near_schedule
  ),
  column_descriptions (
    valid_from = 'When the source recorded this version (its updated_at).',
    valid_to = 'When the next version was recorded; NULL for the current one.'
  )
);

WITH changes AS (
  SELECT
    b.*
  FROM bronze.ops_flights AS b
  WHERE
    b.time_hour BETWEEN @start_tstz AND @end_tstz
), withdrawn AS (
  SELECT DISTINCT
    flight_id
  FROM changes
  WHERE
    _change_op = 'delete'
), recorded AS (
  /* One version per moment a flight was recorded: a change that arrived twice (the first
     read's snapshot and the log can overlap) counts once, the later in the log winning. */
  SELECT
    c.*,
    ROW_NUMBER() OVER (
      PARTITION BY c.flight_id, c.updated_at
      ORDER BY c._change_lsn DESC, c._change_seq DESC
    ) AS copy_rank
  FROM changes AS c
  WHERE
    c._change_op <> 'delete'
    AND NOT c.flight_id IN (
      SELECT
        flight_id
      FROM withdrawn
    )
), versions AS (
  SELECT
    r.*,
    MAKE_DATE(r.year::INT, r.month::INT, r.day::INT) AS flight_date,
    LEAD(r.updated_at) OVER (PARTITION BY r.flight_id ORDER BY r.updated_at) AS next_recorded
  FROM recorded AS r
  WHERE
    r.copy_rank = 1
), placed AS (
  SELECT
    v.*,
    @local_hhmm_to_utc(v.flight_date, v.sched_dep_time, @flights_ops_time_zone) AS sched_dep_utc,
    a.tzone AS dest_tzone
  FROM versions AS v
  LEFT JOIN silver.ops_airports AS a
    ON a.faa = v.dest
), timed AS (
  SELECT
    p.*,
    @local_hhmm_after(p.flight_date, p.sched_arr_time, p.dest_tzone, p.sched_dep_utc) AS sched_arr_utc
  FROM placed AS p
)
SELECT
  flight_id::TEXT AS flight_id,
  updated_at::TIMESTAMPTZ AS valid_from,
  next_recorded::TIMESTAMPTZ AS valid_to,
  flight_date::DATE AS flight_date,
  carrier::TEXT AS carrier,
  flight::INT AS flight,
  origin::TEXT AS origin,
  dest::TEXT AS dest,
  tailnum::TEXT AS tailnum,
  distance::DOUBLE PRECISION AS distance,
  sched_dep_time::INT AS sched_dep_time,
  sched_arr_time::INT AS sched_arr_time,
  sched_dep_utc::TIMESTAMPTZ AS sched_dep_ts,
  sched_arr_utc::TIMESTAMPTZ AS sched_arr_ts,
  (sched_dep_utc + dep_delay * INTERVAL '1 minute')::TIMESTAMPTZ AS dep_ts,
  (sched_arr_utc + arr_delay * INTERVAL '1 minute')::TIMESTAMPTZ AS arr_ts,
  dep_delay::DOUBLE PRECISION AS dep_delay,
  arr_delay::DOUBLE PRECISION AS arr_delay,
  air_time::DOUBLE PRECISION AS air_time,
  cancelled::BOOLEAN AS cancelled
FROM timed
WHERE
  sched_dep_utc BETWEEN @start_tstz AND @end_tstz;

@create_index(@this_model, sched_dep_ts);
@create_index(@this_model, origin, sched_dep_ts);
@create_index(@this_model, origin, dep_ts);
@create_index(@this_model, carrier, arr_ts);
@create_index(@this_model, flight_id);
@analyze_table(@this_model);
