#!/usr/bin/env bash
# Install, from Debian's packages, only what a purpose needs and is missing.
#   scripts/deps.sh pg      PostgreSQL 15 server binaries (for scripts/pg.sh)
#   scripts/deps.sh bench   nginx, wrk, haproxy, curl (for scripts/bench.sh)
#   scripts/deps.sh cargo   only checks that a Rust toolchain is on PATH
# Several purposes may be given at once. Needs root only when something is missing.
set -euo pipefail

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

[[ $# -gt 0 ]] || { echo "usage: $0 pg|bench|cargo ..." >&2; exit 2; }
for purpose in "$@"; do
    case $purpose in
        pg) want "$PGBIN/initdb" postgresql ;;
        bench)
            want /usr/sbin/nginx nginx
            want /usr/bin/wrk wrk
            want /usr/sbin/haproxy haproxy
            want /usr/bin/curl curl
            ;;
        cargo) check_cargo ;;
        *) echo "deps: unknown purpose '$purpose' (pg|bench|cargo)" >&2; exit 2 ;;
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
