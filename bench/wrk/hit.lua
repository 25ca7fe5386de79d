-- Cache-HIT workload: every request asks GET /users/{id} for an id drawn at random
-- from a small, already-cached set (one id per line in the file given as first arg).
-- usage: wrk ... -s bench/wrk/hit.lua URL -- IDS_FILE [BEARER_TOKEN]
-- keel protects GET /users/{id}: its runs send an admin's access token on every request.
local ids = {}
local headers = {}

local function load(path)
  local t = {}
  for line in io.lines(path) do
    if #line > 0 then t[#t + 1] = line end
  end
  return t
end

function init(args)
  ids = load(args[1])
  if args[2] and #args[2] > 0 then headers["Authorization"] = "Bearer " .. args[2] end
  if #ids == 0 then error("no ids in " .. tostring(args[1])) end
  math.randomseed(os.time())
end

function request()
  return wrk.format("GET", "/users/" .. ids[math.random(#ids)], headers)
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
end
