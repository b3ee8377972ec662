#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for development, tests and benchmarks.
#   scripts/pg.sh start | stop | status | url [db] | psql [db] [psql args...]
#                 | createdb <db> | dropdb <db>
# Data in <repo>/.data/pg, unix socket in <repo>/.data/run, port 54329, no TCP listener,
# trust auth, log in .data/pg.log. Every command is idempotent. It never touches the
# system-wide cluster (/var/lib/postgresql): it only ever passes -D .data/pg to pg_ctl.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PGBIN=/usr/lib/postgresql/15/bin
DATA=$REPO/.data
PGDATA=$DATA/pg
RUN=$DATA/run
LOG=$DATA/pg.log
PORT=54329

# initdb and postgres refuse to run as root; cd / so postgres is not left in an unreadable cwd.
as_pg() { (cd / && runuser -u postgres -- "$@"); }

# The server runs as `postgres` and must reach .data/ through every parent directory.
check_traversal() {
    as_pg test -x "$REPO" && return 0
    local d="" part parts
    IFS=/ read -ra parts <<<"${REPO#/}"
    for part in "${parts[@]}"; do # from / downwards: the first one postgres cannot enter
        d=$d/$part
        if ! as_pg test -x "$d"; then
            echo "pg.sh: user postgres cannot enter $d (mode $(stat -c %A "$d")), and the" \
                 "cluster must live under $REPO. Fix: chmod o+x $d  (or clone elsewhere)" >&2
            exit 1
        fi
    done
    echo "pg.sh: user postgres cannot enter $REPO" >&2
    exit 1
}

running() { as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }
ready() { "$PGBIN/pg_isready" -q -h "$RUN" -p "$PORT" -U postgres; }

start() {
    [[ -x $PGBIN/initdb ]] || "$REPO/scripts/deps.sh" pg
    id postgres >/dev/null 2>&1 || { echo "pg.sh: no 'postgres' user (install postgresql)" >&2; exit 1; }
    if [[ -d $PGDATA ]] && running; then
        wait_ready
        echo "pg.sh: already running ($RUN, port $PORT)"
        return 0
    fi
    check_traversal
    mkdir -p "$DATA" "$PGDATA" "$RUN"
    chown postgres:postgres "$PGDATA" "$RUN"
    chmod 700 "$PGDATA"
    touch "$LOG" && chown postgres:postgres "$LOG" # .data/ itself stays root's
    if [[ ! -f $PGDATA/PG_VERSION ]]; then
        as_pg "$PGBIN/initdb" -D "$PGDATA" --auth=trust -U postgres -E UTF8 --locale=C.UTF-8 >>"$LOG"
        echo "include 'tollgate.conf'" >>"$PGDATA/postgresql.conf"
    fi
    # Rewritten on every start so a settings change here reaches existing clusters.
    # fsync stays on: tests must see what production sees. max_connections covers
    # parallel test binaries each with its own pool (default 16) plus bench workers.
    as_pg tee "$PGDATA/tollgate.conf" >/dev/null <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$RUN'
max_connections = 200
shared_buffers = 256MB
EOF
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOG" -w -t 60 start >/dev/null \
        || { echo "pg.sh: start failed; tail of $LOG:" >&2; tail -n 20 "$LOG" >&2; exit 1; }
    wait_ready
    echo "pg.sh: started ($RUN, port $PORT)"
}

wait_ready() {
    for _ in $(seq 1 300); do ready && return 0; sleep 0.1; done
    echo "pg.sh: server did not answer pg_isready within 30 s; see $LOG" >&2
    exit 1
}

stop() {
    if [[ -d $PGDATA ]] && running; then
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
        echo "pg.sh: stopped"
    else
        echo "pg.sh: not running"
    fi
}

url() { echo "host=$RUN port=$PORT user=postgres${1:+ dbname=$1}"; }

need_running() {
    if [[ -d $PGDATA ]] && running; then return 0; fi
    echo "pg.sh: not running (scripts/pg.sh start)" >&2
    exit 1
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
    start) start ;;
    stop) stop ;;
    status)
        if [[ -d $PGDATA ]] && running; then echo "running: $(url)"; else echo "not running"; exit 3; fi ;;
    url) url "${1:-}" ;;
    psql)
        need_running
        db=postgres # a first argument that is not an option names the database
        if [[ $# -gt 0 && $1 != -* ]]; then db=$1; shift; fi
        exec "$PGBIN/psql" -h "$RUN" -p "$PORT" -U postgres -d "$db" "$@" ;;
    createdb) # only when missing
        need_running
        [[ -n ${1:-} ]] || { echo "usage: $0 createdb <db>" >&2; exit 2; }
        if [[ -z $("$PGBIN/psql" -h "$RUN" -p "$PORT" -U postgres -d postgres -tAXc \
                 "select 1 from pg_database where datname = '$1'") ]]; then
            "$PGBIN/createdb" -h "$RUN" -p "$PORT" -U postgres "$1"
        fi ;;
    dropdb) # FORCE: a crashed gateway may still hold connections
        need_running
        [[ -n ${1:-} ]] || { echo "usage: $0 dropdb <db>" >&2; exit 2; }
        PGOPTIONS='-c client_min_messages=warning' "$PGBIN/dropdb" -h "$RUN" -p "$PORT" -U postgres --if-exists --force "$1" ;;
    *) echo "usage: $0 start|stop|status|url [db]|psql [db] [args]|createdb <db>|dropdb <db>" >&2; exit 2 ;;
esac
