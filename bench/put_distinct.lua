-- wrk script: durable writes of distinct keys with a 100-byte JSON value.
-- STYLE picks the target's API: exdaas (PUT /v1/kv/k), floor (PUT /k),
-- webdis (PUT /SET/k with the value as body), etcd (POST /v3/kv/put).
-- PREFIX keeps runs apart.
local style = os.getenv("STYLE") or "exdaas"
local prefix = os.getenv("PREFIX") or "bench"
local value = '{"name":"benchmark user","email":"user@example.com","age":42,"tags":["a","b"],"active":true,"x":1}'

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(data)
  return ((data:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#data % 3 + 1])
end
local b64value = base64(value)

local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

local n = 0
function request()
  n = n + 1
  local key = prefix .. "-" .. tid .. "-" .. n
  if style == "webdis" then
    return wrk.format("PUT", "/SET/" .. key, {}, value)
  elseif style == "etcd" then
    local body = '{"key":"' .. base64(key) .. '","value":"' .. b64value .. '"}'
    return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" }, body)
  elseif style == "floor" then
    return wrk.format("PUT", "/" .. key, { ["Content-Type"] = "application/json" }, value)
  end
  return wrk.format("PUT", "/v1/kv/" .. key, { ["Content-Type"] = "application/json" }, value)
end
