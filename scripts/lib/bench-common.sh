# Sourced by scripts/bench.sh and scripts/bench-cluster.sh: what both do before measuring.
#   refuse_busy <name> <addr>...   exit if anything listens on one of the addresses
#   bench_start <name> <db>        temp dir $TMP, a fresh database <db> on the private
#                                  cluster, and a cleanup on exit that kills every pid in
#                                  $pids, drops <db> (and any in $extra_dbs, and the roles in
#                                  $extra_roles), stops the cluster if it started it and
#                                  removes $TMP (kept with BENCH_KEEP=1)

refuse_busy() {
    local name=$1 addr
    shift
    for addr in "$@"; do # refuse to measure someone else's server
        if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
            echo "$name: $addr is already in use; stop whatever listens there" >&2
            exit 1
        fi
    done
}

bench_start() {
    BENCH_NAME=$1 BENCH_DB=$2
    TMP=$(mktemp -d "/tmp/tollgate-$BENCH_NAME.XXXXXX")
    pids=() pg_started="" db_created="" extra_dbs=() extra_roles=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
    scripts/pg.sh status >/dev/null || pg_started=1
    scripts/pg.sh start
    scripts/pg.sh dropdb "$BENCH_DB" # fresh: no rows or counters left by an earlier run
    scripts/pg.sh createdb "$BENCH_DB"
    db_created=1
}

bench_cleanup() {
    local rc=$? pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n $db_created ]]; then scripts/pg.sh dropdb "$BENCH_DB" || true; fi
    for db in "${extra_dbs[@]}"; do scripts/pg.sh dropdb "$db" || true; done
    for role in "${extra_roles[@]}"; do scripts/pg.sh psql -qtAXc "DROP ROLE IF EXISTS $role" || true; done
    if [[ -n $pg_started ]]; then scripts/pg.sh stop >/dev/null || true; fi
    if [[ ${BENCH_KEEP:-} == 1 ]]; then echo "$BENCH_NAME: kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
