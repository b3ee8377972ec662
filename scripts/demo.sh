#!/usr/bin/env bash
# `make demo`: the README walk-through, scripted, against a throw-away database
# (tollgate_demo) and a throw-away nginx upstream; everything is removed on exit.
# Shows: a proxied call, the rate limit (429 with Retry-After), revocation (401), analytics.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

DB=tollgate_demo
GW=127.0.0.1:18093 G=http://127.0.0.1:18093
scripts/deps.sh pg bench

TMP=$(mktemp -d /tmp/tollgate-demo.XXXXXX)
pids=() pg_started=""
cleanup() {
    local rc=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    scripts/pg.sh dropdb "$DB" >/dev/null 2>&1 || true
    if [[ -n $pg_started ]]; then scripts/pg.sh stop >/dev/null || true; fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/pg.sh status >/dev/null || pg_started=1
scripts/pg.sh start >/dev/null
scripts/pg.sh dropdb "$DB"
scripts/pg.sh createdb "$DB"

mkdir -p "$TMP/up" # the bench's upstream: 200 "ok\n" on 127.0.0.1:18081
nginx -p "$TMP/up/" -c "$REPO/scripts/conf/upstream.conf" -e "$TMP/up/error.log" &
pids+=($!)
S=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
ADMIN_SECRET=$S DATABASE_URL=$(scripts/pg.sh url "$DB") LISTEN_ADDR=$GW \
    TOLLGATE_CLIENT_IP_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') TOLLGATE_LOG_FLUSH_MS=100 target/release/tollgate serve 2>"$TMP/tollgate.log" &
pids+=($!)
for _ in $(seq 1 100); do curl -sf -o /dev/null "$G/readyz" && break; sleep 0.1; done

show() { echo; echo "\$ $*"; "$@"; echo; }
admin() { curl -s -H "x-admin-secret: $S" -H 'content-type: application/json' "$@"; }

show admin -X POST "$G/admin/users" -d '{"email":"ada@example.com","name":"Ada"}'
key=$(admin -X POST "$G/admin/api-keys" -d '{"userId":1,"name":"laptop","rateLimit":3}')
echo; echo "\$ admin -X POST $G/admin/api-keys -d '{\"userId\":1,\"name\":\"laptop\",\"rateLimit\":3}'"
echo "$key"
raw=$(grep -o '"rawKey":"[^"]*"' <<<"$key" | cut -d'"' -f4)
id=$(grep -o '"id":[0-9]*' <<<"$key" | head -n1 | cut -d: -f2)
show admin -X POST "$G/admin/routes" -d '{"userId":1,"prefix":"/","targetUrl":"http://127.0.0.1:18081"}'

echo; echo "four calls with a limit of 3 per window:"
for _ in 1 2 3 4; do
    curl -s -o /dev/null -D - "$G/hello?x=1" -H "x-api-key: $raw" \
        | grep -iE '^(HTTP|x-ratelimit-remaining|retry-after)' | tr -d '\r' | paste -sd' '
done
show admin -X DELETE "$G/admin/api-keys/$id"
show curl -s "$G/hello" -H "x-api-key: $raw"
sleep 0.3 # the logger flushes every TOLLGATE_LOG_FLUSH_MS
show admin "$G/analytics/overview"
show admin "$G/analytics/recent?limit=2"
