#!/usr/bin/env bash
# make lint: formatting, clippy, and the layer rule (no module imports one above it; the
# order is in docs/architecture.md and checked by the `layers` test in src/main.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --quiet --bin tollgate layers::
