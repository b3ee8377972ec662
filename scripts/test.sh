#!/usr/bin/env bash
# `make test`: the private Postgres, then every test (docs/testing.md): the unit tests, the
# integration crate tests/tests.rs and the process-shape crates beside it, among them
# tests/edge.rs, which runs the client-facing topics again behind the shipped nginx edge.
# The tests create and drop their own databases in the cluster (TOLLGATE_TEST_PG has no
# dbname). It is stopped at the end only when this script started it, so a cluster you
# are using for `make run` keeps running.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

scripts/deps.sh pg edge cluster cargo httpbin schemathesis browser promtool package
# The fidelity tests run httpbin under this gunicorn as a real-world upstream.
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
# tests/setup.rs (a clone's `make run`) and tests/package.rs (`make deb`) use the release build.
cargo build --release
cargo test --all-targets -- --test-threads=4
