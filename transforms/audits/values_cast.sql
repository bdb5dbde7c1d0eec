-- Bronze gate: every present raw value cast to its column type. A failing row names the
-- offending columns in _cast_failures (see macros/typing.py).
AUDIT (
  name values_cast
);

SELECT
  _batch_id,
  _record_no,
  _cast_failures
FROM @this_model
WHERE
  _cast_failures <> ''
