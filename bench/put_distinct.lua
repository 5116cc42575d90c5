-- wrk script: durable PUT of distinct keys with a 100-byte JSON body.
-- Each wrk thread writes its own key range so keys never repeat in a run.
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

local n = 0
local body = '{"name":"benchmark user","email":"user@example.com","age":42,"tags":["a","b"],"active":true,"x":1}'
function request()
  n = n + 1
  return wrk.format("PUT", "/v1/kv/" .. (PREFIX or "bench/") .. tid .. "-" .. n,
    { ["Content-Type"] = "application/json" }, body)
end
