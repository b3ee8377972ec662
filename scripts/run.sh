#!/usr/bin/env bash
# `make run`: the private Postgres, the `tollgate` database, an admin secret, then serve.
# Expects target/release/tollgate to be built (the Makefile builds it first).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

scripts/deps.sh pg
scripts/pg.sh start
scripts/pg.sh createdb tollgate

# An operator-supplied ADMIN_SECRET wins. Otherwise one is generated on the first run and
# kept in .data/admin_secret (root-only) so it survives restarts.
if [[ -z ${ADMIN_SECRET:-} ]]; then
    if [[ ! -s .data/admin_secret ]]; then
        (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >.data/admin_secret)
    fi
    ADMIN_SECRET=$(cat .data/admin_secret)
    from="(from .data/admin_secret)"
else
    from="(from the environment)"
fi
export ADMIN_SECRET
# The key logged client IPs are hashed with, kept the same way: a new key would make the
# same address log as a different value after each restart.
if [[ -z ${TOLLGATE_CLIENT_IP_KEY:-} ]]; then
    if [[ ! -s .data/client_ip_key ]]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >.data/client_ip_key)
    fi
    TOLLGATE_CLIENT_IP_KEY=$(cat .data/client_ip_key)
fi
export TOLLGATE_CLIENT_IP_KEY
export LISTEN_ADDR=${LISTEN_ADDR:-127.0.0.1:3000}
DATABASE_URL=$(scripts/pg.sh url tollgate)
export DATABASE_URL

cat <<EOF

  admin secret $from: $ADMIN_SECRET
  database: $DATABASE_URL

  Walk-through, in another terminal (needs curl):
    S=$ADMIN_SECRET; G=http://$LISTEN_ADDR
    curl -s -X POST \$G/admin/users -H "x-admin-secret: \$S" \\
         -d '{"email":"ada@example.com","name":"Ada"}'
    curl -s -X POST \$G/admin/api-keys -H "x-admin-secret: \$S" \\
         -d '{"userId":1,"name":"laptop","rateLimit":100}'        # note its rawKey
    curl -s -X POST \$G/admin/routes -H "x-admin-secret: \$S" \\
         -d '{"userId":1,"prefix":"/","targetUrl":"http://127.0.0.1:8080"}'
    python3 -m http.server 8080 &                                 # any upstream will do
    curl -i \$G/index.html -H "x-api-key: <rawKey>"               # proxied, rate-limited, logged
    curl -s \$G/analytics/overview -H "x-admin-secret: \$S"

EOF
exec target/release/tollgate serve
