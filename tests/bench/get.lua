-- wrk script of mapguard's real-service benchmark for a fixed offered load
-- of plain GETs of the URL (Caddy's; its saturation runs use no script):
--
--   wrk -t2 -c16 -d10s --latency -s tests/bench/get.lua http://127.0.0.1:PORT/ -- INTERVAL_MS
--
-- Each connection waits INTERVAL_MS on average before each request
-- (pace.lua).

package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local pace = require("pace")

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  pace.start(assert(tonumber(args[1]), "get.lua: INTERVAL_MS"))
end
