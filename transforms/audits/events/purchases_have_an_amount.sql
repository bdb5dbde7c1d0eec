-- Every purchase carries a positive amount in its properties.
AUDIT (
  name purchases_have_an_amount
);

SELECT
  event_id,
  properties
FROM @this_model
WHERE
  event_type = 'purchase' AND NOT COALESCE(amount > 0, FALSE)
