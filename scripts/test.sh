#!/usr/bin/env bash
# `make test`: the private Postgres, then every test. The tests create and drop their own
# databases in it (TOLLGATE_TEST_PG has no dbname). The cluster is stopped at the end only
# when this script started it, so a cluster you are using for `make run` keeps running.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

scripts/deps.sh pg edge cargo httpbin schemathesis browser promtool
# tests/fidelity.rs runs httpbin under this gunicorn as a real-world upstream.
TOLLGATE_TEST_GUNICORN=$REPO/.data/venv/bin/gunicorn
export TOLLGATE_TEST_GUNICORN
# tests/openapi.rs runs schemathesis against GET /openapi.json.
TOLLGATE_TEST_SCHEMATHESIS=$REPO/.data/venv/bin/schemathesis
export TOLLGATE_TEST_SCHEMATHESIS
if ! scripts/pg.sh status >/dev/null; then
    trap 'scripts/pg.sh stop' EXIT
fi
scripts/pg.sh start
TOLLGATE_TEST_PG=$(scripts/pg.sh url)
export TOLLGATE_TEST_PG

cargo build
cargo test --all-targets -- --test-threads=4
# The proxy suites once more with the shipped nginx edge (scripts/edge/nginx.conf) in front
# of every gateway: what passes direct must pass behind the edge too.
# (fidelity and resilience talk to the gateway directly: their uploads and upstream faults
# are the gateway's own behaviour, not the edge's.)
TOLLGATE_TEST_VIA_EDGE=1 cargo test --test proxy_and_logs --test auth_and_limits \
    --test admin_and_analytics --test ratelimit --test logging_analytics -- --test-threads=4
