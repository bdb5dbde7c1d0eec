AUDIT (
  name labels_match_delay
);

SELECT
  example_id,
  arr_delay_min,
  label_delayed
FROM @this_model
WHERE
  label_delayed IS DISTINCT FROM (arr_delay_min >= 15)
