MODEL (
  name silver.ops_airports,
  start @flights_ops_start,
  description 'Airport dimension: one row per FAA code, the latest snapshot, with its IANA time zone (from the source, else from silver.ops_airport_timezones).',
  kind FULL,
  grain faa,
  audits (
    not_null(columns := (faa)),
    unique_values(columns := (faa))
  )
);

WITH versions AS (
  SELECT
    b.*,
    @newest_version_rank(b.faa) AS version_rank
  FROM bronze.ops_airports AS b
), latest AS (
  SELECT
    *
  FROM versions
  WHERE
    version_rank = 1
)
SELECT
  COALESCE(latest.faa, fix.faa) AS faa,
  latest.lat,
  latest.lon,
  COALESCE(latest.tzone, fix.tzone) AS tzone
FROM latest
FULL OUTER JOIN silver.ops_airport_timezones AS fix
  ON fix.faa = latest.faa;

@analyze_table(@this_model);
