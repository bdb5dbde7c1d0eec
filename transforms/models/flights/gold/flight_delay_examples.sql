MODEL (
  name gold.flight_delay_examples,
  start @flights_start,
  description 'Training examples for arrival-delay prediction: one row per flight with a known arrival delay (cancelled and unlabeled flights excluded), anchored 2 hours before its scheduled departure. Every feature uses only what was known at anchor_ts: static schedule and reference data, the latest weather observation at or before the anchor, and windows over events strictly before the anchor. Nothing the flight itself does after the anchor is a feature; arr_delay_min and label_delayed are the labels.',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column sched_dep_ts
  ),
  grain example_id,
  audits (
    not_null(columns := (example_id, anchor_ts, sched_dep_ts, carrier, origin, dest, distance, sched_dep_hour, day_of_week, month, origin_sched_departures_1h, arr_delay_min, label_delayed)),
    unique_combination_of_columns(columns := (example_id)),
    example_ids_are_keys,
    anchored_two_hours_before_departure,
    weather_observed_by_anchor,
    labels_match_delay,
    examples_cover_labeled_flights,
    accepted_range(column := sched_dep_hour, min_v := 0, max_v := 23),
    accepted_range(column := day_of_week, min_v := 1, max_v := 7),
    accepted_range(column := month, min_v := 1, max_v := 12),
    accepted_range(column := origin_sched_departures_1h, min_v := 1),
    accepted_range(column := distance, min_v := 1)
  ),
  column_descriptions (
    example_id = 'Stable id of the natural flight key, e.g. 20130101-UA-1545-EWR-0515 (no dots: a WebDataset key).',
    anchor_ts = 'Prediction time: scheduled departure minus 2 hours (UTC).',
    sched_dep_ts = 'Scheduled departure (UTC); the time column.',
    sched_dep_hour = 'Local (New York) hour of the scheduled departure, 0-23.',
    day_of_week = 'ISO day of week of the local departure date, 1 = Monday .. 7 = Sunday.',
    month = 'Month of the local departure date, 1-12.',
    plane_year = 'Year the aircraft was built (planes dimension, by tail number).',
    plane_seats = 'Seats of the aircraft (planes dimension, by tail number).',
    wx_obs_ts = 'Time of the latest hourly weather observation at the origin at or before anchor_ts.',
    origin_dep_delay_3h = 'Mean departure delay (minutes) of flights that actually left the origin in [anchor_ts - 3h, anchor_ts); NULL when none did.',
    carrier_arr_delay_24h = 'Mean arrival delay (minutes) of the carrier''s flights that actually arrived in [anchor_ts - 24h, anchor_ts); NULL when none did.',
    origin_sched_departures_1h = 'Flights (this one included, cancelled ones too) scheduled to leave the origin in the same hour as this one: known from the schedule in advance.',
    arr_delay_min = 'Label: arrival delay in minutes.',
    label_delayed = 'Label: arr_delay_min >= 15.',
    tailnum = 'Aircraft tail number (for group splits); NULL when unknown.'
  )
);

/* Two sorted time lines build every windowed feature; each example rides along on them, so
   nothing has to be joined back by its id:
   1. per origin: departures, weather observations and the anchors. The 3h departure window
      and the latest observation at or before the anchor come from one sort.
   2. per carrier: arrivals and the anchors (now with the origin features), for the 24h window. */
WITH examples AS (
  SELECT
    f.flight_id,
    f.sched_dep_ts,
    f.sched_dep_ts - INTERVAL '2 hours' AS anchor_ts,
    f.carrier,
    f.origin,
    f.dest,
    f.distance,
    f.sched_dep_time,
    f.flight_date,
    f.arr_delay,
    f.tailnum
  FROM silver.flights AS f
  WHERE
    f.sched_dep_ts BETWEEN @start_tstz AND @end_tstz
    AND NOT f.cancelled
    AND NOT f.arr_delay IS NULL
), departures AS (
  /* Flights that left an origin in time to fall in a 3h window before an anchor of this range. */
  SELECT
    f.origin,
    f.dep_ts,
    f.dep_delay
  FROM silver.flights AS f
  WHERE
    f.dep_ts >= @start_tstz::TIMESTAMPTZ - INTERVAL '5 hours'
    AND f.dep_ts <= @end_tstz::TIMESTAMPTZ
), observations AS (
  /* The observations an anchor of this range can see last: those from the earliest anchor on,
     and each origin's last one before it. */
  SELECT
    w.origin,
    w.obs_ts
  FROM silver.weather AS w
  WHERE
    w.obs_ts >= @start_tstz::TIMESTAMPTZ - INTERVAL '2 hours'
    AND w.obs_ts <= @end_tstz::TIMESTAMPTZ
  UNION ALL
  SELECT
    w.origin,
    MAX(w.obs_ts) AS obs_ts
  FROM silver.weather AS w
  WHERE
    w.obs_ts < @start_tstz::TIMESTAMPTZ - INTERVAL '2 hours'
  GROUP BY
    w.origin
), arrivals AS (
  /* Flights that arrived in time to fall in a 24h window before an anchor of this range. */
  SELECT
    f.carrier,
    f.arr_ts,
    f.arr_delay
  FROM silver.flights AS f
  WHERE
    f.arr_ts >= @start_tstz::TIMESTAMPTZ - INTERVAL '26 hours'
    AND f.arr_ts <= @end_tstz::TIMESTAMPTZ
), origin_timeline AS (
  SELECT
    origin,
    dep_ts AS ts,
    dep_delay::NUMERIC AS dep_delay,
    NULL::TIMESTAMPTZ AS obs_ts,
    NULL::TEXT AS example_id,
    NULL::TIMESTAMPTZ AS sched_dep_ts,
    NULL::TEXT AS carrier,
    NULL::TEXT AS dest,
    NULL::DOUBLE PRECISION AS distance,
    NULL::INT AS sched_dep_time,
    NULL::DATE AS flight_date,
    NULL::DOUBLE PRECISION AS arr_delay,
    NULL::TEXT AS tailnum
  FROM departures
  UNION ALL
  SELECT
    origin,
    obs_ts AS ts,
    NULL::NUMERIC AS dep_delay,
    obs_ts,
    NULL::TEXT AS example_id,
    NULL::TIMESTAMPTZ AS sched_dep_ts,
    NULL::TEXT AS carrier,
    NULL::TEXT AS dest,
    NULL::DOUBLE PRECISION AS distance,
    NULL::INT AS sched_dep_time,
    NULL::DATE AS flight_date,
    NULL::DOUBLE PRECISION AS arr_delay,
    NULL::TEXT AS tailnum
  FROM observations
  UNION ALL
  SELECT
    origin,
    anchor_ts AS ts,
    NULL::NUMERIC AS dep_delay,
    NULL::TIMESTAMPTZ AS obs_ts,
    flight_id AS example_id,
    sched_dep_ts,
    carrier,
    dest,
    distance,
    sched_dep_time,
    flight_date,
    arr_delay,
    tailnum
  FROM examples
), origin_windows AS (
  /* The departure window ends 1 microsecond before the anchor: a departure exactly at the
     anchor is out. The observation frame ends with the anchor's peers: one made exactly at
     the anchor is known. */
  SELECT
    w.*
  FROM (
    SELECT
      t.*,
      AVG(t.dep_delay) OVER (
        PARTITION BY t.origin
        ORDER BY t.ts
        RANGE BETWEEN INTERVAL '3 hours' PRECEDING AND INTERVAL '1 microsecond' PRECEDING
      ) AS origin_dep_delay_3h,
      MAX(t.obs_ts) OVER (
        PARTITION BY t.origin
        ORDER BY t.ts
        RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
      ) AS wx_obs_ts
    FROM origin_timeline AS t
  ) AS w
  WHERE
    NOT w.example_id IS NULL
), carrier_timeline AS (
  SELECT
    carrier,
    arr_ts AS ts,
    arr_delay::NUMERIC AS event_arr_delay,
    NULL::TEXT AS example_id,
    NULL::TIMESTAMPTZ AS sched_dep_ts,
    NULL::TEXT AS origin,
    NULL::TEXT AS dest,
    NULL::DOUBLE PRECISION AS distance,
    NULL::INT AS sched_dep_time,
    NULL::DATE AS flight_date,
    NULL::DOUBLE PRECISION AS arr_delay,
    NULL::TEXT AS tailnum,
    NULL::NUMERIC AS origin_dep_delay_3h,
    NULL::TIMESTAMPTZ AS wx_obs_ts
  FROM arrivals
  UNION ALL
  SELECT
    carrier,
    ts,
    NULL::NUMERIC AS event_arr_delay,
    example_id,
    sched_dep_ts,
    origin,
    dest,
    distance,
    sched_dep_time,
    flight_date,
    arr_delay,
    tailnum,
    origin_dep_delay_3h,
    wx_obs_ts
  FROM origin_windows
), carrier_windows AS (
  SELECT
    w.*
  FROM (
    SELECT
      t.*,
      AVG(t.event_arr_delay) OVER (
        PARTITION BY t.carrier
        ORDER BY t.ts
        RANGE BETWEEN INTERVAL '24 hours' PRECEDING AND INTERVAL '1 microsecond' PRECEDING
      ) AS carrier_arr_delay_24h
    FROM carrier_timeline AS t
  ) AS w
  WHERE
    NOT w.example_id IS NULL
), scheduled_hours AS (
  /* The schedule is published in advance: every flight of the hour counts, cancelled or not. */
  SELECT
    f.origin,
    DATE_TRUNC('hour', f.sched_dep_ts) AS sched_hour,
    COUNT(*) AS departures
  FROM silver.flights AS f
  WHERE
    f.sched_dep_ts BETWEEN @start_tstz AND @end_tstz
  GROUP BY
    f.origin,
    DATE_TRUNC('hour', f.sched_dep_ts)
)
SELECT
  e.example_id::TEXT AS example_id,
  e.ts::TIMESTAMPTZ AS anchor_ts,
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
  e.origin_dep_delay_3h::DOUBLE PRECISION AS origin_dep_delay_3h,
  e.carrier_arr_delay_24h::DOUBLE PRECISION AS carrier_arr_delay_24h,
  sh.departures::INT AS origin_sched_departures_1h,
  e.arr_delay::DOUBLE PRECISION AS arr_delay_min,
  (e.arr_delay >= 15)::BOOLEAN AS label_delayed,
  e.tailnum::TEXT AS tailnum
FROM carrier_windows AS e
JOIN scheduled_hours AS sh
  ON sh.origin = e.origin AND sh.sched_hour = DATE_TRUNC('hour', e.sched_dep_ts)
LEFT JOIN silver.planes AS p
  ON p.tailnum = e.tailnum
LEFT JOIN silver.airports AS a
  ON a.faa = e.dest
LEFT JOIN silver.weather AS wx
  /* (origin, obs_ts) is unique in silver.weather (its audit) */
  ON wx.origin = e.origin AND wx.obs_ts = e.wx_obs_ts;

@create_index(@this_model, sched_dep_ts);
@analyze_table(@this_model);
