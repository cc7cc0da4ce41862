-- Pacing for the wrk scripts of mapguard's real-service benchmark (wrk 4
-- has no rate option): `require`d through package.path by etcd.lua and
-- get.lua, whose init(args) calls start(INTERVAL_MS).
--
-- After each response a connection waits a random delay, uniform over
-- [0, 2 × INTERVAL_MS] (so INTERVAL_MS on average; random, so that the
-- connections do not fall into step), before its next request. With C
-- connections the offered load is C / (INTERVAL_MS + latency) requests per
-- millisecond: the benchmark subtracts the latency it measured.

local M = {}

-- Defines wrk's global delay(): wrk looks for it after init(), and calls
-- it before every request of a connection. wrk counts whole milliseconds;
-- rounding to the nearest keeps the mean.
function M.start(interval_ms)
  local span = 2 * interval_ms
  function delay()
    return math.floor(math.random() * span + 0.5)
  end
end

return M
