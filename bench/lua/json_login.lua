-- JSON logins (POST /api/login {"username","password"}) over a pool of users.
-- wrk -t1 -c32 -d10s --latency -s json_login.lua http://127.0.0.1:PORT -- POOL_FILE 200,201 [/api/login]
-- Pool lines: username TAB password (further fields ignored). Response cookies are ignored.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local reqs, n, i = {}, 0, 0

local function json_string(s)
   return '"' .. string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end) .. '"'
end

function init(args)
   local pool = bench_read_pool(args[1])
   bench_expect(args[2] or "200,201")
   local path = args[3] or "/api/login"
   for _, u in ipairs(pool) do
      local body = '{"username":' .. json_string(u[1]) .. ',"password":' .. json_string(u[2]) .. "}"
      table.insert(reqs, wrk.format("POST", path, {
         ["Content-Type"] = "application/json",
         ["User-Agent"] = "bench",
      }, body))
   end
   n = #reqs
   i = math.random(n) - 1
end

function request()
   i = i % n + 1
   return reqs[i]
end
