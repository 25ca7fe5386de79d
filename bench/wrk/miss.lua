-- Cache-MISS workload: walks DISTINCT ids, so no id repeats within the run.
-- usage: wrk ... -s bench/wrk/miss.lua URL -- IDS_FILE OFFSET NTHREADS [BEARER_TOKEN]
-- Thread k of n takes ids OFFSET+k+1, OFFSET+k+1+n, ... (disjoint strides); all the
-- connections of one thread share its counter, so no two requests use the same id.
-- done() prints "ids_used=<max index used>" and "ids_exhausted=<count>" so the
-- orchestrator can start the next run after this one and flag a wrapped list.
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local path, offset = args[1], tonumber(args[2] or "0")
  ids = {}
  for line in io.lines(path) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  nthreads = tonumber(args[3] or "1")
  -- keel protects GET /users/{id}: its runs send an admin's access token on every request.
  headers = {}
  if args[4] and #args[4] > 0 then headers["Authorization"] = "Bearer " .. args[4] end
  pos = offset + tid + 1
  used = 0
  exhausted = 0
end

function request()
  local i = pos
  pos = pos + nthreads
  if i > #ids then
    exhausted = exhausted + 1
    i = ((i - 1) % #ids) + 1
  end
  used = i
  return wrk.format("GET", "/users/" .. ids[i], headers)
end

-- Precise figures for the orchestrator (microseconds), one line it parses.
local function report(summary, latency)
  local e = summary.errors
  io.write(string.format(
    "KEELBENCH requests=%d duration_us=%d status_errors=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end

function done(summary, latency, requests)
  report(summary, latency)
  local maxused, ex = 0, 0
  for _, t in ipairs(threads) do
    local u = t:get("used") or 0
    if u > maxused then maxused = u end
    ex = ex + (t:get("exhausted") or 0)
  end
  io.write(string.format("ids_used=%d\nids_exhausted=%d\n", maxused, ex))
end
