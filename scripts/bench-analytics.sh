#!/usr/bin/env bash
# `make bench-analytics`: analytics over rollups versus scanning raw rows, at 10 M requests.
#   0. logger throughput: BENCH_LOGGER_ROWS (1,000,000) rows stamped within 10 s, as live
#      traffic at ~100 k requests/s would be, written through the logger's batch write
#      (`tollgate dev-load-logs`); then the tables are emptied;
#   1. loads BENCH_ANALYTICS_ROWS (10,000,000) synthetic log rows spread over the last 24 h
#      with `tollgate dev-load-logs`, which writes them through the logger's own batch write
#      (binary COPY + rollup upsert in one transaction, 5000 rows a batch): its rows/s is the
#      logger throughput figure;
#   2. starts tollgate on BENCH_ANALYTICS_ADDR (127.0.0.1:18090) and times, with curl,
#      GET /analytics/overview and /analytics/timeseries for 24 h (median of 5 after a warm-up);
#   3. times the raw-scan SQL those endpoints ran before rollups (plus percentiles) on the same
#      rows with psql, median of 5.
# Own database (tollgate_bench_analytics), dropped at the end unless BENCH_KEEP=1, which also
# keeps it loaded for a re-run with BENCH_ANALYTICS_REUSE=1 (skips step 1).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

ROWS=${BENCH_ANALYTICS_ROWS:-10000000}
LOGGER_ROWS=${BENCH_LOGGER_ROWS:-1000000}
ADDR=${BENCH_ANALYTICS_ADDR:-127.0.0.1:18090}
RUNS=5
DB=tollgate_bench_analytics
G=http://$ADDR
export ADMIN_SECRET=bench-analytics-admin-secret-0123456789
export TOLLGATE_CLIENT_IP_KEY=bench-analytics-client-ip-key-0123456789

scripts/deps.sh pg cargo
command -v curl >/dev/null || scripts/deps.sh bench
if (exec 3<>"/dev/tcp/${ADDR%:*}/${ADDR#*:}") 2>/dev/null; then
    echo "bench-analytics: $ADDR is already in use; set BENCH_ANALYTICS_ADDR" >&2
    exit 1
fi
cargo build --release
BIN=$REPO/target/release/tollgate

pid="" pg_started="" db_created=""
cleanup() {
    local rc=$?
    if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    if [[ -n $db_created && ${BENCH_KEEP:-} != 1 ]]; then scripts/pg.sh dropdb "$DB" || true; fi
    if [[ -n $pg_started ]]; then scripts/pg.sh stop >/dev/null || true; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/pg.sh status >/dev/null || pg_started=1
scripts/pg.sh start
DATABASE_URL=$(scripts/pg.sh url "$DB")
export DATABASE_URL
db_created=1
load0=$(cut -d' ' -f1-3 /proc/loadavg)

if [[ ${BENCH_ANALYTICS_REUSE:-} == 1 ]]; then
    echo "bench-analytics: reusing the rows already in $DB"
    load_line="(reused an earlier load)" dense_line="(skipped)"
else
    scripts/pg.sh dropdb "$DB"
    scripts/pg.sh createdb "$DB"
    echo "bench-analytics: logger throughput, $LOGGER_ROWS rows stamped within 10 s"
    dense_line=$(RUST_LOG=warn "$BIN" dev-load-logs "$LOGGER_ROWS" 10 | tail -1)
    echo "$dense_line"
    scripts/pg.sh psql "$DB" -q -c 'TRUNCATE request_logs, request_rollups'
    echo "bench-analytics: loading $ROWS rows through the logger's write path (takes minutes)"
    load_line=$(RUST_LOG=warn "$BIN" dev-load-logs "$ROWS" 86400 | tail -1)
    echo "$load_line"
    # What autovacuum would do soon after a bulk load: visibility map and planner statistics.
    scripts/pg.sh psql "$DB" -q -c 'VACUUM ANALYZE request_logs' -c 'VACUUM ANALYZE request_rollups'
fi
sizes=$(scripts/pg.sh psql "$DB" -X -At -F' ' -c \
    "SELECT (SELECT count(*) FROM request_logs), (SELECT count(*) FROM request_rollups),
            pg_size_pretty(pg_total_relation_size('request_logs')),
            pg_size_pretty(pg_total_relation_size('request_rollups'))")

RUST_LOG=warn LISTEN_ADDR=$ADDR "$BIN" serve &
pid=$!
for _ in $(seq 1 200); do
    curl -s -o /dev/null "$G/healthz" && break
    sleep 0.1
done

median() { sort -n | awk '{v[NR]=$1} END {printf "%.1f", v[int((NR+1)/2)]}'; }

http_ms() { # http_ms <path>: median of RUNS, in ms, after one warm-up
    curl -sS -f -o /dev/null -H "x-admin-secret: $ADMIN_SECRET" "$G$1"
    for _ in $(seq 1 "$RUNS"); do
        curl -sS -f -o /dev/null -w '%{time_total}\n' -H "x-admin-secret: $ADMIN_SECRET" "$G$1"
    done | awk '{print $1 * 1000}' | median
}

sql_ms() { # sql_ms <sql>: server-side time (psql \timing) median of RUNS, after one warm-up
    scripts/pg.sh psql "$DB" -X -q -o /dev/null -c "$1"
    for _ in $(seq 1 "$RUNS"); do
        scripts/pg.sh psql "$DB" -X -q -o /dev/null -c '\timing on' -c "$1" \
            | awk '/^Time:/ {print $2}'
    done | median
}

# The pre-rollup queries (src/analytics.rs before sql/003), with the percentiles the
# overview now reports, over the same rows.
RAW_OVERVIEW="SELECT count(*), count(*) FILTER (WHERE status >= 400), avg(latency_ms),
    percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms)
    FROM request_logs WHERE created_at >= now() - interval '24 hours'"
RAW_TIMESERIES="SELECT date_trunc('hour', created_at, 'UTC'), count(*),
    count(*) FILTER (WHERE status >= 400),
    percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms)
    FROM request_logs WHERE created_at >= now() - interval '24 hours' GROUP BY 1 ORDER BY 1"

echo
echo "bench-analytics: $(nproc) cores, load average before: $load0"
echo "rows: request_logs rollups size(logs) size(rollups) = $sizes"
echo "logger, live-rate rows:  $dense_line"
echo "logger, 10 M over 24 h:  $load_line"
printf '%-44s %12s\n' "case (24 h window, median of $RUNS)" "ms"
overview_ms=$(http_ms '/analytics/overview?window=24h')
timeseries_ms=$(http_ms '/analytics/timeseries?window=24h')
printf '%-44s %12s\n' "GET /analytics/overview (rollups)" "$overview_ms"
printf '%-44s %12s\n' "GET /analytics/timeseries bucket=hour" "$timeseries_ms"
printf '%-44s %12s\n' "GET /analytics/timeseries bucket=minute" \
    "$(http_ms '/analytics/timeseries?window=24h&bucket=minute')"
printf '%-44s %12s\n' "GET /analytics/overview userId=3" "$(http_ms '/analytics/overview?window=24h&userId=3')"
printf '%-44s %12s\n' "GET /analytics/timeseries userId=3" "$(http_ms '/analytics/timeseries?window=24h&userId=3')"
printf '%-44s %12s\n' "GET /analytics/top-routes" "$(http_ms '/analytics/top-routes?window=24h')"
printf '%-44s %12s\n' "GET /analytics/top-keys" "$(http_ms '/analytics/top-keys?window=24h')"
printf '%-44s %12s\n' "GET /analytics/overview window=30d" "$(http_ms '/analytics/overview?window=30d')"
raw_overview_ms=$(sql_ms "$RAW_OVERVIEW")
raw_timeseries_ms=$(sql_ms "$RAW_TIMESERIES")
printf '%-44s %12s\n' "raw scan: overview SQL (psql)" "$raw_overview_ms"
printf '%-44s %12s\n' "raw scan: hourly timeseries SQL (psql)" "$raw_timeseries_ms"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
# `name value` lines for the table of scripts/bench.sh.
echo "logger_rows_per_sec $(sed -n 's/.*: \([0-9]*\) rows\/s$/\1/p' <<<"$dense_line")"
echo "analytics_overview_ms $overview_ms"
echo "analytics_timeseries_ms $timeseries_ms"
echo "raw_overview_ms $raw_overview_ms"
echo "raw_timeseries_ms $raw_timeseries_ms"
