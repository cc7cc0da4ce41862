-- wrk script of mapguard's real-service benchmark: etcd's key-value API
-- through its JSON gateway (/v3/kv/*, keys and values in base64).
--
--   wrk -t2 -c8 -d10s --latency -s tests/bench/etcd.lua http://127.0.0.1:PORT -- KEYS [INTERVAL_MS]
--
-- Each request picks a key of KEYS (default 10000) at random and one of
-- range (50%), put (40%) or deleterange (10%) of that key, so the store
-- keeps a working set of a few thousand keys that is read, rewritten and
-- deleted. The requests are prepared once per thread; request() only picks.
-- With INTERVAL_MS, each connection waits that long on average before each
-- request (pace.lua: a fixed offered load instead of saturation).

package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local pace = require("pace")

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function sextet(n)
  return alphabet:sub(n + 1, n + 1)
end

-- Standard base64 with padding (LuaJIT's Lua 5.1 has no bit operators, so
-- the 24-bit groups are split with arithmetic).
local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    out[#out + 1] = sextet(math.floor(n / 262144) % 64)
      .. sextet(math.floor(n / 4096) % 64)
      .. (b and sextet(math.floor(n / 64) % 64) or "=")
      .. (c and sextet(n % 64) or "=")
  end
  return table.concat(out)
end

local ranges, puts, deletes = {}, {}, {}
local keys = 0

function init(args)
  keys = tonumber(args[1]) or 10000
  local value = base64(string.rep("mapguard benchmark value ", 3))
  local headers = { ["Content-Type"] = "application/json" }
  for i = 1, keys do
    local key = base64(string.format("mapguard-bench/%08d", i))
    ranges[i] = wrk.format("POST", "/v3/kv/range", headers, '{"key":"' .. key .. '"}')
    puts[i] = wrk.format("POST", "/v3/kv/put", headers,
      '{"key":"' .. key .. '","value":"' .. value .. '"}')
    deletes[i] = wrk.format("POST", "/v3/kv/deleterange", headers, '{"key":"' .. key .. '"}')
  end
  -- Each thread has a Lua state of its own: seed each differently.
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  if args[2] then
    pace.start(assert(tonumber(args[2]), "etcd.lua: INTERVAL_MS"))
  end
end

function request()
  local i = math.random(keys)
  local op = math.random(10)
  if op <= 5 then
    return ranges[i]
  elseif op <= 9 then
    return puts[i]
  else
    return deletes[i]
  end
end
