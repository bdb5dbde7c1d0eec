MODEL (
  name silver.ops_airport_timezones,
  start @flights_ops_start,
  description 'IANA time zones of destination airports that the airports source lacks: the curated seed of the flights dataset, shared.',
  kind SEED (
    path '../../../seeds/flights/airport_timezones.csv'
  ),
  columns (
    faa TEXT,
    tzone TEXT,
    note TEXT
  ),
  grain faa,
  audits (
    not_null(columns := (faa, tzone)),
    unique_values(columns := (faa))
  )
)
