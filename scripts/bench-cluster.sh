#!/usr/bin/env bash
# `make bench-cluster`: two tollgate replicas behind haproxy on one database.
#   nginx upstream                          127.0.0.1:18081
#   haproxy -> replicas A and B             127.0.0.1:18082
#   replica A                               127.0.0.1:18083
#   replica B, haproxy -> A only            free ports picked at start
# Shows (a) aggregate throughput of both replicas vs one (both through haproxy, so the LB
# hop is the same), (b) one key's limit enforced exactly across both replicas, (c) a
# revocation made through A refused by B (time measured), and (d) what the counter costs
# the database on its own (pgbench on the replicas' batch statement), for the counters' share of database
# load at N replicas, and (e) a rolling restart (A, then B: SIGTERM, start again) under steady
# traffic through haproxy: requests, failures, and request_logs rows against the answers.
# Env: BENCH_SECS (10), BENCH_KEYS (1000), BENCH_ROLL_SECS (30), BENCH_KEEP=1.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

SECS=${BENCH_SECS:-10}
ROLL_SECS=${BENCH_ROLL_SECS:-30}
NKEYS=${BENCH_KEYS:-1000}
DB=tollgate_bench_cluster
UP=127.0.0.1:18081 LB=127.0.0.1:18082 GA=127.0.0.1:18083
PGBIN=/usr/lib/postgresql/15/bin

scripts/deps.sh pg bench cargo
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GB=127.0.0.1:$(free_port) LB1=127.0.0.1:$(free_port) STATS=127.0.0.1:$(free_port)
. scripts/lib/bench-common.sh
refuse_busy bench-cluster $UP $LB $GA $GB $LB1 $STATS
cargo build --release
load0=$(cut -d' ' -f1-3 /proc/loadavg)

bench_start bench-cluster "$DB"
psql_db() { scripts/pg.sh psql "$DB" -tAX "$@"; }

mkdir -p "$TMP/upstream"
nginx -p "$TMP/upstream/" -c "$REPO/scripts/conf/upstream.conf" -e "$TMP/upstream/error.log" &
pids+=($!)

ADMIN_SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
CLIENT_IP_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
start_replica() { # start_replica <name> <addr>: prints its pid
    ADMIN_SECRET=$ADMIN_SECRET DATABASE_URL=$(scripts/pg.sh url "$DB") LISTEN_ADDR=$2 \
        TOLLGATE_CLIENT_IP_KEY=$CLIENT_IP_KEY TOLLGATE_BCRYPT_COST=4 TOLLGATE_TRUSTED_PROXIES=127.0.0.1 RUST_LOG=${RUST_LOG:-warn} \
        TOLLGATE_RATE_WINDOW_SECS=3600 \
        target/release/tollgate serve 2>"$TMP/$1.log" &
    pids+=($!)
}
start_replica a "$GA"
pid_a=$!
# B starts once A has migrated, so the log shows one migration, not a wait on the lock.
wait_http() { # wait_http <url>: up to 20 s
    for _ in $(seq 1 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "bench-cluster: $1 did not answer" >&2
    tail -n 20 "$TMP"/*.log >&2
    exit 1
}
wait_http "http://$GA/readyz"
start_replica b "$GB"
pid_b=$!
wait_http "http://$GB/readyz"

# The load-balancer configuration docs/operations.md ("Running more than one") shows, plus a second frontend with A alone.
sed -e "s/@LB@/$LB/; s/@LB1@/$LB1/; s/@A@/$GA/g; s/@B@/$GB/g" scripts/conf/haproxy.cfg \
    >"$TMP/haproxy.cfg"
# Plus a stats page: (e) waits until haproxy has a restarted replica up again.
printf 'listen stats\n    bind %s\n    stats enable\n    stats uri /stats\n' "$STATS" \
    >>"$TMP/haproxy.cfg"
haproxy -db -f "$TMP/haproxy.cfg" 2>"$TMP/haproxy.log" &
pids+=($!)
wait_http "http://$UP/"
for _ in $(seq 1 50); do # both servers up in haproxy's health checks
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$LB/readyz") == 200 ]] && break
    sleep 0.1
done

admin() { # admin <base> <method> <path> [json]: fail on non-2xx, print the body
    curl -sS -f -X "$2" "$1$3" -H "x-admin-secret: $ADMIN_SECRET" \
        -H 'content-type: application/json' ${4:+-d "$4"}
}
A=http://$GA B=http://$GB
uid=$(admin "$A" POST /admin/users '{"email":"bench@example.com","name":"bench"}' \
    | grep -o '"id":[0-9]*' | head -n1 | cut -d: -f2)
admin "$A" POST /admin/routes "{\"userId\":$uid,\"prefix\":\"/\",\"targetUrl\":\"http://$UP\"}" >/dev/null

echo "bench-cluster: creating $NKEYS keys"
seq 1 "$NKEYS" | xargs -P 4 -I{} curl -sS -f -X POST "$A/admin/api-keys" \
    -H "x-admin-secret: $ADMIN_SECRET" -H 'content-type: application/json' \
    -d "{\"userId\":$uid,\"name\":\"bench-{}\",\"rateLimit\":1000000000}" -w '\n' >"$TMP/keys.json"
grep -o '"rawKey":"[^"]*"' "$TMP/keys.json" | cut -d'"' -f4 >"$TMP/keys.txt"
echo "bench-cluster: warming every key on both replicas"
for base in "$A" "$B"; do
    xargs -P 4 -I{} curl -s -o /dev/null -H 'x-api-key: {}' "$base/" <"$TMP/keys.txt"
done

run_wrk() { # run_wrk <name> <url> <keys file>: prints the BENCH line
    BENCH_KEYS_FILE=$3 wrk -t1 -c32 -d"${SECS}s" --latency -s scripts/conf/rotate.lua "$2" \
        >"$TMP/wrk-$1.txt"
    grep '^BENCH ' "$TMP/wrk-$1.txt" | cut -d' ' -f2-
}
field() { grep -o "$2=[0-9.]*" <<<"$1" | cut -d= -f2; }

echo "bench-cluster: (a) throughput, ${SECS}s each, wrk -t1 -c32, $NKEYS keys"
one=$(run_wrk one "http://$LB1/" "$TMP/keys.txt")
echo "  haproxy -> A only:  $one"
both=$(run_wrk both "http://$LB/" "$TMP/keys.txt")
echo "  haproxy -> A and B: $both"

echo "bench-cluster: (b) one key, limit 500 per hour, hammered through haproxy for ${SECS}s"
# Both replicas run an hour-long window (TOLLGATE_RATE_WINDOW_SECS above): a fresh key has no previous bucket, so exactly 500 may pass unless
# the run straddles the top of the hour (then the old bucket's weight admits a few more).
limited=$(admin "$A" POST /admin/api-keys "{\"userId\":$uid,\"name\":\"limited\",\"rateLimit\":500}")
lkey=$(grep -o '"rawKey":"[^"]*"' <<<"$limited" | cut -d'"' -f4)
lid=$(grep -o '"id":[0-9]*' <<<"$limited" | head -n1 | cut -d: -f2)
echo "$lkey" >"$TMP/limited.txt"
hammer=$(run_wrk limited "http://$LB/" "$TMP/limited.txt")
total=$(field "$hammer" requests) refused=$(field "$hammer" non2xx)
admitted=$((total - refused))
sleep 0.5
by_replica=$(psql_db -c "select count(*) filter (where status = 200), count(*)
    from request_logs where api_key_id = $lid")
# Both buckets of the key's sliding windows (the test harness' `counted_for_key`).
counted=$(psql_db -c "select coalesce(sum(c + p), 0) from limit_counters, unnest(counts, prevs) as x(c, p)
    where kind = 'k' and owner_id = $lid")
echo "  $total requests, $admitted admitted, $refused refused; counter rows hold $counted;" \
     "request_logs (200s, all): ${by_replica//|/, }"

echo "bench-cluster: (c) revoke through A, poll B every 10 ms until it refuses"
rkey_json=$(admin "$A" POST /admin/api-keys "{\"userId\":$uid,\"name\":\"revoked\"}")
rkey=$(grep -o '"rawKey":"[^"]*"' <<<"$rkey_json" | cut -d'"' -f4)
rid=$(grep -o '"id":[0-9]*' <<<"$rkey_json" | head -n1 | cut -d: -f2)
[[ $(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $rkey" "$B/") == 200 ]] \
    || { echo "bench-cluster: B did not accept the fresh key" >&2; exit 1; }
t0=$(date +%s%N)
admin "$A" DELETE "/admin/api-keys/$rid" >/dev/null
revoke_ms=""
for _ in $(seq 1 500); do
    if [[ $(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $rkey" "$B/") == 401 ]]; then
        revoke_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
        break
    fi
    sleep 0.01
done
echo "  B refused the key ${revoke_ms:-NEVER (5 s)} ms after A's revoke returned"

echo "bench-cluster: (d) the counting round alone: pgbench, 1 client, ${SECS}s, $NKEYS keys"
# The replicas' own statements (`tollgate dev-counter-sql` prints the round's PREPAREs): lock
# and read B distinct keys' counter rows starting at a random one, then write them back, in
# one transaction, as a replica's round does (there in two round trips, here in four).
take_script() { # take_script <batch size>: a pgbench script
    echo "\set k random(1, $((NKEYS - $1 + 1)))"
    target/release/tollgate dev-counter-sql | B=$1 python3 -c '
import os, re, sys
b = int(os.environ["B"])
bodies = dict(re.findall(r"PREPARE (\w+)\([^)]*\) AS\s+(.*?);(?=\s*PREPARE|\s*$)", sys.stdin.read(), re.S))
keys = f"(SELECT array_agg(g) FROM generate_series(:k::int8, :k::int8 + {b - 1}) g)"
kinds = f"array_fill(\x27k\x27::\"char\", ARRAY[{b}])"
def fill(v, t): return f"array_fill({v}::{t}, ARRAY[{b}])"
def bind(sql, args):
    for i, a in reversed(list(enumerate(args, 1))):
        sql = sql.replace(f"${i}", a)
    return " ".join(sql.split()) + ";"
print("BEGIN;")
print(bind(bodies["tollgate_lock"], [kinds, keys, "0::float8"]))
print(bind(bodies["tollgate_write"], [kinds, keys, fill("\x27{default/3600}\x27", "text"),
      "(SELECT array_agg(\x27{\x27 || floor(extract(epoch FROM now()) / 3600) || \x27}\x27) FROM generate_series(1, %d))" % b,
      fill("\x27{1}\x27", "text"), fill("\x27{0}\x27", "text"), fill("0", "int8"), fill("0", "int8")]))
print("COMMIT;")'
}
take_script 1 >"$TMP/take1.sql"
take_script 16 >"$TMP/take16.sql"
pgb() { # pgb <synchronous_commit> <script>: prints rounds/s
    PGOPTIONS="-c synchronous_commit=$1" runuser -u postgres -- "$PGBIN/pgbench" -n -M prepared \
        -c 1 -j 1 -T "$SECS" -f "$TMP/$2.sql" -h "$(scripts/pg.sh dir)/run" -p "$(scripts/pg.sh port)" -U postgres "$DB" \
        2>/dev/null | grep -o "tps = [0-9]*" | cut -d" " -f3
}
chmod 755 "$TMP" && chmod 644 "$TMP/take1.sql" "$TMP/take16.sql"
tps_one=$(pgb off take1)
tps_16=$(pgb off take16)
tps_on=$(pgb on take16)
echo "  batch of 1: $tps_one rounds/s; batch of 16: $tps_16 rounds/s ($((tps_16 * 16)) keys/s)" \
     "with synchronous_commit=off, $tps_on/s with on"

echo "bench-cluster: (e) rolling restart under ${ROLL_SECS}s of steady traffic through haproxy:" \
     "A, then B, SIGTERMed and started again (default drain, shipped haproxy checks)"
roll=$(admin "$A" POST /admin/api-keys "{\"userId\":$uid,\"name\":\"rolling\",\"rateLimit\":1000000000}")
roll_key=$(grep -o '"rawKey":"[^"]*"' <<<"$roll" | cut -d'"' -f4)
roll_id=$(grep -o '"id":[0-9]*' <<<"$roll" | head -n1 | cut -d: -f2)
lb_up() { # lb_up <a|b>: haproxy's health checks have the replica up
    [[ $(curl -s "http://$STATS/stats;csv" | awk -F, -v s="$1" \
        '$1 == "replicas" && $2 == s {print $18}') == UP ]]
}
restart_replica() { # restart_replica <name> <addr> <pid>: SIGTERM, exit 0, started again, up in haproxy
    local t0 rc=0
    t0=$(date +%s%N)
    kill -TERM "$3"
    wait "$3" || rc=$?
    [[ $rc == 0 ]] || { echo "bench-cluster: replica $1 exited $rc" >&2; exit 1; }
    start_replica "$1-restarted" "$2"
    wait_http "http://$2/readyz"
    for _ in $(seq 1 100); do lb_up "$1" && break; sleep 0.1; done
    lb_up "$1" || { echo "bench-cluster: haproxy never saw $1 up again" >&2; exit 1; }
    echo "  $1: exit 0, back in haproxy $(( ($(date +%s%N) - t0) / 1000000 )) ms after SIGTERM"
}
# Four keep-alive clients and two opening a connection per request, each waiting 20 ms
# between requests (scripts/lib/soak-load.py).
python3 scripts/lib/soak-load.py clients "http://$LB" "$ROLL_SECS" \
    "{\"valid\":\"$roll_key\",\"fresh\":\"$roll_key\"}" >"$TMP/roll.json" &
load=$!
sleep 2
restart_replica a "$GA" "$pid_a"
restart_replica b "$GB" "$pid_b"
kill -0 "$load" 2>/dev/null \
    || echo "bench-cluster: the traffic ended before the restarts did; raise BENCH_ROLL_SECS" >&2
wait "$load"
sleep 3 # the replicas' log flush (TOLLGATE_LOG_FLUSH_MS, 2 s)
read -r roll_sent roll_failed < <(python3 -c 'import json, sys
t = json.load(open(sys.argv[1]))
print(sum(t.values()), sum(n for k, n in t.items() if not k.endswith(" 200")))' "$TMP/roll.json")
roll_rows=$(psql_db -c "select count(*) from request_logs where api_key_id = $roll_id")
roll_match=$([[ $roll_rows == "$roll_sent" ]] && echo "all matched" || echo "MISMATCH")
echo "  $roll_sent requests, $roll_failed failed ($(cat "$TMP/roll.json")); request_logs rows:" \
     "$roll_rows ($roll_match)"

rps1=$(field "$one" rps) rps2=$(field "$both" rps)
echo
echo "bench-cluster summary ($(nproc) cores shared by everything; load average before: $load0," \
     "after: $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%-52s %s\n' \
    "(a) one replica via haproxy, req/s" "$(printf %.0f "$rps1") (p99 $(field "$one" p99_us) µs)" \
    "(a) two replicas via haproxy, req/s" "$(printf %.0f "$rps2") (p99 $(field "$both" p99_us) µs)" \
    "(a) two ÷ one" "$(awk -v a="$rps2" -v b="$rps1" 'BEGIN {printf "%.2f", a/b}')" \
    "(b) limit 500/h on one key across both: admitted" "$admitted (counter rows: $counted)" \
    "(c) revoke on A refused by B after" "${revoke_ms:-never} ms" \
    "(d) counting rounds/s one database connection runs" \
    "$tps_one (batch of 1), $tps_16 (batch of 16 = $((tps_16 * 16)) keys/s; $tps_on with sync commit on)" \
    "(d) counters' share of one connection at two replicas' peak" \
    "$(awk -v r="$rps2" -v t="$tps_one" 'BEGIN {printf "%.0f%% even if every request were a batch of 1 (%.0f req/s ÷ %.0f rounds/s)", 100*r/t, r, t}')" \
    "(e) rolling restart: requests, failed, log rows" "$roll_sent, $roll_failed, $roll_rows ($roll_match)"
