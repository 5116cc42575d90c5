-- wrk script: GET of one key that is in the cache.
function request()
  return wrk.format("GET", "/v1/kv/bench-hot")
end
