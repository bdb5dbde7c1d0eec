MODEL (
  name bronze.events,
  start @events_start,
  description 'Typed product events from every loaded raw.events batch: one row per landed record, all versions kept (a re-sent event appears once per batch that carried it).',
  kind INCREMENTAL_BY_TIME_RANGE (
    time_column ts
  ),
  grain (_batch_id, _record_no),
  audits (
    values_cast,
    landed_rows_reach_bronze(source := raw.events, contract := @raw_events_contract),
    not_null(columns := (_batch_id, _record_no, _ingested_at, event_id, user_id, event_type, ts)),
    unique_combination_of_columns(columns := (_batch_id, _record_no))
  ),
  column_descriptions (
    ts = 'When the event happened (UTC); the time column.',
    properties = 'The event''s properties, a JSON object (amount on purchases).'
  )
);

WITH typed AS (
  SELECT
    @typed_columns(@raw_events_contract),
    @provenance_columns()
  FROM raw.events
  WHERE
    @kept_rows(@raw_events_contract)
)
SELECT
  event_id,
  user_id,
  event_type,
  ts,
  properties,
  _cast_failures,
  @provenance_columns()
FROM typed
WHERE
  ts BETWEEN @start_tstz AND @end_tstz;

@create_index(@this_model, ts);
@create_index(@this_model, _batch_id);
@analyze_table(@this_model);
