-- wrk script: the same request every time, from the environment:
-- METHOD, URLPATH, BODY (optional), CTYPE (optional), AUTH (optional, an
-- Authorization header value).
local method = os.getenv("METHOD") or "GET"
local path = os.getenv("URLPATH") or "/"
local body = os.getenv("BODY")
local headers = {}
if os.getenv("CTYPE") then headers["Content-Type"] = os.getenv("CTYPE") end
if os.getenv("AUTH") then headers["Authorization"] = os.getenv("AUTH") end
function request()
  return wrk.format(method, path, headers, body)
end
