-- wrk script: durable writes of distinct keys with a 100-byte JSON value.
-- STYLE picks the target's API: exdaas (PUT /v1/kv/k), floor (PUT /k),
-- webdis (PUT /SET/k with the value as body), etcd (POST /v3/kv/put).
-- PREFIX keeps runs apart; AUTH (optional) is sent as Authorization.
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local style = os.getenv("STYLE") or "exdaas"
local prefix = os.getenv("PREFIX") or "bench"
local value = '{"name":"benchmark user","email":"user@example.com","age":42,"tags":["a","b"],"active":true,"x":1}'

local b64value = common.base64(value)

setup = common.number_threads

local n = 0
function request()
  n = n + 1
  local key = prefix .. "-" .. tid .. "-" .. n
  if style == "webdis" then
    return wrk.format("PUT", "/SET/" .. key, {}, value)
  elseif style == "etcd" then
    local body = '{"key":"' .. common.base64(key) .. '","value":"' .. b64value .. '"}'
    return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" }, body)
  elseif style == "floor" then
    return wrk.format("PUT", "/" .. key, { ["Content-Type"] = "application/json" }, value)
  end
  return wrk.format("PUT", "/v1/kv/" .. key, { ["Content-Type"] = "application/json", ["Authorization"] = os.getenv("AUTH") }, value)
end
