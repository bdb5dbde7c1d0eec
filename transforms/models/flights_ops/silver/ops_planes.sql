MODEL (
  name silver.ops_planes,
  start @flights_ops_start,
  description 'Aircraft dimension: one row per tail number, the latest snapshot.',
  kind FULL,
  grain tailnum,
  audits (
    not_null(columns := (tailnum)),
    unique_values(columns := (tailnum))
  )
);

WITH versions AS (
  SELECT
    b.*,
    @newest_version_rank(b.tailnum) AS version_rank
  FROM bronze.ops_planes AS b
)
SELECT
  tailnum,
  year,
  seats
FROM versions
WHERE
  version_rank = 1;

@analyze_table(@this_model);
