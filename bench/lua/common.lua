-- Shared by the bench scripts (loaded with dofile from each of them).
-- Counts responses per status in each thread, and done() prints ONE line:
--   BENCH_JSON {"requests":..,"rps":..,"p50_ms":..,"p99_ms":..,"statuses":{..},"unexpected":..,"errors":{..}}
-- "unexpected" counts responses whose status is not in the script's expected list
-- (wrk itself only counts non-2xx/3xx, so a 302 to the login page would pass).

counts = {}
expected_list = ""
threads = {}

local expected = {}

function bench_expect(list)
   expected_list = list or ""
   for code in string.gmatch(expected_list, "%d+") do
      expected[tonumber(code)] = true
   end
end

function setup(thread)
   table.insert(threads, thread)
end

function response(status, headers, body)
   counts[status] = (counts[status] or 0) + 1
end

-- Read a pool file: one user per line, tab-separated fields (see bench/harness.py).
function bench_read_pool(path)
   local pool = {}
   local f = assert(io.open(path, "r"))
   for line in f:lines() do
      if line ~= "" then
         local fields = {}
         for field in string.gmatch(line, "([^\t]*)\t?") do
            table.insert(fields, field)
         end
         table.insert(pool, fields)
      end
   end
   f:close()
   assert(#pool > 0, "empty pool: " .. path)
   return pool
end

local function ms(us)
   return string.format("%.3f", us / 1000.0)
end

function done(summary, latency, requests)
   local statuses, parts = {}, {}
   local unexpected, expect = 0, {}
   for _, t in ipairs(threads) do
      local c = t:get("counts") or {}
      for code, n in pairs(c) do
         statuses[code] = (statuses[code] or 0) + n
      end
      for code in string.gmatch(t:get("expected_list") or "", "%d+") do
         expect[tonumber(code)] = true
      end
   end
   for code, n in pairs(statuses) do
      table.insert(parts, string.format('"%d":%d', code, n))
      if next(expect) ~= nil and not expect[code] then
         unexpected = unexpected + n
      end
   end
   local e = summary.errors
   local secs = summary.duration / 1e6
   io.write("BENCH_JSON {",
      string.format('"requests":%d,"duration_s":%.3f,"rps":%.2f,', summary.requests, secs, summary.requests / secs),
      '"p50_ms":', ms(latency:percentile(50)), ',"p90_ms":', ms(latency:percentile(90)),
      ',"p99_ms":', ms(latency:percentile(99)), ',"max_ms":', ms(latency.max), ',"mean_ms":', ms(latency.mean),
      ',"statuses":{', table.concat(parts, ","), '},"unexpected":', tostring(unexpected),
      string.format(',"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
         e.connect, e.read, e.write, e.status, e.timeout),
      "}\n")
end
