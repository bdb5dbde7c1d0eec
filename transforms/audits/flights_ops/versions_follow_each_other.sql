-- A version is current from when it was recorded until the next one was: the spans of one row
-- never overlap and never run backwards.
AUDIT (
  name versions_follow_each_other
);

SELECT
  *
FROM @this_model
WHERE
  valid_to <= valid_from
