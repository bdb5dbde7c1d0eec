-- The whole 14-day label window of every example lies inside the data: before the start of the
-- newest event's day.
AUDIT (
  name label_windows_inside_the_data
);

SELECT
  g.example_id,
  g.anchor_ts
FROM @this_model AS g
WHERE
  g.anchor_ts + INTERVAL '14 days' > (
    SELECT
      TIMEZONE('UTC', DATE_TRUNC('day', TIMEZONE('UTC', MAX(u.last_ts))))
    FROM silver.user_days AS u
  )
