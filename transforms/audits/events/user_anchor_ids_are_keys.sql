-- example_id is <user_id>-<yyyymmdd>: no dots (a WebDataset key ends at the first dot of a
-- member name), no spaces.
AUDIT (
  name user_anchor_ids_are_keys
);

SELECT
  example_id
FROM @this_model
WHERE
  NOT example_id ~ '^[A-Za-z0-9_]+-[0-9]{8}$'
