-- example_id is <yyyymmdd>-<carrier>-<flight>-<origin>-<hhmm>: no dots (a WebDataset key ends
-- at the first dot of a member name), no spaces.
AUDIT (
  name example_ids_are_keys
);

SELECT
  example_id
FROM @this_model
WHERE
  NOT example_id ~ '^[0-9]{8}-[A-Z0-9]+-[0-9]+-[A-Z0-9]+-[0-9]{4}$'
