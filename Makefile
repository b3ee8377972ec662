# tollgate: every target works on a fresh Debian machine as root; missing system packages
# (postgresql, nginx, wrk, haproxy) are installed by scripts/deps.sh on first need.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
# rustup installs cargo here; `make` from a non-login shell may not have it on PATH.
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: build run test bench bench-analytics bench-cluster soak fmt lint demo deb clean-data

build:            ## release binary: target/release/tollgate
	cargo build --release

run: build        ## private Postgres (scripts/pg.sh) + db `tollgate` + admin secret, then serve (LISTEN_ADDR, default 127.0.0.1:3000)
	scripts/run.sh

test:             ## private Postgres, then cargo test --all-targets (stops the cluster only if it started it)
	scripts/test.sh

bench:            ## one table: nginx upstream vs nginx proxy vs tollgate, ratios and targets (BENCH_SECS, default 10)
	scripts/bench.sh

bench-analytics:  ## analytics from rollups vs raw scans at 10 M log rows, and logger rows/s (BENCH_ANALYTICS_ROWS)
	scripts/bench-analytics.sh

bench-cluster:    ## two replicas behind haproxy on one database: throughput, exact limit, revoke latency
	scripts/bench-cluster.sh

soak:             ## SOAK_SECS (default 600) of mixed traffic; RSS, threads, fds sampled every 10 s must stay flat
	scripts/soak.sh

fmt:
	cargo fmt

lint:             ## cargo fmt --check, cargo clippy --all-targets -- -D warnings, the layer-import check
	scripts/lint.sh

demo: build       ## scripted walk-through against a throw-away database
	scripts/demo.sh

deb:              ## Debian package (cargo-deb, installed on first need): target/debian/tollgate_<version>-1_<arch>.deb; DEB_FLAGS adds cargo-deb flags
	scripts/deps.sh deb
	cargo deb --locked $(DEB_FLAGS)

clean-data:       ## stop the private cluster, delete it (/var/lib/postgresql/tollgate/<key>) and .data/ (admin secret, venv)
	scripts/pg.sh clean
	rm -rf .data
