MODEL (
  name silver.airlines,
  start @flights_start,
  description 'Carrier dimension: one row per carrier code, the latest ingested version.',
  kind FULL,
  grain carrier,
  audits (
    not_null(columns := (carrier, name)),
    unique_values(columns := (carrier)),
    number_of_rows(threshold := 1)
  )
);

WITH versions AS (
  SELECT
    b.*,
    @newest_version_rank(b.carrier) AS version_rank
  FROM bronze.airlines AS b
)
SELECT
  carrier,
  name,
  _batch_id,
  _record_no,
  _ingested_at
FROM versions
WHERE
  version_rank = 1;

@analyze_table(@this_model);
