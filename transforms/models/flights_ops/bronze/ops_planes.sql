MODEL (
  name bronze.ops_planes,
  start @flights_ops_start,
  description 'Typed rows of every loaded raw.ops_planes batch (snapshots of ops.planes), all versions kept. Small reference data: rebuilt whole.',
  kind FULL,
  grain (_batch_id, _record_no),
  audits (
    values_cast,
    landed_rows_reach_bronze(source := raw.ops_planes, contract := @raw_ops_planes_contract),
    unique_combination_of_columns(columns := (_batch_id, _record_no))
  )
);

SELECT
  @typed_columns(@raw_ops_planes_contract),
  @provenance_columns()
FROM raw.ops_planes
WHERE
  @kept_rows(@raw_ops_planes_contract);

@analyze_table(@this_model);
