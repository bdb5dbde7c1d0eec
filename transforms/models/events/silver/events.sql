MODEL (
  name silver.events,
  start @events_start,
  description 'Conformed product events: one row per event_id, the latest ingested version (a re-sent event counts once), with the purchase amount taken out of the properties.',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column ts
  ),
  grain event_id,
  audits (
    not_null(columns := (event_id, user_id, event_type, ts)),
    unique_values(columns := (event_id)),
    purchases_have_an_amount
  ),
  column_descriptions (
    amount = 'The amount of a purchase (properties.amount); NULL for other events.'
  )
);

WITH versions AS (
  SELECT
    b.*,
    @newest_version_rank(b.event_id) AS version_rank
  FROM bronze.events AS b
  WHERE
    b.ts BETWEEN @start_tstz AND @end_tstz
)
SELECT
  event_id::TEXT AS event_id,
  user_id::TEXT AS user_id,
  event_type::TEXT AS event_type,
  ts::TIMESTAMPTZ AS ts,
  CASE
    WHEN event_type = 'purchase'
    THEN (properties ->> 'amount')::DOUBLE PRECISION
  END AS amount,
  properties::JSONB AS properties,
  _batch_id::TEXT AS _batch_id,
  _record_no::BIGINT AS _record_no,
  _ingested_at::TIMESTAMPTZ AS _ingested_at
FROM versions
WHERE
  version_rank = 1;

@create_index(@this_model, ts);
@analyze_table(@this_model);
