MODEL (
  name gold.flight_ops_examples,
  start @flights_ops_start,
  description 'Training examples for arrival-delay prediction with every feature as known at the anchor (2 hours before scheduled departure): the flight''s schedule, the weather, other flights'' departures and arrivals, and the schedule counts are the versions the operations database held at anchor_ts. A departure recorded late is not a feature of an anchor before it was recorded. The labels are the flight''s final values. Same columns as gold.flight_delay_examples; withdrawn flights are in no example.',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column sched_dep_ts
  ),
  grain example_id,
  audits (
    not_null(columns := (example_id, anchor_ts, sched_dep_ts, carrier, origin, dest, distance, sched_dep_hour, day_of_week, month, origin_sched_departures_1h, arr_delay_min, label_delayed)),
    unique_values(columns := (example_id)),
    example_ids_are_keys,
    anchored_two_hours_before_departure,
    weather_observed_by_anchor,
    labels_match_delay,
    accepted_range(column := sched_dep_hour, min_v := 0, max_v := 23),
    accepted_range(column := origin_sched_departures_1h, min_v := 1)
  )
);

/* Each window is a lateral query per example over silver.ops_flight_versions, so PostgreSQL
   walks its indexes ((origin, dep_ts), (carrier, arr_ts), (origin, sched_dep_ts)). */
WITH final AS (
  /* Flights whose last version says they arrived: the labels. */
  SELECT
    f.flight_id,
    f.arr_delay,
    f.sched_dep_ts - INTERVAL '2 hours' AS anchor_ts
  FROM silver.ops_flight_versions AS f
  WHERE
    f.sched_dep_ts BETWEEN @start_tstz AND @end_tstz
    AND f.valid_to IS NULL
    AND NOT f.cancelled
    AND NOT f.arr_delay IS NULL
), examples AS (
  /* Each flight as known at its anchor (its schedule); one not yet published has no example. */
  SELECT
    k.*,
    final.anchor_ts,
    final.arr_delay AS final_arr_delay
  FROM final
  JOIN silver.ops_flight_versions AS k
    ON k.flight_id = final.flight_id AND @current_at(k, final.anchor_ts)
)
SELECT
  e.flight_id::TEXT AS example_id,
  e.anchor_ts::TIMESTAMPTZ AS anchor_ts,
  e.sched_dep_ts::TIMESTAMPTZ AS sched_dep_ts,
  e.carrier::TEXT AS carrier,
  e.origin::TEXT AS origin,
  e.dest::TEXT AS dest,
  e.distance::DOUBLE PRECISION AS distance,
  (e.sched_dep_time / 100)::INT AS sched_dep_hour,
  EXTRACT(ISODOW FROM e.flight_date)::INT AS day_of_week,
  EXTRACT(MONTH FROM e.flight_date)::INT AS month,
  p.year::INT AS plane_year,
  p.seats::INT AS plane_seats,
  a.lat::DOUBLE PRECISION AS dest_lat,
  a.lon::DOUBLE PRECISION AS dest_lon,
  wx.temp::DOUBLE PRECISION AS wx_temp,
  wx.wind_speed::DOUBLE PRECISION AS wx_wind_speed,
  wx.precip::DOUBLE PRECISION AS wx_precip,
  wx.visib::DOUBLE PRECISION AS wx_visib,
  wx.pressure::DOUBLE PRECISION AS wx_pressure,
  wx.obs_ts::TIMESTAMPTZ AS wx_obs_ts,
  ow.origin_dep_delay_3h::DOUBLE PRECISION AS origin_dep_delay_3h,
  cw.carrier_arr_delay_24h::DOUBLE PRECISION AS carrier_arr_delay_24h,
  sh.departures::INT AS origin_sched_departures_1h,
  e.final_arr_delay::DOUBLE PRECISION AS arr_delay_min,
  (e.final_arr_delay >= 15)::BOOLEAN AS label_delayed,
  e.tailnum::TEXT AS tailnum
FROM examples AS e
CROSS JOIN LATERAL (
  /* Flights the schedule showed, at the anchor, leaving the origin in this flight's hour. */
  SELECT
    COUNT(*) AS departures
  FROM silver.ops_flight_versions AS v
  WHERE
    v.origin = e.origin
    AND v.sched_dep_ts >= DATE_TRUNC('hour', e.sched_dep_ts)
    AND v.sched_dep_ts < DATE_TRUNC('hour', e.sched_dep_ts) + INTERVAL '1 hour'
    AND @current_at(v, e.anchor_ts)
) AS sh
CROSS JOIN LATERAL (
  /* Departures from the origin in [anchor - 3h, anchor), as known at the anchor. */
  SELECT
    AVG(v.dep_delay) AS origin_dep_delay_3h
  FROM silver.ops_flight_versions AS v
  WHERE
    v.origin = e.origin
    AND v.dep_ts >= e.anchor_ts - INTERVAL '3 hours'
    AND v.dep_ts < e.anchor_ts
    AND @current_at(v, e.anchor_ts)
) AS ow
CROSS JOIN LATERAL (
  /* The carrier's arrivals in [anchor - 24h, anchor), as known at the anchor. */
  SELECT
    AVG(v.arr_delay) AS carrier_arr_delay_24h
  FROM silver.ops_flight_versions AS v
  WHERE
    v.carrier = e.carrier
    AND v.arr_ts >= e.anchor_ts - INTERVAL '24 hours'
    AND v.arr_ts < e.anchor_ts
    AND @current_at(v, e.anchor_ts)
) AS cw
LEFT JOIN silver.ops_planes AS p
  ON p.tailnum = e.tailnum
LEFT JOIN silver.ops_airports AS a
  ON a.faa = e.dest
LEFT JOIN LATERAL (
  /* As-of join: the latest observation at the origin at or before the anchor, in the version
     recorded by then. */
  SELECT
    w.obs_ts,
    w.temp,
    w.wind_speed,
    w.precip,
    w.visib,
    w.pressure
  FROM silver.ops_weather_versions AS w
  WHERE
    w.origin = e.origin AND w.obs_ts <= e.anchor_ts AND @current_at(w, e.anchor_ts)
  ORDER BY
    w.obs_ts DESC
  LIMIT 1
) AS wx
  ON TRUE;

@create_index(@this_model, sched_dep_ts);
@analyze_table(@this_model);
