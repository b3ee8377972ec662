#!/usr/bin/env bash
# Install, from Debian's packages, only what a purpose needs and is missing.
#   scripts/deps.sh pg      PostgreSQL 15 server binaries (for scripts/pg.sh)
#   scripts/deps.sh bench   nginx, wrk, haproxy, curl (for scripts/bench.sh)
#   scripts/deps.sh edge    nginx (the edge in front of tollgate, for tests/edge.rs)
#   scripts/deps.sh cluster haproxy (in front of two replicas, for tests/cluster.rs)
#   scripts/deps.sh cargo   only checks that a Rust toolchain is on PATH
#   scripts/deps.sh soak    python3 and curl (load generator and admin calls of scripts/soak.sh)
#   scripts/deps.sh httpbin httpbin + gunicorn from PyPI in a venv at .data/venv (the
#                           upstream of the fidelity tests; python3-venv from Debian if needed)
#   scripts/deps.sh browser chromium + chromium-driver (tests/browser.rs drives the dashboard)
#   scripts/deps.sh promtool prometheus, for `promtool check metrics` in the metrics tests
#   scripts/deps.sh schemathesis  schemathesis from PyPI into the same venv (tests/openapi.rs)
#   scripts/deps.sh deb     cargo-deb (`cargo install --locked`, builds the .deb of `make deb`)
#   scripts/deps.sh package what tests/package.rs needs: cargo-deb, systemd (for
#                           `systemd-analyze verify` of the unit), adduser (a dependency
#                           of the package, so apt-get installs it without package lists)
# Several purposes may be given at once. Needs root only when something is missing.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PGBIN=/usr/lib/postgresql/15/bin
missing=()

want() { # want <file that proves it is installed> <package>
    [[ -x $1 ]] || missing+=("$2")
}

check_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        if [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
            echo "deps: cargo is in ${HOME:-/root}/.cargo/bin but not on PATH (run: . ~/.cargo/env)" >&2
        else
            echo "deps: cargo not found; install a Rust toolchain (https://rustup.rs) first" >&2
        fi
        exit 1
    fi
}

# httpbin served by gunicorn, in a venv of its own under .data/ (never the system Python's
# site-packages). Only when .data/venv/bin/gunicorn is missing.
install_httpbin() {
    local venv=$REPO/.data/venv
    [[ -x $venv/bin/gunicorn ]] && return 0
    [[ -x $venv/bin/python ]] || make_venv
    echo "deps: installing httpbin and gunicorn into $venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check httpbin gunicorn
}

# schemathesis (the OpenAPI fuzzer tests/openapi.rs runs) in the same venv, installed with
# the venv's own interpreter. Only when .data/venv/bin/schemathesis is missing.
install_schemathesis() {
    local venv=$REPO/.data/venv
    [[ -x $venv/bin/schemathesis ]] && return 0
    [[ -x $venv/bin/python ]] || make_venv
    echo "deps: installing schemathesis into $venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check schemathesis
}

# cargo-deb, which `make deb` builds the package with, into ~/.cargo/bin like cargo itself.
# A few minutes of compiling, once.
install_cargo_deb() {
    check_cargo
    command -v cargo-deb >/dev/null 2>&1 && return 0
    echo "deps: installing cargo-deb (cargo install --locked; compiles for a few minutes, once)" >&2
    cargo install cargo-deb --locked --quiet
}

# A fresh venv at .data/venv (python3-venv from Debian if missing).
make_venv() {
    local venv=$REPO/.data/venv
    mkdir -p "$REPO/.data"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian ships `venv` (and ensurepip) separately from python3.
        rm -rf "$venv"
        [[ $(id -u) -eq 0 ]] || { echo "deps: python3 -m venv failed; run as root to install python3-venv" >&2; exit 1; }
        echo "deps: installing python3-venv" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
        python3 -m venv "$venv"
    fi
}

[[ $# -gt 0 ]] || { echo "usage: $0 pg|edge|cluster|bench|soak|cargo|httpbin|schemathesis|browser|promtool|deb|package ..." >&2; exit 2; }
for purpose in "$@"; do
    case $purpose in
        pg) want "$PGBIN/initdb" postgresql ;;
        edge) want /usr/sbin/nginx nginx ;;
        cluster) want /usr/sbin/haproxy haproxy ;;
        bench)
            want /usr/sbin/nginx nginx
            want /usr/bin/wrk wrk
            want /usr/sbin/haproxy haproxy
            want /usr/bin/curl curl
            ;;
        soak)
            want /usr/bin/python3 python3
            want /usr/bin/curl curl
            ;;
        cargo) check_cargo ;;
        httpbin) install_httpbin ;;
        browser)
            want /usr/bin/chromium chromium
            want /usr/bin/chromedriver chromium-driver
            ;;
        promtool) want /usr/bin/promtool prometheus ;;
        schemathesis) install_schemathesis ;;
        deb) install_cargo_deb ;;
        package)
            install_cargo_deb
            want /usr/bin/systemd-analyze systemd
            want /usr/sbin/adduser adduser
            ;;
        *) echo "deps: unknown purpose '$purpose' (pg|edge|cluster|bench|soak|cargo|httpbin|schemathesis|browser|promtool|deb|package)" >&2; exit 2 ;;
    esac
done

if [[ ${#missing[@]} -gt 0 ]]; then
    [[ $(id -u) -eq 0 ]] || { echo "deps: missing ${missing[*]}; run as root to install" >&2; exit 1; }
    echo "deps: installing ${missing[*]}" >&2
    # Keep the packages' system services (the default postgres cluster on 5432, nginx on
    # port 80) from being started by the install: we never use them. policy-rc.d exit 101
    # is Debian's documented "do not start services" switch; only add it if none exists.
    guard=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        guard=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod 755 "$guard"
        trap 'rm -f "$guard"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
