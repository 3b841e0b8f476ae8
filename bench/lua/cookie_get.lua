-- GET a protected page with a fixed, valid auth cookie.
-- wrk -t1 -c64 -d10s --latency -s cookie_get.lua http://127.0.0.1:PORT/dashboard -- '<Cookie header>' 200
-- The request is built once (no request() function): as cheap for wrk as a plain GET.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
   if args[1] and args[1] ~= "" then
      wrk.headers["Cookie"] = args[1]
   end
   wrk.headers["User-Agent"] = "bench"
   bench_expect(args[2] or "200")
end
