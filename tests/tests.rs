//! The integration tests that run against the shared test cluster: the real `tollgate`
//! binary, started per test on a fresh database of the Postgres cluster `make test` starts
//! (TOLLGATE_TEST_PG), in front of real upstreams. One crate, a module per topic; add a test
//! to the topic it belongs to. Tests that need a process shape of their own are crates
//! beside this one: faults, cluster, edge, browser, openapi (docs/testing.md says why).

mod util;

// The admin API: its secret, CRUD of users, keys and routes, validation, paging, stats.
mod admin;
// The audit log of admin writes: one row each, no secrets, its filter and pages.
mod audit;
// Analytics endpoints and the rollups they read; retention.
mod analytics;
// API keys: where the credential goes, bad keys, expiry, scopes, revocation, the cache.
mod auth;
// Config as code: `tollgate export` and `apply` (--dry-run, --prune), bad files refused
// whole, a running gateway picking an applied change up.
mod config_as_code;
// CORS per route: preflights without a key, headers on answers, validation.
mod cors;
// `/dashboard` served without credentials under a self-only content security policy.
mod dashboard;
// Per-IP limits on failed key and admin-secret checks; bcrypt floods.
mod failed_credentials;
// Forwarding fidelity against httpbin: methods, paths, headers, streaming, route options.
mod fidelity;
// Hostile paths and headers: normalised or refused, never reaching what they aim at.
mod hostile_input;
// Caller identity upstream: X-Tollgate-* headers, never forged, and their signature.
mod identity;
// IP rules on keys and routes: allow and deny lists, CIDR edges, refused before counting.
mod ip_rules;
// A key's life: rotation with a grace period, pause and resume, metadata and externalId.
mod lifecycle;
// The request log: one row per gateway answer, its columns, a full queue.
mod logging;
// Leases (counting "lease"): exact on one replica, unused units given back, the exact option.
mod leases;
// Named limits, quotas and owner-wide limits: enforcement, headers, periods, exactness.
mod limits;
// `/metrics`: access, the text exposition format, values against known traffic.
mod metrics;
// Upstream pools: balancing, retries on another target, health checks, every target down.
mod pools;
// Plans, and the plan, limits and quota of keys and users through the admin API; quota
// resets; unknown body fields.
mod plans;
// What the log keeps of a client's address: a keyed hash by default, raw, or nothing.
mod privacy;
// Routing and forwarding through the recording upstream; framing and size limits.
mod proxy;
// The sliding-window rate limit: headers, the window, exactness under bursts.
mod ratelimit;
// One test per fixed bug.
mod regression;
// SIGTERM: readiness fails at once, the drain, 503 `shutting_down` after it, requests in
// flight finished, the log flushed.
mod shutdown;
// Start-up configuration, migrations, liveness and readiness.
mod startup;
// Usage for billing: admitted and refused per key, user and plan, day and month; CSV.
mod usage;
// Upstream faults: timeouts, the circuit breaker, retries, a hung upstream, leaks.
mod upstream_faults;
