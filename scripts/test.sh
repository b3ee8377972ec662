#!/usr/bin/env bash
# `make test`: the private Postgres, then every test. The tests create and drop their own
# databases in it (TOLLGATE_TEST_PG has no dbname). The cluster is stopped at the end only
# when this script started it, so a cluster you are using for `make run` keeps running.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

scripts/deps.sh pg cargo
if ! scripts/pg.sh status >/dev/null; then
    trap 'scripts/pg.sh stop' EXIT
fi
scripts/pg.sh start
TOLLGATE_TEST_PG=$(scripts/pg.sh url)
export TOLLGATE_TEST_PG

cargo build
cargo test --all-targets -- --test-threads=4
