-- Form logins (application/x-www-form-urlencoded POST /login) over a pool of users.
-- wrk -t1 -c32 -d10s --latency -s form_login.lua http://127.0.0.1:PORT -- POOL_FILE 302 [/login]
-- Pool lines: username TAB password TAB csrf_token TAB Cookie-header (the last two may be empty:
-- the port ties its csrf_token to its quart_app_session cookie; the seed has no CSRF).
-- The response's cookies are ignored, so every request is a fresh, anonymous login.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local reqs, n, i = {}, 0, 0

local function enc(s)
   return (string.gsub(s, "[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

function init(args)
   local pool = bench_read_pool(args[1])
   bench_expect(args[2] or "302")
   local path = args[3] or "/login"
   for _, u in ipairs(pool) do
      local body = "username=" .. enc(u[1]) .. "&password=" .. enc(u[2])
      if u[3] and u[3] ~= "" then
         body = body .. "&csrf_token=" .. enc(u[3])
      end
      local headers = {
         ["Content-Type"] = "application/x-www-form-urlencoded",
         ["User-Agent"] = "bench",
      }
      if u[4] and u[4] ~= "" then
         headers["Cookie"] = u[4]
      end
      table.insert(reqs, wrk.format("POST", path, headers, body))
   end
   n = #reqs
   i = math.random(n) - 1
end

function request()
   i = i % n + 1
   return reqs[i]
end
