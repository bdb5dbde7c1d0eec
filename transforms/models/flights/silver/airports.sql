MODEL (
  name silver.airports,
  start @flights_start,
  description 'Airport dimension: one row per FAA code, the latest ingested version, with its IANA time zone (from the source, or from the curated silver.airport_timezones where the source has none).',
  kind FULL,
  grain faa,
  audits (
    not_null(columns := (faa)),
    unique_values(columns := (faa)),
    number_of_rows(threshold := 1)
  )
);

WITH versions AS (
  SELECT
    b.*,
    @newest_version_rank(b.faa) AS version_rank
  FROM bronze.airports AS b
), latest AS (
  SELECT
    *
  FROM versions
  WHERE
    version_rank = 1
)
SELECT
  COALESCE(latest.faa, fix.faa) AS faa,
  latest.name,
  latest.lat,
  latest.lon,
  latest.alt,
  COALESCE(latest.tzone, fix.tzone) AS tzone,
  CASE WHEN latest.tzone IS NULL AND NOT fix.tzone IS NULL THEN 'curated' ELSE 'source' END AS tzone_source,
  latest._batch_id,
  latest._record_no,
  latest._ingested_at
FROM latest
FULL OUTER JOIN silver.airport_timezones AS fix
  ON fix.faa = latest.faa;

@analyze_table(@this_model);
