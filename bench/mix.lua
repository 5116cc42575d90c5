-- wrk script: 90% GET / 10% PUT over KEYS keys named k0..k<KEYS-1>.
local keys = tonumber(os.getenv("KEYS") or "1000000")
local value = '{"name":"benchmark user","email":"user@example.com","age":42,"tags":["a","b"],"active":true,"x":2}'
local headers = { ["Content-Type"] = "application/json" }
function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end
local started = false
function request()
  if not started then math.randomseed(seed); started = true end
  local path = "/v1/kv/k" .. math.random(0, keys - 1)
  if math.random(1, 10) == 1 then
    return wrk.format("PUT", path, headers, value)
  end
  return wrk.format("GET", path)
end
