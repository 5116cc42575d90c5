-- wrk script: the KV operations beside a plain durable PUT. OP picks one:
--   put       PUT /v1/kv/k of distinct keys (the baseline)
--   put_ttl   the same with ?ttl=1h
--   patch     PATCH (merge patch) of one of KEYS existing keys
--   incr      POST ?op=incr of one of KEYS counters
--   txn4      POST /v1/txn putting 4 distinct keys (on different shards)
--   etcd_put  etcd's PUT through its JSON gateway (the reference)
--   etcd_txn4 etcd's Txn putting 4 distinct keys
-- PREFIX keeps runs apart.
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local op = os.getenv("OP") or "put"
local prefix = os.getenv("PREFIX") or "ops"
local keys = tonumber(os.getenv("KEYS") or "1000")
local value = '{"name":"benchmark user","email":"user@example.com","age":42,"tags":["a","b"],"active":true,"x":1}'
local json = { ["Content-Type"] = "application/json" }

local b64value = common.base64(value)

setup = common.number_threads

local n = 0
function request()
  n = n + 1
  local key = prefix .. "-" .. tid .. "-" .. n
  if op == "put_ttl" then
    return wrk.format("PUT", "/v1/kv/" .. key .. "?ttl=1h", json, value)
  elseif op == "patch" then
    local k = prefix .. "/doc/" .. (n * 7919 + tid) % keys
    return wrk.format("PATCH", "/v1/kv/" .. k, { ["Content-Type"] = "application/merge-patch+json" },
      '{"age":' .. n .. ',"seen":true}')
  elseif op == "incr" then
    local k = prefix .. "/ctr/" .. (n * 7919 + tid) % keys
    return wrk.format("POST", "/v1/kv/" .. k .. "?op=incr&path=/n", {}, "")
  elseif op == "txn4" then
    local ops = {}
    for i = 1, 4 do
      ops[i] = '{"op":"put","key":"' .. key .. "-" .. i .. '","value":' .. value .. '}'
    end
    return wrk.format("POST", "/v1/txn", json, '{"success":[' .. table.concat(ops, ",") .. ']}')
  elseif op == "etcd_put" then
    return wrk.format("POST", "/v3/kv/put", json, '{"key":"' .. common.base64(key) .. '","value":"' .. b64value .. '"}')
  elseif op == "etcd_txn4" then
    local ops = {}
    for i = 1, 4 do
      ops[i] = '{"requestPut":{"key":"' .. common.base64(key .. "-" .. i) .. '","value":"' .. b64value .. '"}}'
    end
    return wrk.format("POST", "/v3/kv/txn", json, '{"success":[' .. table.concat(ops, ",") .. ']}')
  end
  return wrk.format("PUT", "/v1/kv/" .. key, json, value)
end
