#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for development, tests and benchmarks, one per clone.
#   scripts/pg.sh start | stop | status | url [db] | tcp-url [db] | port | psql [db] [psql args...]
#                 | createdb <db> | dropdb <db> | dir | clean
# The cluster lives outside the clone, in /var/lib/postgresql/tollgate/<key>/ (data in pg/,
# unix socket in run/, log in pg.log), where <key> is the first 12 hex digits of the
# SHA-256 of the clone's absolute path: the server runs as `postgres`, which cannot enter a
# clone in root's home or under `mktemp -d` (mode 700), and two clones never share one.
# .data/cluster links to it; .data/ itself keeps what only root reads (admin secret, venv).
# The unix socket is what tests and `make run` use. It also listens on 127.0.0.1 (what a
# database on another host costs: `make bench` measures both), on a port derived from the
# same key (20000-29999, below the kernel's ephemeral range), so the clusters of different
# clones do not clash on it; start refuses a port something else holds. Trust auth on the
# socket; over TCP the password in .data/pg_password (mode 600, `tcp-url` includes it). Every
# command is idempotent. It never touches the system-wide cluster or another clone's: it
# only ever passes -D <its own data directory> to pg_ctl.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PGBIN=/usr/lib/postgresql/15/bin
DATA=$REPO/.data
BASE=/var/lib/postgresql/tollgate
KEY=$(printf %s "$REPO" | sha256sum | cut -c1-12)
CLUSTER=$BASE/$KEY
PGDATA=$CLUSTER/pg
RUN=$CLUSTER/run
LOG=$CLUSTER/pg.log
# Connections over TCP need this password (scram-sha-256); the unix socket stays trust.
PASSFILE=$DATA/pg_password
PORT=$((20000 + 0x${KEY:0:4} % 10000))
# Where clusters lived before they moved out of the clone (see `clean`).
LEGACY=$DATA/pg

# initdb and postgres refuse to run as root; cd / so postgres is not left in an unreadable cwd.
as_pg() { (cd / && runuser -u postgres -- "$@"); }

# The cluster directory names its clone, so a directory is never taken for another's.
check_owner() {
    local owner
    owner=$(cat "$CLUSTER/clone" 2>/dev/null) || return 0
    [[ $owner == "$REPO" ]] && return 0
    echo "pg.sh: $CLUSTER belongs to $owner, not $REPO; refusing to use it" >&2
    exit 1
}

running() { as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }
ready() { "$PGBIN/pg_isready" -q -h "$RUN" -p "$PORT" -U postgres; }

start() {
    [[ -x $PGBIN/initdb ]] || "$REPO/scripts/deps.sh" pg
    id postgres >/dev/null 2>&1 || { echo "pg.sh: no 'postgres' user (install postgresql)" >&2; exit 1; }
    check_owner
    if [[ -d $PGDATA ]] && running; then
        wait_ready
        # A cluster started by an older pg.sh: its TCP listener gets the password too.
        if [[ ! -s $PASSFILE ]] || grep -q '^host.*trust' "$PGDATA/pg_hba.conf"; then
            write_hba
            as_pg "$PGBIN/pg_ctl" -D "$PGDATA" reload >/dev/null
            set_password
        fi
        echo "pg.sh: already running ($RUN, port $PORT)"
        return 0
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        echo "pg.sh: 127.0.0.1:$PORT (this clone's port) is in use by another program" >&2
        exit 1
    fi
    # Modes set explicitly: postgres must enter $BASE and $CLUSTER whatever root's umask.
    install -d -m 755 "$BASE" "$CLUSTER"
    [[ -f $CLUSTER/clone ]] || echo "$REPO" >"$CLUSTER/clone"
    install -d -m 700 -o postgres -g postgres "$PGDATA"
    install -d -m 755 -o postgres -g postgres "$RUN"
    touch "$LOG" && chown postgres:postgres "$LOG"
    mkdir -p "$DATA"
    ln -sfn "$CLUSTER" "$DATA/cluster"
    if [[ -f $LEGACY/PG_VERSION ]]; then
        echo "pg.sh: note: $LEGACY holds a cluster from before clusters moved to $BASE;" \
             "make clean-data stops and deletes it" >&2
    fi
    if [[ ! -f $PGDATA/PG_VERSION ]]; then
        as_pg "$PGBIN/initdb" -D "$PGDATA" --auth=trust -U postgres -E UTF8 --locale=C.UTF-8 >>"$LOG"
        echo "include 'tollgate.conf'" >>"$PGDATA/postgresql.conf"
    fi
    # Rewritten on every start so a settings change here reaches existing clusters.
    # fsync stays on: tests must see what production sees. max_connections covers
    # parallel test binaries each with its own pool (default 16) plus bench workers.
    as_pg tee "$PGDATA/tollgate.conf" >/dev/null <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$RUN'
max_connections = 200
shared_buffers = 256MB
EOF
    write_hba
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOG" -w -t 60 start >/dev/null \
        || { echo "pg.sh: start failed; tail of $LOG:" >&2; tail -n 20 "$LOG" >&2; exit 1; }
    wait_ready
    set_password
    echo "pg.sh: started ($RUN, port $PORT)"
}

# The socket (root and postgres reach its directory) keeps trust; 127.0.0.1 asks for a
# password, so the TCP listener does not open the cluster to every local program.
write_hba() {
    printf 'local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n' \
        | as_pg tee "$PGDATA/pg_hba.conf" >/dev/null
}

set_password() {
    if [[ ! -s $PASSFILE ]]; then
        (umask 077 && head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PASSFILE")
    fi
    "$PGBIN/psql" -h "$RUN" -p "$PORT" -U postgres -d postgres -qtAX \
        -c "ALTER ROLE postgres PASSWORD '$(cat "$PASSFILE")'" >/dev/null
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

# Stops the cluster and deletes its directory, and this clone's cluster from before the
# move (in .data/pg) if one is left; `make clean-data` then deletes .data/.
clean() {
    check_owner
    stop
    rm -rf "$CLUSTER"
    if [[ -f $LEGACY/PG_VERSION ]] && as_pg "$PGBIN/pg_ctl" -D "$LEGACY" status >/dev/null 2>&1; then
        as_pg "$PGBIN/pg_ctl" -D "$LEGACY" -m fast -w stop >/dev/null
        echo "pg.sh: stopped the cluster in $LEGACY"
    fi
    echo "pg.sh: deleted $CLUSTER"
}

url() { echo "host=$RUN port=$PORT user=postgres${1:+ dbname=$1}"; }
tcp_url() { echo "host=127.0.0.1 port=$PORT user=postgres password=$(cat "$PASSFILE")${1:+ dbname=$1}"; }

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
    tcp-url) tcp_url "${1:-}" ;;
    port) echo "$PORT" ;;
    dir) echo "$CLUSTER" ;;
    clean) clean ;;
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
    *) echo "usage: $0 start|stop|status|url [db]|tcp-url [db]|port|psql [db] [args]|createdb <db>|dropdb <db>|dir|clean" >&2; exit 2 ;;
esac
