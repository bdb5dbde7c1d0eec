MODEL (
  name bronze.airports,
  start @flights_start,
  description 'Typed airport records from every loaded raw.airports batch, all versions kept. Small reference data: rebuilt whole.',
  kind FULL,
  grain (_batch_id, _record_no),
  audits (
    values_cast,
    landed_rows_reach_bronze(source := raw.airports, contract := @raw_airports_contract),
    not_null(columns := (_batch_id, _record_no, _ingested_at, faa)),
    unique_combination_of_columns(columns := (_batch_id, _record_no)),
    accepted_range(column := lat, min_v := -90, max_v := 90),
    accepted_range(column := lon, min_v := -180, max_v := 180)
  )
);

/* OFFSET 0: see bronze.flights (each value is parsed once for its check, once for its cast). */
WITH checked AS (
  SELECT
    @checked_columns(@raw_airports_contract),
    @provenance_columns()
  FROM raw.airports
  WHERE
    @kept_rows(@raw_airports_contract)
  OFFSET 0
)
SELECT
  @typed_checked_columns(@raw_airports_contract),
  @provenance_columns()
FROM checked;

@analyze_table(@this_model);
