MODEL (
  name silver.airport_timezones,
  start @flights_start,
  description 'Curated reference data kept with the code: IANA time zones of destination airports that the airports source lacks (needed to place arrivals in UTC).',
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
