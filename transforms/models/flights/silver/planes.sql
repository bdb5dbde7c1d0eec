MODEL (
  name silver.planes,
  start @flights_start,
  description 'Aircraft dimension: one row per tail number, the latest ingested version.',
  kind FULL,
  grain tailnum,
  audits (
    not_null(columns := (tailnum)),
    unique_values(columns := (tailnum)),
    number_of_rows(threshold := 1)
  )
);

WITH versions AS (
  SELECT
    b.*,
    @newest_version_rank(b.tailnum) AS version_rank
  FROM bronze.planes AS b
)
SELECT
  tailnum,
  year,
  type,
  manufacturer,
  model,
  engines,
  seats,
  speed,
  engine,
  _batch_id,
  _record_no,
  _ingested_at
FROM versions
WHERE
  version_rank = 1;

@analyze_table(@this_model);
