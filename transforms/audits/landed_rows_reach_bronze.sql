-- Bronze row-count sanity: every batch seen in the processed intervals reached bronze whole
-- (but for the rows of entities a deletion request names: @kept_rows with the raw table's
-- contract). A row that cannot be placed in time (no valid date) would otherwise vanish
-- silently; here its batch fails, with the raw and bronze row counts side by side.
AUDIT (
  name landed_rows_reach_bronze
);

WITH batches AS (
  SELECT DISTINCT
    _batch_id
  FROM @this_model
), raw_rows AS (
  SELECT
    r._batch_id,
    COUNT(*) AS raw_rows
  FROM @source AS r
  WHERE
    r._batch_id IN (
      SELECT
        _batch_id
      FROM batches
    )
    AND @kept_rows(@contract)
  GROUP BY
    r._batch_id
), bronze_rows AS (
  SELECT
    b._batch_id,
    COUNT(*) AS bronze_rows
  FROM @unfiltered(@this_model) AS b
  WHERE
    b._batch_id IN (
      SELECT
        _batch_id
      FROM batches
    )
  GROUP BY
    b._batch_id
)
SELECT
  raw_rows._batch_id,
  raw_rows.raw_rows,
  bronze_rows.bronze_rows
FROM raw_rows
LEFT JOIN bronze_rows
  ON bronze_rows._batch_id = raw_rows._batch_id
WHERE
  bronze_rows.bronze_rows IS DISTINCT FROM raw_rows.raw_rows
