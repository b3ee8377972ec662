-- wrk script shared by every case, so wrk does the same work everywhere.
-- Sends each request with the next key of $BENCH_KEYS_FILE (one raw key per line) in
-- x-api-key; nginx ignores the header. done() prints one machine-readable line.
local keys = {}
local i = 0

function init(args)
  local path = os.getenv("BENCH_KEYS_FILE")
  for line in io.lines(path) do
    if #line > 0 then keys[#keys + 1] = line end
  end
  assert(#keys > 0, "no keys in " .. tostring(path))
end

function request()
  i = i % #keys + 1
  return wrk.format(nil, nil, { ["x-api-key"] = keys[i] })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d rps=%.1f p50_us=%d p99_us=%d non2xx=%d sockerr=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
