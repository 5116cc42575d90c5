-- wrk script: durable overwrites or deletes of keys an earlier
-- put_distinct.lua run created (same PREFIX): keys PREFIX-<thread>-<n>.
-- MODE=overwrite PUTs a value that differs on every request to the first
-- RANGE keys of each thread, round robin; MODE=delete deletes keys
-- 1, 2, 3... of each thread once (run it without a warm-up).
-- STYLE: exdaas (/v1/kv/k) or webdis (/SET/k, /DEL/k).
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local style = os.getenv("STYLE") or "exdaas"
local mode = os.getenv("MODE") or "overwrite"
local prefix = os.getenv("PREFIX") or "bench"
local range = tonumber(os.getenv("RANGE") or "20000")
local headers = { ["Content-Type"] = "application/json" }

setup = common.number_threads

local n = 0
function request()
  n = n + 1
  if mode == "delete" then
    local key = prefix .. "-" .. tid .. "-" .. n
    if style == "webdis" then
      return wrk.format("GET", "/DEL/" .. key)
    end
    return wrk.format("DELETE", "/v1/kv/" .. key)
  end
  local key = prefix .. "-" .. tid .. "-" .. ((n - 1) % range + 1)
  local value = '{"name":"benchmark user","email":"user@example.com","age":42,"tags":["a","b"],"active":true,"x":' .. n .. '}'
  if style == "webdis" then
    return wrk.format("PUT", "/SET/" .. key, {}, value)
  end
  return wrk.format("PUT", "/v1/kv/" .. key, headers, value)
end
