MODEL (
  name bronze.planes,
  start @flights_start,
  description 'Typed aircraft records from every loaded raw.planes batch, all versions kept. Small reference data: rebuilt whole.',
  kind FULL,
  grain (_batch_id, _record_no),
  audits (
    values_cast,
    landed_rows_reach_bronze(source := raw.planes, contract := @raw_planes_contract),
    not_null(columns := (_batch_id, _record_no, _ingested_at, tailnum)),
    unique_combination_of_columns(columns := (_batch_id, _record_no)),
    accepted_range(column := year, min_v := 1900, max_v := 2100),
    accepted_range(column := seats, min_v := 1, max_v := 1000),
    accepted_range(column := engines, min_v := 0, max_v := 8)
  )
);

/* OFFSET 0: see bronze.flights (each value is parsed once for its check, once for its cast). */
WITH checked AS (
  SELECT
    @checked_columns(@raw_planes_contract),
    @provenance_columns()
  FROM raw.planes
  WHERE
    @kept_rows(@raw_planes_contract)
  OFFSET 0
)
SELECT
  @typed_checked_columns(@raw_planes_contract),
  @provenance_columns()
FROM checked;

@analyze_table(@this_model);
