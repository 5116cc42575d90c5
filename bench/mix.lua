-- wrk script: 90% GET / 10% PUT over KEYS keys named k0..k<KEYS-1>.
-- STYLE picks the target's API: exdaas (/v1/kv/k) or webdis (/GET/k, /SET/k).
local keys = tonumber(os.getenv("KEYS") or "1000000")
local style = os.getenv("STYLE") or "exdaas"
local value = '{"name":"benchmark user","email":"user@example.com","age":42,"tags":["a","b"],"active":true,"x":2}'
local headers = { ["Content-Type"] = "application/json" }
function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end
local started = false
function request()
  if not started then math.randomseed(seed); started = true end
  local key = "k" .. math.random(0, keys - 1)
  local put = math.random(1, 10) == 1
  if style == "webdis" then
    if put then
      return wrk.format("PUT", "/SET/" .. key, nil, value)
    end
    return wrk.format("GET", "/GET/" .. key)
  end
  if put then
    return wrk.format("PUT", "/v1/kv/" .. key, headers, value)
  end
  return wrk.format("GET", "/v1/kv/" .. key)
end
