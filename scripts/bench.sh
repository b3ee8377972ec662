#!/usr/bin/env bash
# `make bench`: what does tollgate cost compared with a plain reverse proxy?
#   (a) nginx upstream, directly                    127.0.0.1:18081
#   (b) nginx reverse proxy -> (a)                  127.0.0.1:18082
#   (c) tollgate -> (a), 1000 keys rotated          127.0.0.1:18083
#   (d) tollgate -> (a), every request on one key   127.0.0.1:18083
# wrk -t1 -c32 --latency, ROUNDS rounds with the cases interleaved (so drift hits all of
# them alike), medians reported. Env: BENCH_SECS (10), BENCH_KEYS (1000), BENCH_ROUNDS (3),
# BENCH_KEEP=1 keeps the temp dir (wrk outputs, logs). Everything started here is stopped
# on exit, and the bench database is dropped.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

SECS=${BENCH_SECS:-10}
NKEYS=${BENCH_KEYS:-1000}
ROUNDS=${BENCH_ROUNDS:-3}
DB=tollgate_bench
UP=127.0.0.1:18081 PX=127.0.0.1:18082 GW=127.0.0.1:18083
G=http://$GW

scripts/deps.sh pg bench cargo
for addr in $UP $PX $GW; do # refuse to measure someone else's server
    if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
        echo "bench: $addr is already in use; stop whatever listens there" >&2
        exit 1
    fi
done
cargo build --release
load0=$(cut -d' ' -f1-3 /proc/loadavg) # other work on the machine skews every case

TMP=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
pids=() pg_started="" db_created=""
cleanup() {
    local rc=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n $db_created ]]; then scripts/pg.sh dropdb "$DB" || true; fi
    if [[ -n $pg_started ]]; then scripts/pg.sh stop >/dev/null || true; fi
    if [[ ${BENCH_KEEP:-} == 1 ]]; then echo "bench: kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/pg.sh status >/dev/null || pg_started=1
scripts/pg.sh start
scripts/pg.sh dropdb "$DB" # fresh: no rows or counters left by an earlier run
scripts/pg.sh createdb "$DB"
db_created=1

# nginx in the foreground of a background job: its pid is ours to kill. -p gives each
# instance its own prefix (pid file, error log, temp dirs); -e avoids /var/log/nginx.
start_nginx() { # start_nginx <name> <conf>
    mkdir -p "$TMP/$1"
    nginx -p "$TMP/$1/" -c "$REPO/scripts/bench/$2" -e "$TMP/$1/error.log" &
    pids+=($!)
}
start_nginx upstream upstream.conf
start_nginx proxy proxy.conf

# Bcrypt cost 4: bcrypt runs only on a key's first use (the verified key is then cached)
# and every key is warmed below, so the cost never touches the measured path; 4 just
# makes creating and warming 1000 keys take seconds instead of minutes.
echo "bench: tollgate with TOLLGATE_BCRYPT_COST=4 (bcrypt only affects a key's first use;" \
     "all keys are warmed before measuring)"
ADMIN_SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
ADMIN_SECRET=$ADMIN_SECRET DATABASE_URL=$(scripts/pg.sh url "$DB") LISTEN_ADDR=$GW \
    TOLLGATE_BCRYPT_COST=4 RUST_LOG=${RUST_LOG:-warn} \
    target/release/tollgate serve 2>"$TMP/tollgate.log" &
pids+=($!)
tg_pid=$!

wait_http() { # wait_http <url>: up to 20 s
    for _ in $(seq 1 200); do
        curl -s -o /dev/null "$1" && return 0
        kill -0 "$tg_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench: $1 did not answer; tollgate log:" >&2
    tail -n 20 "$TMP/tollgate.log" >&2
    exit 1
}
wait_http "http://$UP/"
wait_http "http://$PX/"
wait_http "$G/readyz"

admin() { # admin <path> <json>: POST, fail on non-2xx, print the body
    curl -sS -f -X POST "$G$1" -H "x-admin-secret: $ADMIN_SECRET" \
        -H 'content-type: application/json' -d "$2"
}
uid=$(admin /admin/users '{"email":"bench@example.com","name":"bench"}' \
    | grep -o '"id":[0-9]*' | head -n1 | cut -d: -f2)
admin /admin/routes "{\"userId\":$uid,\"prefix\":\"/\",\"targetUrl\":\"http://$UP\"}" >/dev/null

echo "bench: creating $NKEYS keys"
seq 1 "$NKEYS" | xargs -P 4 -I{} curl -sS -f -X POST "$G/admin/api-keys" \
    -H "x-admin-secret: $ADMIN_SECRET" -H 'content-type: application/json' \
    -d "{\"userId\":$uid,\"name\":\"bench-{}\",\"rateLimit\":1000000000}" -w '\n' >"$TMP/keys.json"
grep -o '"rawKey":"[^"]*"' "$TMP/keys.json" | cut -d'"' -f4 >"$TMP/keys.txt"
[[ $(wc -l <"$TMP/keys.txt") -eq $NKEYS ]] || { echo "bench: expected $NKEYS raw keys" >&2; exit 1; }
head -n1 "$TMP/keys.txt" >"$TMP/onekey.txt"

echo "bench: warming every key once (its one bcrypt verification)"
codes=$(xargs -P 4 -I{} curl -s -o /dev/null -w '%{http_code}\n' -H 'x-api-key: {}' "$G/" \
    <"$TMP/keys.txt" | sort | uniq -c | tr -s ' \n' ' ')
[[ $codes =~ ^\ ?$NKEYS\ 200\ ?$ ]] || { echo "bench: warm-up statuses: $codes" >&2; exit 1; }

declare -A URL=([a]="http://$UP/" [b]="http://$PX/" [c]="$G/" [d]="$G/")
declare -A KEYS=([a]=keys.txt [b]=keys.txt [c]=keys.txt [d]=onekey.txt)
declare -A NAME=(
    [a]="(a) nginx upstream, direct"
    [b]="(b) nginx reverse proxy"
    [c]="(c) tollgate, $NKEYS keys rotated"
    [d]="(d) tollgate, one key"
)
for r in $(seq 1 "$ROUNDS"); do
    for c in a b c d; do
        out=$TMP/wrk-$c-$r.txt
        BENCH_KEYS_FILE=$TMP/${KEYS[$c]} wrk -t1 -c32 -d"${SECS}s" --latency \
            -s scripts/bench/rotate.lua "${URL[$c]}" >"$out"
        line=$(grep '^BENCH ' "$out") || { cat "$out" >&2; exit 1; }
        echo "round $r/$ROUNDS ${NAME[$c]}: ${line#BENCH }"
        echo "$c ${line#BENCH }" >>"$TMP/results.txt"
    done
done

median() { # median <case> <field>: middle value over the rounds
    grep "^$1 " "$TMP/results.txt" | grep -o " $2=[0-9.]*" | cut -d= -f2 | sort -g \
        | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}
echo
echo "wrk -t1 -c32 -d${SECS}s, median of $ROUNDS rounds; $(nproc) cores shared by wrk, nginx," \
     "tollgate and Postgres (load average before the bench: $load0)"
printf '%-34s %10s %9s %9s %8s\n' case req/s "p50 ms" "p99 ms" non-2xx
for c in a b c d; do
    non2xx=$(grep "^$c " "$TMP/results.txt" | grep -o ' non2xx=[0-9]*' | cut -d= -f2 \
        | awk '{s+=$1} END {print s+0}')
    printf '%-34s %10.0f %9.2f %9.2f %8d\n' "${NAME[$c]}" "$(median "$c" rps)" \
        "$(awk -v u="$(median "$c" p50_us)" 'BEGIN {print u/1000}')" \
        "$(awk -v u="$(median "$c" p99_us)" 'BEGIN {print u/1000}')" "$non2xx"
done
awk -v c="$(median c rps)" -v b="$(median b rps)" \
    'BEGIN {printf "ratio (c)/(b) req/s: %.2f\n", c / b}'
echo "tollgate /admin/stats: $(curl -s "$G/admin/stats" -H "x-admin-secret: $ADMIN_SECRET")"
sleep 0.5 # let the logger flush, then say what the non-2xx answers were
echo "tollgate responses by status (request_logs): $(scripts/pg.sh psql "$DB" -tAXc \
    "select string_agg(status || ': ' || n, ', ' order by status)
       from (select status, count(*) n from request_logs group by status) s")"
