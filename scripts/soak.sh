#!/usr/bin/env bash
# `make soak`: SOAK_SECS (default 600) of mixed traffic against the release binary while
# RSS, threads and open fds are sampled from /proc every SOAK_SAMPLE_SECS (default 10) and
# printed as a table. Then SIGTERM: the gateway must exit 0 and every answered gateway
# request must have its row in request_logs.
#
# Flat means: after the warm-up (the first third of the run, at most 120 s), the mean of
# the last three samples is within 10% + 8 MiB of the mean of the first three post-warm-up
# samples for RSS, within +8 for threads and within +16 for fds. The absolute slack covers
# allocator and connection-pool jitter; a leak of one KiB per request (~300 requests a
# second) grows RSS by ~18 MiB a minute and fails it.
# Uses the private Postgres (scripts/pg.sh) and free ports picked at run time, never the
# benchmark's 18081-18083.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
SECS=${SOAK_SECS:-600}
EVERY=${SOAK_SAMPLE_SECS:-10}
WARMUP=$((SECS / 3 < 120 ? SECS / 3 : 120))

scripts/deps.sh pg soak cargo
cargo build --release -q
scripts/pg.sh start >/dev/null
DB=soak_$$
scripts/pg.sh createdb "$DB"
WORK=$(mktemp -d)
GW_PID="" UP_PID=""
cleanup() {
    [[ -n $UP_PID ]] && kill "$UP_PID" 2>/dev/null || true
    [[ -n $GW_PID ]] && kill -KILL "$GW_PID" 2>/dev/null || true
    scripts/pg.sh dropdb "$DB" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 - <<'PY'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if not 18081 <= p <= 18083:
        print(p); break
PY
}
GW_PORT=$(free_port)
UP_PORT=$(free_port)
SECRET=soak-admin-secret-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
G=http://127.0.0.1:$GW_PORT

python3 scripts/lib/soak-load.py upstream "$UP_PORT" &
UP_PID=$!
DATABASE_URL=$(scripts/pg.sh url "$DB") ADMIN_SECRET=$SECRET LISTEN_ADDR=127.0.0.1:$GW_PORT \
    TOLLGATE_CLIENT_IP_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') TOLLGATE_TRUSTED_PROXIES=127.0.0.1 RUST_LOG=warn \
    target/release/tollgate serve 2>"$WORK/gateway.log" &
GW_PID=$!
for _ in $(seq 1 200); do
    curl -fs "$G/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs "$G/healthz" >/dev/null || { echo "soak: gateway did not start" >&2; cat "$WORK/gateway.log" >&2; exit 1; }

admin() { curl -fsS -X "$1" "$G$2" -H "x-admin-secret: $SECRET" -H 'content-type: application/json' ${3:+-d "$3"}; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
USER_ID=$(admin POST /admin/users '{"email":"soak@example.com","name":"Soak"}' | json '["id"]')
admin POST /admin/routes "{\"userId\":$USER_ID,\"prefix\":\"/api\",\"targetUrl\":\"http://127.0.0.1:$UP_PORT\"}" >/dev/null
key() { admin POST /admin/api-keys "{\"userId\":$USER_ID,\"name\":\"$1\",\"rateLimit\":$2}" | json '["rawKey"]'; }
VALID=$(key valid 100000000)
KEYS="{\"valid\":\"$VALID\",\"slow\":\"$VALID\",\"limited\":\"$(key limited 60)\",\"victim\":\"$(key victim 100)\"}"

echo "soak: ${SECS}s of mixed traffic against pid $GW_PID; samples every ${EVERY}s, warm-up ${WARMUP}s"
python3 scripts/lib/soak-load.py clients "$G" "$SECS" "$KEYS" >"$WORK/tally.json" &
LOAD_PID=$!

sample() { # elapsed rss_kib threads fds
    local rss threads fds
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$GW_PID/status")
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$GW_PID/status")
    fds=$(find "/proc/$GW_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
    echo "$1 $rss $threads $fds"
}
printf '%8s %10s %8s %6s\n' secs rss_kib threads fds
start=$(date +%s)
: >"$WORK/samples"
while kill -0 "$LOAD_PID" 2>/dev/null; do
    s=$(sample $(($(date +%s) - start)))
    echo "$s" >>"$WORK/samples"
    printf '%8s %10s %8s %6s\n' $s
    for _ in $(seq 1 "$EVERY"); do
        kill -0 "$LOAD_PID" 2>/dev/null || break
        sleep 1
    done
done
wait "$LOAD_PID"
echo "soak: client tally (kind status: count): $(cat "$WORK/tally.json")"

# Graceful shutdown: every answered gateway request must be in request_logs.
kill -TERM "$GW_PID"
status=0
wait "$GW_PID" || status=$?
GW_PID=""
answered=$(python3 -c "import json; t=json.load(open('$WORK/tally.json')); print(sum(v for k,v in t.items() if not k.endswith(' 0')))")
rows=$(scripts/pg.sh psql "$DB" -tAXc "select count(*) from request_logs")
echo "soak: gateway exit status $status; answered $answered, request_logs rows $rows"
fail=0
[[ $status -eq 0 ]] || { echo "soak: FAIL: gateway exited $status" >&2; fail=1; }
[[ $rows -eq $answered ]] || { echo "soak: FAIL: $answered answered but $rows rows logged" >&2; fail=1; }

python3 - "$WORK/samples" "$WARMUP" <<'PY' || fail=1
import sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
warm = [r for r in rows if r[0] >= int(sys.argv[2])]
if len(warm) < 6:
    sys.exit("soak: FAIL: too few samples after warm-up (%d); run longer" % len(warm))
mean = lambda rs, i: sum(r[i] for r in rs) / len(rs)
first, last = warm[:3], warm[-3:]
ok = True
for i, name, allowed in ((1, "rss_kib", lambda a: a * 1.10 + 8192),
                         (2, "threads", lambda a: a + 8),
                         (3, "fds", lambda a: a + 16)):
    a, b = mean(first, i), mean(last, i)
    flat = b <= allowed(a)
    ok &= flat
    print("soak: %-8s first %s -> last %s after warm-up (mean of 3: %.0f -> %.0f): %s"
          % (name, rows[0][i], rows[-1][i], a, b, "flat" if flat else "GROWING"))
sys.exit(0 if ok else 1)
PY
[[ $fail -eq 0 ]] && echo "soak: PASS" || { echo "soak: FAIL" >&2; exit 1; }
