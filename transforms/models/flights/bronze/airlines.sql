MODEL (
  name bronze.airlines,
  start @flights_start,
  description 'Typed carrier records from every loaded raw.airlines batch, all versions kept. Small reference data: rebuilt whole.',
  kind FULL,
  grain (_batch_id, _record_no),
  audits (
    values_cast,
    landed_rows_reach_bronze(source := raw.airlines, contract := @raw_airlines_contract),
    not_null(columns := (_batch_id, _record_no, _ingested_at, carrier)),
    unique_combination_of_columns(columns := (_batch_id, _record_no))
  )
);

/* OFFSET 0: see bronze.flights (each value is parsed once for its check, once for its cast). */
WITH checked AS (
  SELECT
    @checked_columns(@raw_airlines_contract),
    @provenance_columns()
  FROM raw.airlines
  WHERE
    @kept_rows(@raw_airlines_contract)
  OFFSET 0
)
SELECT
  @typed_checked_columns(@raw_airlines_contract),
  @provenance_columns()
FROM checked;

@analyze_table(@this_model);
