MODEL (
  name gold.user_purchase_examples,
  start @events_start,
  description 'Training examples for purchase prediction: one row per user per weekly anchor (Mondays 00:00 UTC) for users with at least one event before the anchor, only where the whole 14-day label window lies inside the data (the data ends at the start of the newest event''s day, which may still receive late events). Features use events strictly before the anchor; an event exactly at the anchor belongs to the label window. Rebuilt whole on every change: recency and tenure look back without limit, so a late event can move any later anchor.',
  kind FULL,
  grain example_id,
  audits (
    not_null(columns := (example_id, anchor_ts, user_id, events_7d, purchases_28d, amount_28d, days_since_last_event, tenure_days, last_event_ts, purchase_next_14d)),
    unique_values(columns := (example_id)),
    user_anchor_ids_are_keys,
    features_known_at_the_anchor,
    label_windows_inside_the_data,
    accepted_range(column := events_7d, min_v := 0),
    accepted_range(column := purchases_28d, min_v := 0),
    accepted_range(column := amount_28d, min_v := 0)
  ),
  column_descriptions (
    example_id = 'user_id and the anchor day, e.g. u00042-20240108 (no dots: a WebDataset key).',
    anchor_ts = 'Prediction time: a Monday 00:00 UTC.',
    events_7d = 'The user''s events in [anchor - 7 days, anchor).',
    purchases_28d = 'The user''s purchases in [anchor - 28 days, anchor).',
    amount_28d = 'The amount of those purchases (0 when none).',
    days_since_last_event = 'anchor - the user''s latest event before it, in days.',
    tenure_days = 'anchor - the user''s first event, in days.',
    last_event_ts = 'The user''s latest event before the anchor (for the leakage audit).',
    purchase_next_14d = 'Label: the user purchases in [anchor, anchor + 14 days).'
  )
);

WITH bounds AS (
  SELECT
    TIMEZONE('UTC', DATE_TRUNC('day', TIMEZONE('UTC', MAX(last_ts)))) AS data_end
  FROM silver.user_days
), anchors AS (
  /* Mondays (in UTC) from the dataset's start whose label window ends inside the data. */
  SELECT
    TIMEZONE('UTC', d)::TIMESTAMPTZ AS anchor_ts
  FROM bounds
  CROSS JOIN GENERATE_SERIES(
    CAST(@events_start AS TIMESTAMP),
    TIMEZONE('UTC', bounds.data_end) - INTERVAL '14 days',
    INTERVAL '1 day'
  ) AS d
  WHERE
    EXTRACT(ISODOW FROM d) = 1
), history AS (
  /* What each user had done before each anchor: whole UTC days strictly before it. */
  SELECT
    a.anchor_ts,
    u.user_id,
    MIN(u.first_ts) AS first_ts,
    MAX(u.last_ts) AS last_ts,
    COALESCE(SUM(u.events) FILTER(WHERE u.day_ts >= a.anchor_ts - INTERVAL '7 days'), 0) AS events_7d,
    COALESCE(SUM(u.purchases) FILTER(WHERE u.day_ts >= a.anchor_ts - INTERVAL '28 days'), 0) AS purchases_28d,
    COALESCE(SUM(u.amount) FILTER(WHERE u.day_ts >= a.anchor_ts - INTERVAL '28 days'), 0) AS amount_28d
  FROM anchors AS a
  JOIN silver.user_days AS u
    ON u.day_ts < a.anchor_ts
  GROUP BY
    a.anchor_ts,
    u.user_id
), future AS (
  /* The label window: whole UTC days from the anchor on. */
  SELECT
    a.anchor_ts,
    u.user_id,
    SUM(u.purchases) AS purchases_14d
  FROM anchors AS a
  JOIN silver.user_days AS u
    ON u.day_ts >= a.anchor_ts AND u.day_ts < a.anchor_ts + INTERVAL '14 days'
  GROUP BY
    a.anchor_ts,
    u.user_id
)
SELECT
  (h.user_id || '-' || TO_CHAR(TIMEZONE('UTC', h.anchor_ts), 'YYYYMMDD'))::TEXT AS example_id,
  h.anchor_ts::TIMESTAMPTZ AS anchor_ts,
  h.user_id::TEXT AS user_id,
  h.events_7d::INT AS events_7d,
  h.purchases_28d::INT AS purchases_28d,
  h.amount_28d::DOUBLE PRECISION AS amount_28d,
  (EXTRACT(EPOCH FROM h.anchor_ts - h.last_ts) / 86400)::DOUBLE PRECISION AS days_since_last_event,
  (EXTRACT(EPOCH FROM h.anchor_ts - h.first_ts) / 86400)::DOUBLE PRECISION AS tenure_days,
  h.last_ts::TIMESTAMPTZ AS last_event_ts,
  (COALESCE(f.purchases_14d, 0) > 0)::BOOLEAN AS purchase_next_14d
FROM history AS h
LEFT JOIN future AS f
  ON f.anchor_ts = h.anchor_ts AND f.user_id = h.user_id;

@analyze_table(@this_model);
