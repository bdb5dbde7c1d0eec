MODEL (
  name bronze.ops_airports,
  start @flights_ops_start,
  description 'Typed rows of every loaded raw.ops_airports batch (snapshots of ops.airports), all versions kept. Small reference data: rebuilt whole.',
  kind FULL,
  grain (_batch_id, _record_no),
  audits (
    values_cast,
    landed_rows_reach_bronze(source := raw.ops_airports, contract := @raw_ops_airports_contract),
    unique_combination_of_columns(columns := (_batch_id, _record_no))
  )
);

SELECT
  @typed_columns(@raw_ops_airports_contract),
  @provenance_columns()
FROM raw.ops_airports
WHERE
  @kept_rows(@raw_ops_airports_contract);

@analyze_table(@this_model);
