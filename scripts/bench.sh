#!/usr/bin/env bash
# `make bench`: what does tollgate cost compared with a plain reverse proxy?
#   (a) nginx upstream, directly                    127.0.0.1:18081
#   (b) nginx reverse proxy -> (a)                  127.0.0.1:18082
#   (c) tollgate -> (a), 1000 keys rotated          127.0.0.1:18083
#   (d) tollgate -> (a), every request on one key   127.0.0.1:18083
#   (e) tollgate's /healthz: the server layer alone (tiny_http; no auth, database or
#       upstream), the ceiling of the fixed shape
#   (f) as (c), but every key on a plan of three limits and a quota, and its user (one of
#       BENCH_F_USERS, 10) with an owner-wide limit: five checks a request (issue 12)
#   (g) as (c), but with the database unreachable (fail-open, log rows buffered): the
#       ceiling of the full path in this shape, what (c) and (d) are measured against (issue
#       16). Its own instance, on a role of its own that is refused logins once its keys are
#       warm (its connections are ended too), so the other cases keep their database.
#   (h) as (c), but the route is a pool of two targets, (a)'s nginx on a second port too
#       (127.0.0.1:18085), balanced round-robin (issue 14)
# Every tollgate case runs twice, on instances that reach Postgres over its unix socket
# and over TCP on 127.0.0.1 (what a database on another host pays at least): (ct), (dt),
# ... in the same table. BENCH_DB ("socket tcp") picks which.
# wrk -t1 -c32 --latency, ROUNDS rounds with the cases interleaved (so drift hits all of
# them alike; (c), (g), (d) side by side, see RUN_ORDER), medians reported in ONE
# table with each case's ratio to (b) and its target (issue 6), plus the CPU each request
# cost tollgate, Postgres and the whole machine (read from /proc around every run: the
# profile that says where a request's time goes). The logger and analytics rows come from
# scripts/bench-analytics.sh when that script exists.
# Each measured run follows BENCH_WARMUP seconds (2; 0: none) of the same load, unmeasured,
# on new connections: the cases are interleaved, so without it every round of a case
# starts cold (its keys' leases given back and rates forgotten a minute earlier), which
# measures a replica's first second of traffic rather than its steady state
# (docs/performance.md, "A key's first lease").
# Env: BENCH_SECS (10), BENCH_CONNS (32: wrk connections), BENCH_KEYS (1000), BENCH_ROUNDS (3),
# BENCH_F_USERS (10), BENCH_CASES ("a b c d e f g h": which cases to run), BENCH_BIN (the tollgate
# binary to measure, default target/release/tollgate), BENCH_BASE_BIN (an older build to
# measure in the same run: adds cases (c0) and (d0), (c) and (d) on that binary, on
# 127.0.0.1:18084 with a database of its own), BENCH_KEEP=1 keeps the temp
# dir (wrk outputs, logs), BENCH_ANALYTICS=0 skips scripts/bench-analytics.sh. Everything
# started here is stopped on exit, and the bench database is dropped.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

SECS=${BENCH_SECS:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNS:-32}
NKEYS=${BENCH_KEYS:-1000}
ROUNDS=${BENCH_ROUNDS:-3}
FUSERS=${BENCH_F_USERS:-10}
CASES=${BENCH_CASES:-a b c d e f g h}
VIA=${BENCH_DB:-socket tcp}
BIN=${BENCH_BIN:-target/release/tollgate}
BASE_BIN=${BENCH_BASE_BIN:-}
DB=tollgate_bench
UP=127.0.0.1:18081 PX=127.0.0.1:18082 GW=127.0.0.1:18083 GW0=127.0.0.1:18084 UP2=127.0.0.1:18085
# The instances the cases run on: socket (GW), TCP (GWT), and (g)'s over each (GWG, GWGT).
GWT=127.0.0.1:18086 GWG=127.0.0.1:18087 GWGT=127.0.0.1:18088
G=http://$GW
[[ -n $BASE_BIN ]] && CASES="$CASES c0 d0"
# Over TCP: every tollgate case but (e) (/healthz never reaches the database) and the
# baseline's, as <case>t.
if [[ " $VIA " == *" tcp "* ]]; then
    for c in $CASES; do [[ $c == [cdfgh] ]] && CASES="$CASES ${c}t"; done
fi
if [[ " $VIA " != *" socket "* ]]; then
    CASES=$(for c in $CASES; do [[ $c == [cdfgh] ]] || echo -n "$c "; done)
fi
# Within a round (c) and (d) run on either side of their ceiling (g), and a baseline beside
# its own case ((f) and (h) follow (d)). This host's speed drifts by 10-30 % within a
# minute, and two runs side by side see the most alike host.
RUN_ORDER=$(for c in a b e c0 c g d d0 f h ct gt dt ft ht; do
    if [[ " $CASES " == *" $c "* ]]; then echo -n "$c "; fi
done)
for c in $CASES; do
    [[ " $RUN_ORDER " == *" $c "* ]] || { echo "bench: unknown case '$c' in BENCH_CASES" >&2; exit 1; }
done
G_ROLE=tollgate_bench_g

scripts/deps.sh pg bench cargo
. scripts/lib/bench-common.sh
refuse_busy bench $UP $PX $GW $GW0 $UP2 $GWT $GWG $GWGT
cargo build --release
load0=$(cut -d' ' -f1-3 /proc/loadavg) # other work on the machine skews every case

bench_start bench "$DB"

# nginx in the foreground of a background job: its pid is ours to kill. -p gives each
# instance its own prefix (pid file, error log, temp dirs); -e avoids /var/log/nginx.
start_nginx() { # start_nginx <name> <conf>
    mkdir -p "$TMP/$1"
    nginx -p "$TMP/$1/" -c "$REPO/scripts/conf/$2" -e "$TMP/$1/error.log" &
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
CLIENT_IP_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
declare -A TG_PID=()
start_tollgate() { # start_tollgate <tag> <binary> <addr> <db> [tcp-url|url] [role]: serve, wait for /readyz
    local url
    url=$(scripts/pg.sh "${5:-url}" "$4")
    [[ -z ${6:-} ]] || url=${url/user=postgres/user=$6}
    # No drain on SIGTERM: nothing balances over these, and the bench stops them all.
    ADMIN_SECRET=$ADMIN_SECRET DATABASE_URL=$url LISTEN_ADDR=$3 TOLLGATE_SHUTDOWN_DRAIN_MS=0 \
        TOLLGATE_CLIENT_IP_KEY=$CLIENT_IP_KEY TOLLGATE_BCRYPT_COST=4 RUST_LOG=${RUST_LOG:-warn} \
        "$2" serve 2>"$TMP/tollgate$1.log" &
    pids+=($!)
    TG_PID[m$1]=$!
    wait_http "http://$3/readyz" "$1"
}

wait_http() { # wait_http <url> [tag]: up to 20 s
    for _ in $(seq 1 200); do
        curl -s -o /dev/null "$1" && return 0
        [[ -z ${2+x} ]] || kill -0 "${TG_PID[m$2]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench: $1 did not answer; tollgate log:" >&2
    tail -n 20 "$TMP/tollgate${2:-}.log" >&2
    exit 1
}
wait_http "http://$UP/"
wait_http "http://$PX/"
start_tollgate "" "$BIN" "$GW" "$DB"
tg_pid=${TG_PID[m]}
[[ " $CASES " == *t\ * ]] && start_tollgate t "$BIN" "$GWT" "$DB" tcp-url
if [[ " $CASES " == *" g "* || " $CASES " == *" gt "* ]]; then
    # (g)'s instances log in as a role of their own, refused logins once they are warm.
    # Its password is the cluster's own (TCP asks for one; `pg.sh tcp-url` carries it).
    pw=$(scripts/pg.sh tcp-url | grep -o 'password=[^ ]*' | cut -d= -f2)
    scripts/pg.sh psql -qtAXc "DROP ROLE IF EXISTS $G_ROLE; CREATE ROLE $G_ROLE SUPERUSER LOGIN PASSWORD '$pw'"
    extra_roles+=("$G_ROLE")
    [[ " $CASES " == *" g "* ]] && start_tollgate g "$BIN" "$GWG" "$DB" url "$G_ROLE"
    [[ " $CASES " == *" gt "* ]] && start_tollgate gt "$BIN" "$GWGT" "$DB" tcp-url "$G_ROLE"
fi

admin() { # admin <path> <json> [base url]: POST, fail on non-2xx, print the body
    curl -sS -f -X POST "${3:-$G}$1" -H "x-admin-secret: $ADMIN_SECRET" \
        -H 'content-type: application/json' -d "$2"
}

plain_keys() { # plain_keys <tag> <base url> [targets]: a user, a catch-all route (to the
    # upstream, or over the pool `targets`), NKEYS keys
    local uid target="\"targetUrl\":\"http://$UP\""
    [[ -z ${3:-} ]] || target="\"targets\":$3"
    uid=$(admin /admin/users "{\"email\":\"bench$1@example.com\",\"name\":\"bench\"}" "$2" \
        | grep -o '"id":[0-9]*' | head -n1 | cut -d: -f2)
    admin /admin/routes "{\"userId\":$uid,\"prefix\":\"/\",$target}" "$2" >/dev/null
    echo "bench: creating $NKEYS keys${1:+ on the baseline}"
    seq 1 "$NKEYS" | xargs -P 4 -I{} curl -sS -f -X POST "$2/admin/api-keys" \
        -H "x-admin-secret: $ADMIN_SECRET" -H 'content-type: application/json' \
        -d "{\"userId\":$uid,\"name\":\"bench-{}\",\"rateLimit\":1000000000}" -w '\n' >"$TMP/keys$1.json"
    grep -o '"rawKey":"[^"]*"' "$TMP/keys$1.json" | cut -d'"' -f4 >"$TMP/keys$1.txt"
    [[ $(wc -l <"$TMP/keys$1.txt") -eq $NKEYS ]] || { echo "bench: expected $NKEYS raw keys" >&2; exit 1; }
    head -n1 "$TMP/keys$1.txt" >"$TMP/onekey$1.txt"
}
plain_keys "" "$G"
# (h): the same shape as (c) on a route whose pool is the upstream on both its ports.
[[ " $CASES " == *" h "* ]] && plain_keys -h "$G" "[{\"url\":\"http://$UP\"},{\"url\":\"http://$UP2\"}]"
if [[ -n $BASE_BIN ]]; then
    scripts/pg.sh dropdb "${DB}_base"
    scripts/pg.sh createdb "${DB}_base"
    extra_dbs+=("${DB}_base")
    start_tollgate 0 "$BASE_BIN" "$GW0" "${DB}_base"
    plain_keys 0 "http://$GW0"
fi

# (f): a plan of three limits and a monthly quota, FUSERS users each with an owner-wide
# limit, and NKEYS keys on the plan spread over them. Every limit is far above what the
# bench can send, so all five are checked on every request and none refuses.
big=1000000000
[[ " $CASES " == *" f "* ]] && {
plan=$(admin /admin/plans "{\"name\":\"bench\",\"limits\":[
    {\"name\":\"burst\",\"limit\":$big,\"windowSecs\":1},
    {\"name\":\"minute\",\"limit\":$big,\"windowSecs\":60},
    {\"name\":\"day\",\"limit\":$big,\"windowSecs\":86400}],
    \"quota\":{\"limit\":${big}000,\"period\":\"month\"}}" | grep -o '"id":[0-9]*' | head -n1 | cut -d: -f2)
fusers=()
for u in $(seq 1 "$FUSERS"); do
    id=$(admin /admin/users "{\"email\":\"bench-f$u@example.com\",\"name\":\"f$u\",
        \"limits\":[{\"name\":\"hour\",\"limit\":$big,\"windowSecs\":3600}]}" \
        | grep -o '"id":[0-9]*' | head -n1 | cut -d: -f2)
    admin /admin/routes "{\"userId\":$id,\"prefix\":\"/\",\"targetUrl\":\"http://$UP\"}" >/dev/null
    fusers+=("$id")
done
for n in $(seq 0 $((NKEYS - 1))); do echo "${fusers[$((n % FUSERS))]} $n"; done \
    | xargs -P 4 -n 2 sh -c 'curl -sS -f -X POST "'"$G"'/admin/api-keys" \
        -H "x-admin-secret: '"$ADMIN_SECRET"'" -H "content-type: application/json" \
        -d "{\"userId\":$0,\"name\":\"bench-f-$1\",\"planId\":'"$plan"'}" -w "\n"' >"$TMP/keys-f.json"
grep -o '"rawKey":"[^"]*"' "$TMP/keys-f.json" | cut -d'"' -f4 >"$TMP/keys-f.txt"
[[ $(wc -l <"$TMP/keys-f.txt") -eq $NKEYS ]] || { echo "bench: expected $NKEYS (f) keys" >&2; exit 1; }
}

echo "bench: warming every key once on each instance (its one bcrypt verification)"
warm() { # warm <keys file> <base url>
    [[ -e $TMP/$1 ]] || return 0
    codes=$(xargs -P 4 -I{} curl -s -o /dev/null -w '%{http_code}\n' -H 'x-api-key: {}' "$2/" \
        <"$TMP/$1" | sort | uniq -c | tr -s ' \n' ' ')
    [[ $codes =~ ^\ ?$NKEYS\ 200\ ?$ ]] || { echo "bench: warm-up statuses ($1 on $2): $codes" >&2; exit 1; }
}
for f in keys.txt keys-f.txt keys-h.txt; do
    warm "$f" "$G"
    [[ -z ${TG_PID[mt]:-} ]] || warm "$f" "http://$GWT"
done
warm keys0.txt "http://$GW0"
[[ -z ${TG_PID[mg]:-} ]] || warm keys.txt "http://$GWG"
[[ -z ${TG_PID[mgt]:-} ]] || warm keys.txt "http://$GWGT"
if [[ -n ${TG_PID[mg]:-}${TG_PID[mgt]:-} ]]; then
    # Now cut (g)'s instances off: no new session for the role, and its sessions ended.
    scripts/pg.sh psql -qtAXc "ALTER ROLE $G_ROLE NOLOGIN;
        SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '$G_ROLE'" >/dev/null
    for u in ${TG_PID[mg]:+$GWG} ${TG_PID[mgt]:+$GWGT}; do
        for _ in $(seq 1 100); do
            [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$u/readyz") == 503 ]] && break
            sleep 0.1
        done
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$u/readyz") == 503 ]] \
            || { echo "bench: $u still reaches the database" >&2; exit 1; }
    done
fi

# CPU ticks (utime + stime) of tollgate and of the whole Postgres cluster (postmaster and
# its backends), so each case can say how much CPU one request cost in each.
ticks() { # ticks <pid>...: summed utime+stime of the given processes
    local sum=0 f
    for p in "$@"; do
        f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        f=${f##*) } # fields after "(comm) "; utime and stime are the 12th and 13th here
        set -- $f
        sum=$((sum + ${12} + ${13}))
    done
    echo "$sum"
}
# Busy CPU ticks of the whole machine (user, nice, system, irq, softirq; not idle, iowait
# or steal): with wrk, nginx, tollgate and Postgres on the same cores, what a request costs
# everything together, i.e. how many requests the cores could serve at all.
machine_ticks() {
    local _cpu user nice system idle iowait irq softirq
    read -r _cpu user nice system idle iowait irq softirq _ </proc/stat
    echo $((user + nice + system + irq + softirq))
}
pg_pids() {
    local pm
    pm=$(head -n1 "$(scripts/pg.sh dir)/pg/postmaster.pid")
    echo "$pm" $(ps -o pid= --ppid "$pm")
}

declare -A URL=([a]="http://$UP/" [b]="http://$PX/" [c]="$G/" [d]="$G/" [e]="$G/healthz"
    [f]="$G/" [g]="http://$GWG/" [h]="$G/" [c0]="http://$GW0/" [d0]="http://$GW0/"
    [ct]="http://$GWT/" [dt]="http://$GWT/" [ft]="http://$GWT/" [gt]="http://$GWGT/" [ht]="http://$GWT/")
declare -A KEYS=([a]=keys.txt [b]=keys.txt [c]=keys.txt [d]=onekey.txt [e]=keys.txt
    [f]=keys-f.txt [g]=keys.txt [h]=keys-h.txt [c0]=keys0.txt [d0]=onekey0.txt)
# The instance each tollgate case runs on (its CPU is the case's tg µs/rq).
declare -A INST=([c]=m [d]=m [e]=m [f]=m [h]=m [g]=mg [c0]=m0 [d0]=m0
    [ct]=mt [dt]=mt [ft]=mt [ht]=mt [gt]=mgt)
declare -A NAME=(
    [a]="(a) nginx upstream, direct"
    [b]="(b) nginx reverse proxy"
    [c]="(c) tollgate, $NKEYS keys rotated"
    [d]="(d) tollgate, one key"
    [e]="(e) tollgate /healthz: server layer alone"
    [f]="(f) as (c), plan + quota + owner-wide limit"
    [g]="(g) as (c), database unreachable"
    [h]="(h) as (c), a pool of two targets"
    [c0]="(c0) (c) on the baseline binary"
    [d0]="(d0) (d) on the baseline binary"
)
name() { # a case's name; <case>t is <case> over TCP
    if [[ $1 == ?t ]]; then echo "(${1}) ${NAME[${1%t}]#(?) }, TCP"; else echo "${NAME[$1]}"; fi
}
load() { # load <case> <seconds> [wrk options]: the case's traffic, wrk's report on stdout
    BENCH_KEYS_FILE=$TMP/${KEYS[${1%t}]} wrk -t1 -c"$CONNS" -d"$2s" "${@:3}" \
        -s scripts/conf/rotate.lua "${URL[$1]}"
}
HZ=$(getconf CLK_TCK) # ticks a second, for the CPU figures
settle() { # until Postgres is quiet (under 5 % of a core over 0.5 s), 10 s at most;
    # prints the seconds it waited, or "10-not-quiet"
    local i d pids p0
    for i in $(seq 20); do
        pids=$(pg_pids)
        p0=$(ticks $pids)
        sleep 0.5
        # A backend that exited meanwhile drops out of the sum: not a quiet half-second.
        d=$(($(ticks $pids) - p0))
        if ((d >= 0 && d * 40 < HZ)); then
            awk -v n="$i" 'BEGIN {print n / 2}'
            return 0
        fi
    done
    echo 10-not-quiet
}
for r in $(seq 1 "$ROUNDS"); do
    for c in $RUN_ORDER; do
        # The last case's final log batch, its fold and any autovacuum it set off are its
        # own cost: let them finish rather than land in this case's run.
        quiet=$(settle)
        out=$TMP/wrk-$c-$r.txt
        pgp=$(pg_pids)
        tgp=${TG_PID[${INST[$c]:-m}]}
        [[ $WARMUP == 0 ]] || load "$c" "$WARMUP" >/dev/null
        t0=$(ticks "$tgp") p0=$(ticks $pgp) m0=$(machine_ticks)
        load "$c" "$SECS" --latency >"$out"
        t1=$(ticks "$tgp") p1=$(ticks $pgp) m1=$(machine_ticks)
        # Upstream connections that are not reused pile up in TIME-WAIT (60 s each): count
        # the closed connections to the upstream's port.
        tw=$(ss -Htan state time-wait '( dport = :18081 or sport = :18081 or dport = :18085 or sport = :18085 )' | wc -l)
        line=$(grep '^BENCH ' "$out") || { cat "$out" >&2; exit 1; }
        n=$(grep -o 'requests=[0-9]*' <<<"$line" | cut -d= -f2)
        cpu=$(awk -v t=$((t1 - t0)) -v p=$((p1 - p0)) -v m=$((m1 - m0)) -v n="$n" -v hz="$HZ" \
            'BEGIN {printf "tg_cpu_us=%.1f pg_cpu_us=%.1f all_cpu_us=%.1f", t*1e6/hz/n, p*1e6/hz/n, m*1e6/hz/n}')
        cpu="$cpu timewait=$tw settle_s=$quiet"
        echo "round $r/$ROUNDS $(name "$c"): ${line#BENCH } $cpu"
        echo "$c ${line#BENCH } $cpu" >>"$TMP/results.txt"
    done
done

median() { # median <case> <field>: middle value over the rounds
    grep "^$1 " "$TMP/results.txt" | grep -o " $2=[0-9.]*" | cut -d= -f2 | sort -g \
        | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}
stats=$(curl -s "$G/admin/stats" -H "x-admin-secret: $ADMIN_SECRET")
sleep 0.5 # let the logger flush, then say what the non-2xx answers were
statuses=$(scripts/pg.sh psql "$DB" -tAXc \
    "select string_agg(status || ': ' || n, ', ' order by status)
       from (select status, count(*) n from request_logs group by status) s")

# The logger and analytics benchmark prints `name value` lines for this table.
declare -A AN=()
if [[ -x scripts/bench-analytics.sh && ${BENCH_ANALYTICS:-1} != 0 ]]; then
    echo "bench: running scripts/bench-analytics.sh"
    if scripts/bench-analytics.sh >"$TMP/analytics.txt" 2>"$TMP/analytics.err"; then
        while read -r k v; do
            [[ $k =~ ^(logger_rows_per_sec|analytics_overview_ms|analytics_timeseries_ms|raw_overview_ms|raw_timeseries_ms)$ ]] \
                && AN[$k]=$v
        done <"$TMP/analytics.txt"
        # Its own table (every analytics question and the logger cases) after ours.
        grep -Ev '^(logger_rows_per_sec|analytics_|raw_(overview|timeseries)_ms)' "$TMP/analytics.txt" \
            >"$TMP/analytics.table" || true
    else
        echo "bench: scripts/bench-analytics.sh failed; tail of its stderr:" >&2
        tail -n 5 "$TMP/analytics.err" >&2
    fi
fi
an() { echo "${AN[$1]:-not run}"; }

ms() { awk -v u="$1" 'BEGIN {printf "%.2f", u/1000}'; }
ratio() { awk -v x="$1" -v b="$(median b rps)" 'BEGIN {printf "%.2f", x / b}'; }
echo
echo "wrk -t1 -c$CONNS -d${SECS}s after ${WARMUP} s of warm-up, median of $ROUNDS rounds; $(nproc) cores shared by wrk, nginx," \
     "tollgate and Postgres (load average before: $load0, after: $(cut -d' ' -f1-3 /proc/loadavg))"
fmt='%-44s %9s %8s %8s %9s %9s %9s %9s %s\n'
printf "$fmt" case req/s "p50 ms" "p99 ms" "÷ proxy" "tg µs/rq" "pg µs/rq" "all µs/rq" target
of() { # of <x> <y>: median rps of case x ÷ that of case y
    awk -v x="$(median "$1" rps)" -v y="$(median "$2" rps)" \
        'BEGIN {if (y > 0) printf "%.2f", x / y; else print "-"}'
}
rounds_of() { # rounds_of <x> <y>: each round's rps of case x ÷ that of case y, side by side
    paste <(grep "^$1 " "$TMP/results.txt" | grep -o ' rps=[0-9.]*' | cut -d= -f2) \
        <(grep "^$2 " "$TMP/results.txt" | grep -o ' rps=[0-9.]*' | cut -d= -f2) \
        | awk '$2 > 0 {printf "%s%.2f", (NR > 1 ? " / " : ""), $1 / $2}'
}
for c in $CASES; do
    target=""
    [[ $c == c ]] && target="≥ 0.35"
    [[ $c == d ]] && target="≥ 0.25"
    # Issue 16: the full path and one hot key against (g), the ceiling, on each transport.
    if [[ $c == [cd] || $c == [cd]t ]]; then
        gc=g
        [[ $c == ?t ]] && gc=gt
        if [[ " $CASES " == *" $gc "* ]]; then
            # Each round's pair too: ran side by side, they show how far one run can swing.
            target="${target:+$target, }≥ 0.85 × ($gc): $(of "$c" "$gc") (rounds $(rounds_of "$c" "$gc"))"
        fi
    fi
    [[ $c == [cd]0 ]] && target="($c) ÷ this: $(awk -v x="$(median "${c%0}" rps)" -v b="$(median "$c" rps)" \
        'BEGIN {if (b > 0) printf "%.2f", x / b; else print "-"}')"
    [[ $c == f ]] && target="≥ 0.9 × (c): $(awk -v f="$(median f rps)" -v c="$(median c rps)" \
        'BEGIN {if (c > 0) printf "%.2f", f / c; else print "-"}')"
    [[ $c == h ]] && target="≈ (c): $(of h c)"
    [[ $c == ht ]] && target="≈ (ct): $(of ht ct)"
    [[ $c == ft ]] && target="≥ 0.9 × (ct): $(of ft ct)"
    rps=$(median "$c" rps)
    printf "$fmt" "$(name "$c")" "$(printf %.0f "$rps")" "$(ms "$(median "$c" p50_us)")" \
        "$(ms "$(median "$c" p99_us)")" "$(ratio "$rps")" \
        "$([[ $c == [cdefgh]* ]] && median "$c" tg_cpu_us || echo -)" \
        "$([[ $c == [cdefgh]* ]] && median "$c" pg_cpu_us || echo -)" "$(median "$c" all_cpu_us)" "$target"
done
added() { awk -v c="$(median "$1" p99_us)" -v a="$(median a p99_us)" 'BEGIN {printf "%.2f", (c-a)/1000}'; }
for c in c ct; do
    [[ " $CASES " == *" $c "* ]] || continue
    target="≤ 2 ms"
    g=g${c#c}
    [[ " $CASES " == *" $g "* ]] && target="$target; ≤ 1.5 × ($g)'s $(added "$g") ms"
    printf "$fmt" "added p99 over direct upstream at $CONNS conns, ($c) - (a)" "" "" "$(added "$c")" "" "" "" "" "$target"
done
printf "$fmt" "logger rows/s [scripts/bench-analytics.sh]" "$(an logger_rows_per_sec)" "" "" "" "" "" "" "≥ 100000"
printf "$fmt" "analytics overview 24h @10M rows, ms" "" "$(an analytics_overview_ms)" "" "" "" "" "" "≤ 50 ms (raw: $(an raw_overview_ms))"
printf "$fmt" "analytics timeseries 24h @10M rows, ms" "" "$(an analytics_timeseries_ms)" "" "" "" "" "" "≤ 50 ms (raw: $(an raw_timeseries_ms))"
for c in $CASES; do
    non2xx=$(grep "^$c " "$TMP/results.txt" | grep -o ' non2xx=[0-9]*' | cut -d= -f2 \
        | awk '{s+=$1} END {print s+0}')
    [[ $non2xx -eq 0 ]] || echo "note: $(name "$c") had $non2xx non-2xx answers"
done
echo "TIME-WAIT connections to the upstream (:18081, :18085) right after each case (max over rounds):" \
    "$(for c in $CASES; do [[ $c == e ]] && continue; echo -n "($c) $(grep "^$c " "$TMP/results.txt" \
        | grep -o 'timewait=[0-9]*' | cut -d= -f2 | sort -n | tail -n1)  "; done)"
echo "tollgate /admin/stats: $stats"
echo "tollgate responses by status (request_logs): $statuses"
# (g)'s rows never reach request_logs: what it answered other than 2xx, from its /metrics.
for u in ${TG_PID[mg]:+$GWG} ${TG_PID[mgt]:+$GWGT}; do
    echo "tollgate at $u (database unreachable), /metrics other than 2xx:" \
        "$(curl -s "http://$u/metrics" -H "x-admin-secret: $ADMIN_SECRET" \
            | grep -E '^tollgate_(requests_total|upstream_errors_total|rate_limited_total)' \
            | grep -v -e 'class="2xx"' -e ' 0$' | tr '\n' ' ')"
done
if [[ -s $TMP/analytics.table ]]; then
    echo
    echo "scripts/bench-analytics.sh:"
    cat "$TMP/analytics.table"
fi
