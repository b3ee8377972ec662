//! Every setting tollgate reads, its environment variable, its default and why.
//! Read once at start-up by `Config::from_env`; the rest of the program only borrows it.

use std::env;
use std::time::Duration;

/// Where to listen when `LISTEN_ADDR` is unset: loopback, so a fresh install is not exposed
/// before its operator puts the edge proxy in front of it.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:3000";
/// Worker threads. Each request holds one for its whole life (auth, counter, upstream call),
/// so this is the number of requests in flight. Blocked threads cost only memory, so 64
/// leaves room for a slow upstream next to a busy one without thrashing two cores.
pub const DEFAULT_WORKERS: usize = 64;
/// Database connections. A request holds one only for its counting round (~0.2 ms), so
/// half the workers is plenty and leaves room under Postgres' default `max_connections`.
pub const DEFAULT_DB_POOL_SIZE: u32 = 16;
/// Counting rounds in flight at once, i.e. counter connections (`synchronous_commit =
/// off`, see `store::counter_pool`). Requests arriving while they run join the next batch
/// (see `gateway::ratelimit`), so one round at a time still scales with load: the
/// busier the gateway, the bigger each batch. One, because every extra statement in flight
/// halves the batches and on one hot key makes the statements queue on each other's row
/// lock (measured in docs/performance.md). With the database across a network round trip,
/// raise it so that statements overlap the round trips.
pub const DEFAULT_COUNTER_POOL_SIZE: u32 = 1;
/// Extra time a batch's leader waits for more requests to join before running its counter
/// statement (see `gateway::ratelimit`). 0 because a batch already gathers everything that arrives
/// while the previous statement is in flight, which under load is the whole burst; a
/// positive value only delays an idle gateway.
pub const DEFAULT_COALESCE_WINDOW_US: u64 = 0;
/// How much of a key's recent traffic a lease reserves ahead of need (see
/// `gateway::leases`): the lease is the key's request rate over this long, so it is
/// refilled about twice a horizon on a hot key and a cold key (less than a request a
/// horizon) is never leased. 1 s: a key seeing a request a second or more is leased, which
/// is what takes `make bench`'s 1000 keys at ~15 requests a second each off the counting
/// rounds ((c) 0.51 → 0.86 × the database-unreachable ceiling, docs/performance.md); at
/// 100 ms only hot keys were. The cost is what a replica may hold from others: up to a
/// second of a key's traffic, never over a quarter of the room left, and none below
/// `TOLLGATE_LEASE_MIN_ROOM` of room, so near a limit counting stays exact. 0 turns leases
/// off: every request is counted exactly.
pub const DEFAULT_LEASE_HORIZON_MS: u64 = 1_000;
/// Leases are granted only while at least this much room is left under every limit and
/// quota of the key (and its user) after the round's own requests: below it, requests are
/// counted one by one as without leases, so near the limit nothing is held back from other
/// replicas. 1000: small limits (tens or hundreds a window) are always exact, and a lease
/// on a large one takes at most [`LEASE_SHARE`] of the room.
pub const DEFAULT_LEASE_MIN_ROOM: i64 = 1_000;
/// How keys and plans without a `counting` field are counted: from leases (true) or one
/// request at a time (false). Leases, because they take the database round trip off the
/// hot path of a busy key while keeping every limit exact as a ceiling; what they change
/// (a bounded under-admission near a large limit while another replica holds units) only
/// exists above `TOLLGATE_LEASE_MIN_ROOM` of room, so small limits count as before.
pub const LEASE_BY_DEFAULT: bool = true;
/// The largest share of the room left that one lease may take, so that a replica leaves
/// most of what remains to the others.
pub const LEASE_SHARE: f64 = 0.25;
/// A key new to a replica, or back after idling a whole horizon, gets its rate measured
/// once it has sent this many requests spanning at least 1/[`LEASE_FIRST_SPAN`] of the
/// horizon, instead of after a whole horizon (with leases no larger than the requests it
/// has sent until a full horizon measures it): in `make bench` without its warm-up, whose
/// keys start each round cold, a whole horizon counted ~7 % of a round's requests one round
/// at a time (docs/performance.md, "A key's first lease"). Three requests (two intervals)
/// keep a single pair of requests from sizing a lease.
pub const LEASE_FIRST_HITS: u32 = 3;
/// See [`LEASE_FIRST_HITS`]: with the 1 s horizon, at least 100 ms of a key's traffic.
pub const LEASE_FIRST_SPAN: u32 = 10;
/// A lease not used for this long is given back (its units uncounted), so a key that went
/// quiet on a replica does not keep room from the others.
pub const LEASE_IDLE: Duration = Duration::from_millis(500);
/// How often the lease keeper looks through every key for leases to give back (a refill
/// wakes it for its own key only).
pub const LEASE_SWEEP: Duration = Duration::from_millis(100);
/// Keys a replica keeps lease state for (rate, lease): ~200 bytes each. From half of it on,
/// the keeper forgets idle ones; a new key finding it full is counted exactly.
pub const LEASE_KEYS_MAX: usize = 100_000;
/// How long a request waits for a pooled connection before the gateway answers 503.
pub const DEFAULT_DB_WAIT_MS: u64 = 2_000;
/// Upstream connect timeout: a healthy service on the same network accepts in well under a
/// second; waiting longer only ties up a worker.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Upstream timeout for the whole exchange up to the response head (then 504). 30 s matches
/// what nginx and most load balancers use by default.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
/// bcrypt cost for new keys. 10 is bcrypt's own default (~85 ms a verify here); verification
/// happens once per key per process thanks to the key cache, so the cost is affordable.
pub const DEFAULT_BCRYPT_COST: u32 = 10;
/// Sliding-window length. The reference design and the `rateLimit` field are per minute.
pub const DEFAULT_RATE_WINDOW_SECS: u32 = 60;
/// Requests per window for a key created without `rateLimit` (the reference's default).
pub const DEFAULT_KEY_RATE_LIMIT: i32 = 100;
/// Largest request body forwarded (10 MiB, as nginx's common `client_max_body_size` setting).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Largest unread request body left for tiny_http to drain when a request is answered
/// without reading it (401, 413, ...). tiny_http drains by allocating the whole remainder
/// at once; the allocation is lazy (pages are touched only as data arrives), so 1 GiB is
/// harmless, while a remainder near the machine's memory aborts the process. Anything
/// larger is abandoned instead (see `http::respond::abandon`).
pub const DRAIN_LIMIT_BYTES: u64 = 1024 * 1024 * 1024;
/// Log rows that may wait for the logger thread. At ~200 bytes a row this bounds the queue to
/// ~13 MiB while absorbing several seconds of peak traffic during a slow batch write.
pub const DEFAULT_LOG_QUEUE: usize = 65_536;
/// How often the logger takes rows off its channel while rows wait for the next flush: it
/// sleeps instead of blocking on the channel, so a request's send wakes nobody. 10 ms keeps
/// the channel (`TOLLGATE_LOG_QUEUE`) far from full at any rate the gateway can serve.
pub const LOG_DRAIN_TICK: Duration = Duration::from_millis(10);
/// The logger writes at least this often, so analytics lag traffic by at most this much
/// (plus the write). Two seconds: each write also upserts one minute rollup row per key,
/// route and status class seen in the batch, whatever the batch's length, so over many keys
/// the database's cost per request falls as batches grow (docs/performance.md, "Where the
/// log write's database time goes"). The dashboard refreshes every 5 s. A crash (not a
/// SIGTERM, which writes everything) can lose up to this long of log rows.
pub const DEFAULT_LOG_FLUSH_MS: u64 = 2_000;
/// Rows per COPY: more than a whole 2 s flush at the highest rate a replica served here
/// (~25 k req/s on 2 cores: 50 000 rows), so the flush interval, not this cap, sets a
/// batch's length (the rollups cost per distinct key in a batch). ~250 bytes a row: ~15 MiB.
pub const LOG_BATCH_MAX: usize = 60_000;
/// Rows buffered by the logger while the database refuses writes; beyond this the oldest
/// are dropped and counted, so an outage cannot exhaust memory.
pub const DEFAULT_LOG_BUFFER_MAX: usize = 1_000_000;
/// Safety-net full reload of routes and cached key metadata. Changes made through any
/// replica or in SQL arrive within milliseconds by LISTEN/NOTIFY (`gateway::sync`); this
/// reload only covers notifications lost while the listening connection was down, which it also
/// answers with a reload on reconnecting, so it can be rare.
pub const DEFAULT_SYNC_SECS: u64 = 30;
/// Longest wait before the LISTEN connection is retried after it fails.
pub const SYNC_RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Consecutive failures (connect errors, timeouts, 5xx where the route says so) that open
/// an upstream's circuit: enough to ignore a blip, few enough to stop hammering a dead host.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// How long an open circuit refuses before letting one probe through.
pub const DEFAULT_BREAKER_COOLDOWN_MS: u64 = 10_000;
/// How often tollgate nudges tiny_http's connection pool (see `http::server`):
/// the longest a new connection can sit queued behind open keep-alive connections.
pub const POOL_NUDGE: Duration = Duration::from_millis(50);
/// A nudge the pool has not taken within this long counts as queued behind other new
/// connections, so the nudger sends another at once (a nudge taken by a fresh pool thread
/// counts the same, see `http::server`). On a saturated machine a nudge can take longer to
/// be scheduled even when nothing is queued, hence the cap below.
pub const POOL_NUDGE_QUEUED: Duration = Duration::from_millis(2);
/// Most nudges in one tick (each a connection and, at worst, a short-lived pool thread):
/// twice the 32 new connections the bench opens at once.
pub const POOL_NUDGE_MAX_BURST: u32 = 64;
/// Pool threads kept idle for a burst of new connections (see `http::server`): the
/// default worker count, so a burst as large as the workers can serve at once is never
/// queued. Threads cost little while idle.
pub const POOL_WARM: usize = 64;
/// How often the idle pool threads are renewed: under tiny_http's 5 s idle exit.
pub const POOL_WARM_EVERY: Duration = Duration::from_secs(4);
/// How long the renewing connections are held, for the pool to give each a thread.
pub const POOL_WARM_HOLD: Duration = Duration::from_millis(20);
/// How long SIGTERM/SIGINT lets in-flight requests finish and queued log rows reach the
/// database before the process exits anyway: under Kubernetes' default 30 s termination
/// grace, so tollgate exits on its own terms before the SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 20_000;
/// How long after SIGTERM (SIGINT skips it) a replica keeps serving normally while `/readyz` answers
/// 503, before it stops taking requests: long enough for a load balancer's health check to
/// see it leave (haproxy's `inter 1s fall 2` in scripts/conf/haproxy.cfg takes 2 s; 5 s is
/// also the usual Kubernetes `preStop` pause for endpoint removal to propagate). With
/// `DEFAULT_SHUTDOWN_GRACE_MS` after it, the whole exit stays under Kubernetes' default
/// 30 s termination grace. 0 stops taking requests at once (no balancer in front).
pub const DEFAULT_SHUTDOWN_DRAIN_MS: u64 = 5_000;
/// Once a leaving replica has shut its listening socket, a worker leaves when no request
/// has arrived for this long: a client that was mid-request on an already accepted
/// connection still gets its 503 `shutting_down` rather than a closed connection.
pub const SHUTDOWN_QUIET: Duration = Duration::from_millis(100);
/// The least time shutdown gives the logger to write queued rows, even when in-flight
/// requests used up the grace period.
pub const SHUTDOWN_LOG_FLUSH_MIN: Duration = Duration::from_secs(2);
/// Failed API-key checks one client IP may make per `auth_fail_window` before it gets 429:
/// a real client with a typo fails a handful of times, while each failure can cost a
/// bcrypt verify (~85 ms of CPU), so a flood is cut off after a few seconds of CPU.
pub const DEFAULT_AUTH_FAIL_LIMIT: u32 = 30;
/// Failed admin-secret checks one client IP may make per window: an operator mistypes a
/// few times; a guesser is stopped at once. Also refuses the right secret from that IP
/// until the window ends, so the 429 is no oracle.
pub const DEFAULT_ADMIN_FAIL_LIMIT: u32 = 10;
/// The window of the two limits above, counted from the IP's first failure.
pub const DEFAULT_AUTH_FAIL_WINDOW_SECS: u64 = 60;
/// Client IPs tracked by each failure limit; when full, expired entries are pruned and,
/// if none are, the table is cleared (an attacker with that many addresses gains one
/// fresh window per address, no more). ~100 bytes an entry: ~10 MiB.
pub const AUTH_FAIL_TRACKED_IPS: usize = 100_000;
/// Refused (public id, secret digest) pairs remembered, so repeating a wrong key costs a
/// hash lookup instead of a database query and a bcrypt verify. Secrets are random, so a
/// refused pair never becomes right; the TTL only bounds how long memory is held.
pub const FAILED_KEY_CACHE_MAX: usize = 50_000;
pub const FAILED_KEY_TTL: Duration = Duration::from_secs(600);
/// Headers a CORS route always lets a browser read, besides its own `exposeHeaders`: the
/// rate-limit state and the request id, which a browser client needs to back off and to
/// report a failure (they are not CORS-safelisted, so unexposed they are invisible to it).
pub const CORS_EXPOSED_BY_DEFAULT: &[&str] = &[
    "RateLimit",
    "RateLimit-Policy",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
    "X-Request-Id",
];
/// Longest `Access-Control-Max-Age` a route may set: a day, beyond which Firefox caps it
/// anyway (Chromium caps at 2 hours).
pub const CORS_MAX_AGE_SECS: u32 = 86_400;
/// Most entries in each of a route's CORS lists; a policy is matched per preflight.
pub const CORS_MAX_LIST: usize = 64;
/// How long a request waits for a bcrypt slot before answering 503 `auth_busy`.
pub const BCRYPT_WAIT: Duration = Duration::from_secs(2);
/// After a database outage is noticed, requests skip it (cached keys fail open or closed at
/// once, unknown keys get 503 at once) and a background prober tries it once per this
/// interval, instead of every request waiting `db_wait` for a connection that will not
/// come: the outage is over for requests about this long (plus a reconnect) after the
/// database is back.
pub const DB_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest admin secret accepted: 16 characters keeps brute force out of reach.
pub const MIN_ADMIN_SECRET_LEN: usize = 16;
/// What the request log keeps of a client's address: a keyed hash, because the address is
/// personal data, while equal addresses must still group in per-IP analytics.
pub const DEFAULT_LOG_CLIENT_IP: &str = "hmac";
/// Shortest `TOLLGATE_CLIENT_IP_KEY` accepted: 32 characters (128 bits as hex). Longer
/// than the admin secret's minimum because this key is attacked offline: anyone holding a
/// copy of the logs and one address they know can try keys with no limit in the way.
pub const MIN_CLIENT_IP_KEY_LEN: usize = 32;
/// Largest admin/analytics request body: these are small JSON documents.
pub const ADMIN_MAX_BODY_BYTES: u64 = 64 * 1024;
/// Raw `request_logs` older than this are deleted: a week covers `recent` and incident
/// drill-downs, while figures for longer windows come from the rollups.
pub const DEFAULT_LOG_RETENTION: &str = "7d";
/// Day rollups and usage rows (`/analytics/usage`) older than this are deleted: 400 days, so
/// every month of the previous year can still be billed, at a few hundred bytes per day row.
pub const DEFAULT_ROLLUP_RETENTION: &str = "400d";
/// Minute and hour rollups are read only for the edges of windows up to 30 days, so they are
/// kept at most this long (even when `TOLLGATE_ROLLUP_RETENTION` is longer): minute rows are
/// the bulk of the table, and the day rows carry the long history.
pub const FINE_ROLLUP_MAX_AGE: Duration = Duration::from_secs(32 * 86_400);
/// A minute is folded into its hour and day rollups once it ended this long ago, by the
/// retention job's next pass: log batches still in flight for it land first. A row later
/// than that is added to its hour and day rows by the logger itself.
pub const ROLLUP_COMPACT_LAG: Duration = Duration::from_secs(60);
/// How often the retention job looks for expired rows (and folds minutes into hour and day
/// rollups first). Each pass deletes what expired since the last, so passes stay short.
pub const DEFAULT_RETENTION_INTERVAL_MS: u64 = 60_000;
/// Rows per retention DELETE: each statement holds its locks and WAL for a moment only, so
/// the logger's writes and analytics reads never queue behind a long delete.
pub const DEFAULT_RETENTION_BATCH: i64 = 5_000;
/// Pause between two retention DELETEs, leaving the disk and WAL writer to live traffic.
pub const RETENTION_PAUSE: Duration = Duration::from_millis(50);
/// Longest request target (path and query) accepted; longer ones get 414. 8 KiB is the
/// edge's `large_client_header_buffers` line size and far above any real API path, while
/// tiny_http itself reads a request line of any length.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Longest single header value accepted; longer gets 431. Same bound as the edge's 8 KiB
/// header buffers, so a request passes or fails the same way with or without the edge.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;
/// Largest header section (names, values and separators) accepted; larger gets 431. The
/// edge allows four 8 KiB buffers, so 32 KiB.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Page size cap on list endpoints (the reference's documented maximum).
pub const MAX_PAGE_LIMIT: i64 = 100;
/// Most named limits on one key, user or plan: every one is a column of the subject's
/// counter row, checked on every request.
pub const MAX_LIMITS: usize = 16;
/// Longest sliding window a limit may have: one day (longer periods are quotas).
pub const MAX_LIMIT_WINDOW_SECS: u32 = 86_400;
/// A request whose key is on a plan this replica does not know reloads the plans, at most
/// this often (the notification of a new plan normally arrives first).
pub const PLAN_MISS_RELOAD_EVERY: Duration = Duration::from_millis(200);
/// Keys whose resolved limits are kept; past this the memo is emptied and refills from the
/// keys in use (it only saves rebuilding a few small lists per request).
pub const RESOLVED_CACHE_MAX: usize = 100_000;
/// Largest limit or quota: far above any real allowance, far below the counters' range.
pub const MAX_QUOTA: i64 = 1_000_000_000_000;
/// How long a rotated-out secret keeps working when a rotation names no `graceSecs`: a
/// day, time for every client of the key to pick up the new one.
pub const DEFAULT_ROTATION_GRACE_SECS: i64 = 86_400;
/// Longest grace a rotation may give the old secret: 30 days. A leaked secret should not
/// outlive its replacement by more than a billing cycle.
pub const MAX_ROTATION_GRACE_SECS: i64 = 30 * 86_400;
/// Largest `metadata` object on a user or key, as compact JSON: room for a few ids and
/// labels, small enough that every key and user answer stays small.
pub const MAX_METADATA_BYTES: usize = 4 * 1024;
/// Most entries in one `allowCidrs` or `denyCidrs` list: each is tried in turn on every
/// request, and longer lists are usually a blocklist that belongs at the edge.
pub const MAX_IP_RULES: usize = 64;
/// Most targets in one route's pool: every pick looks at each of them, and a service
/// spread wider than this belongs behind its own load balancer.
pub const MAX_POOL_TARGETS: usize = 64;
/// Largest weight of a pool target: 1 to 100 expresses any useful ratio between targets.
pub const MAX_TARGET_WEIGHT: i64 = 100;
/// Retries on another target after a failed connection when a route names none: one, as
/// nginx's `proxy_next_upstream` does, so a dead target costs a client nothing.
pub const DEFAULT_ROUTE_RETRIES: i16 = 1;
/// Most retries a route may ask for: each one waits up to a connect timeout.
pub const MAX_ROUTE_RETRIES: i64 = 3;
/// A health check's defaults, as Kong's and APISIX's active checks have them: a probe every
/// 2 s that must answer within 500 ms; 3 failures in a row mark a target unhealthy, 2
/// successes healthy again; any 2xx is healthy.
pub const DEFAULT_HEALTH_INTERVAL_MS: i64 = 2_000;
pub const DEFAULT_HEALTH_TIMEOUT_MS: i64 = 500;
pub const DEFAULT_HEALTHY_AFTER: i64 = 2;
pub const DEFAULT_UNHEALTHY_AFTER: i64 = 3;
pub const DEFAULT_HEALTH_EXPECT: &str = "2xx";
/// Shortest probe interval: 50 ms keeps one probing thread ahead of many targets.
pub const MIN_HEALTH_INTERVAL_MS: i64 = 50;
/// Longest probe interval and timeout: a minute; slower checks notice nothing in time.
pub const MAX_HEALTH_INTERVAL_MS: i64 = 60_000;
/// Most consecutive probe results a state change may wait for.
pub const MAX_HEALTH_THRESHOLD: i64 = 10;
/// The health thread wakes at least this often, to notice new routes and forget removed
/// ones (their probe state and their balancers' counters).
pub const HEALTH_TICK_MAX: Duration = Duration::from_millis(500);
/// How probes introduce themselves, so an upstream can leave them out of its own logs.
pub const HEALTH_USER_AGENT: &str = "tollgate-health";
/// How long start-up (`serve`, `migrate`) waits for the database before giving up: long
/// enough for a database started alongside the gateway (systemd, compose, `make run`).
pub const STARTUP_DB_WAIT: Duration = Duration::from_secs(30);
/// Connect timeout of every database connection, unless `DATABASE_URL` sets one.
pub const DB_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between the logger's retries while the database refuses writes.
pub const LOG_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// First pause before the LISTEN connection is retried; it doubles up to
/// `SYNC_RECONNECT_MAX`.
pub const SYNC_RECONNECT_MIN: Duration = Duration::from_millis(100);
/// How long a quiet LISTEN connection waits before proving it is alive with a query.
pub const SYNC_LIVENESS: Duration = Duration::from_secs(10);
/// Analytics `?window=` when absent, and its bounds: a quarter hour of minutes up to 30
/// days (minute and hour rollups are kept 32 days, so 30 days is answerable).
pub const ANALYTICS_DEFAULT_WINDOW: &str = "24h";
pub const ANALYTICS_MIN_WINDOW_SECS: u64 = 15 * 60;
pub const ANALYTICS_MAX_WINDOW_SECS: u64 = 30 * 86_400;
/// Analytics `?limit=` when absent: `top-routes` and `top-keys`, then `recent`.
pub const ANALYTICS_TOP_DEFAULT: i64 = 10;
pub const ANALYTICS_RECENT_DEFAULT: i64 = 20;
/// Most points a timeseries returns: a day of minutes, a month of hours.
pub const ANALYTICS_MAX_POINTS: i64 = 1_440;

/// The value of `RUST_LOG` when it is unset: what `env_logger` shows.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// What the request log keeps of a client's address. Memory always has the address itself:
/// the per-IP failure limits need it.
#[derive(Clone)]
pub enum ClientIpLog {
    /// The address as resolved through `TOLLGATE_TRUSTED_PROXIES`.
    Raw,
    /// `hmac:` and the first 32 hex digits of HMAC-SHA256(key, address). Keyed, because an
    /// unkeyed hash of an IPv4 address is reversed by hashing all 2^32 of them.
    Hmac { key: String },
    /// An empty string (the column is NOT NULL).
    None,
}

/// By hand, so that printing a `Config` never prints the key.
impl std::fmt::Debug for ClientIpLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientIpLog::Raw => "raw",
            ClientIpLog::Hmac { .. } => "hmac",
            ClientIpLog::None => "none",
        })
    }
}

/// Every setting, read from the environment once at start-up. Each field's default is the
/// `DEFAULT_*` constant named beside it; docs/operations.md lists them, and a test checks
/// that list against what [`Config::from_vars`] actually reads.
#[derive(Clone, Debug)]
pub struct Config {
    /// `DATABASE_URL` (required): libpq key=value string or `postgres://` URL.
    pub database_url: String,
    /// `ADMIN_SECRET` (required, at least [`MIN_ADMIN_SECRET_LEN`] characters): value of
    /// `x-admin-secret`.
    pub admin_secret: String,
    /// `TOLLGATE_LOG_CLIENT_IP` (`raw`, `hmac` or `none`), with `TOLLGATE_CLIENT_IP_KEY`
    /// (required for `hmac`); defaults to [`DEFAULT_LOG_CLIENT_IP`].
    pub client_ip_log: ClientIpLog,
    /// `LISTEN_ADDR`; defaults to [`DEFAULT_LISTEN_ADDR`].
    pub listen_addr: String,
    /// `TOLLGATE_WORKERS`; defaults to [`DEFAULT_WORKERS`].
    pub workers: usize,
    /// `TOLLGATE_DB_POOL_SIZE`; defaults to [`DEFAULT_DB_POOL_SIZE`].
    pub db_pool_size: u32,
    /// `TOLLGATE_COUNTER_POOL_SIZE`; defaults to [`DEFAULT_COUNTER_POOL_SIZE`].
    pub counter_pool_size: u32,
    /// `TOLLGATE_COALESCE_WINDOW_US`; defaults to [`DEFAULT_COALESCE_WINDOW_US`].
    pub coalesce_window: Duration,
    /// `TOLLGATE_LEASE_HORIZON_MS` (0: no leases); defaults to [`DEFAULT_LEASE_HORIZON_MS`].
    pub lease_horizon: Duration,
    /// `TOLLGATE_LEASE_MIN_ROOM`; defaults to [`DEFAULT_LEASE_MIN_ROOM`].
    pub lease_min_room: i64,
    /// `TOLLGATE_DB_WAIT_MS`; defaults to [`DEFAULT_DB_WAIT_MS`].
    pub db_wait: Duration,
    /// `TOLLGATE_CONNECT_TIMEOUT_MS`; defaults to [`DEFAULT_CONNECT_TIMEOUT_MS`].
    pub connect_timeout: Duration,
    /// `TOLLGATE_UPSTREAM_TIMEOUT_MS`; defaults to [`DEFAULT_UPSTREAM_TIMEOUT_MS`].
    pub upstream_timeout: Duration,
    /// `TOLLGATE_BCRYPT_COST` (4..=31; tests use 4); defaults to [`DEFAULT_BCRYPT_COST`].
    pub bcrypt_cost: u32,
    /// `TOLLGATE_RATE_WINDOW_SECS`; defaults to [`DEFAULT_RATE_WINDOW_SECS`].
    pub rate_window_secs: u32,
    /// `TOLLGATE_MAX_BODY_BYTES`; defaults to [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: u64,
    /// `TOLLGATE_LOG_QUEUE`; defaults to [`DEFAULT_LOG_QUEUE`].
    pub log_queue: usize,
    /// `TOLLGATE_LOG_FLUSH_MS`; defaults to [`DEFAULT_LOG_FLUSH_MS`].
    pub log_flush: Duration,
    /// `TOLLGATE_LOG_BUFFER_MAX`; defaults to [`DEFAULT_LOG_BUFFER_MAX`] rows (held during
    /// an outage, together with at most `TOLLGATE_LOG_QUEUE` rows still on the channel).
    pub log_buffer_max: usize,
    /// `TOLLGATE_SYNC_SECS`; defaults to [`DEFAULT_SYNC_SECS`].
    pub sync_interval: Duration,
    /// `TOLLGATE_BREAKER_FAILURES`; defaults to [`DEFAULT_BREAKER_FAILURES`].
    pub breaker_failures: u32,
    /// `TOLLGATE_BREAKER_COOLDOWN_MS`; defaults to [`DEFAULT_BREAKER_COOLDOWN_MS`].
    pub breaker_cooldown: Duration,
    /// `TOLLGATE_UPSTREAM_MAX_INFLIGHT`; defaults to three quarters of the workers: a hung
    /// upstream can tie up at most this many workers, so the rest keep serving other routes,
    /// while one busy upstream still gets most of the gateway.
    pub upstream_max_in_flight: usize,
    /// `TOLLGATE_TRUSTED_PROXIES`; defaults to none: comma-separated IPs of edge proxies
    /// (e.g. `127.0.0.1` behind the shipped nginx edge) whose `X-Forwarded-For` and
    /// `X-Forwarded-Proto` are believed. Anyone else could forge them, so none by default.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `TOLLGATE_LOG_RETENTION` (`s`, `m`, `h` or `d` suffix); defaults to
    /// [`DEFAULT_LOG_RETENTION`].
    pub log_retention: Duration,
    /// `TOLLGATE_ROLLUP_RETENTION` (day rollups and usage rows); defaults to
    /// [`DEFAULT_ROLLUP_RETENTION`].
    pub rollup_retention: Duration,
    /// `TOLLGATE_RETENTION_INTERVAL_MS`; defaults to [`DEFAULT_RETENTION_INTERVAL_MS`].
    pub retention_interval: Duration,
    /// `TOLLGATE_RETENTION_BATCH` (rows per DELETE); defaults to
    /// [`DEFAULT_RETENTION_BATCH`].
    pub retention_batch: i64,
    /// `TOLLGATE_METRICS_ADDR`; defaults to unset. `/metrics` is always served on the main
    /// listener behind the admin secret (`x-admin-secret` or `Authorization: Bearer`);
    /// when this is set, a second listener here serves `/metrics` without credentials, for
    /// a scraper on a private interface. Unset by default so nothing is exposed unasked.
    pub metrics_addr: Option<String>,
    /// `TOLLGATE_SHUTDOWN_DRAIN_MS`; defaults to [`DEFAULT_SHUTDOWN_DRAIN_MS`].
    pub shutdown_drain: Duration,
    /// `TOLLGATE_SHUTDOWN_GRACE_MS`, counted from the end of the drain; defaults to
    /// [`DEFAULT_SHUTDOWN_GRACE_MS`].
    pub shutdown_grace: Duration,
    /// `TOLLGATE_RATELIMIT_ON_DB_ERROR`: `fail-open` (the default) or `fail-closed`. What a
    /// request with an already-verified key gets when the counter cannot be reached.
    /// Fail-open is the default because during an outage only keys this process has
    /// already verified get this far (unknown keys get 503 anyway): serving known
    /// customers unmetered for the outage beats turning a database blip into a full API
    /// outage. Such responses carry `X-RateLimit-Degraded: 1`. `fail-closed` answers 503.
    pub ratelimit_fail_open: bool,
    /// `TOLLGATE_BCRYPT_CONCURRENCY`; defaults to half the CPUs (at least 1): bcrypt is
    /// pure CPU, so this bounds the share of the machine that keys never seen before (a
    /// flood of wrong secrets, or every key at once after a restart) can take from traffic
    /// with verified keys. The price is a slower warm-up after a restart (~12 new keys a
    /// second per slot at cost 10); raise it for many distinct keys and frequent restarts.
    pub bcrypt_concurrency: usize,
    /// `TOLLGATE_AUTH_FAIL_LIMIT` (0 turns the limit off); defaults to
    /// [`DEFAULT_AUTH_FAIL_LIMIT`].
    pub auth_fail_limit: u32,
    /// `TOLLGATE_ADMIN_FAIL_LIMIT` (0 turns the limit off); defaults to
    /// [`DEFAULT_ADMIN_FAIL_LIMIT`].
    pub admin_fail_limit: u32,
    /// `TOLLGATE_AUTH_FAIL_WINDOW_SECS`; defaults to [`DEFAULT_AUTH_FAIL_WINDOW_SECS`].
    pub auth_fail_window: Duration,
    /// `TOLLGATE_TEST_PANIC_PATH`, test-only and deliberately not in the operator docs,
    /// read by debug builds only (release builds ignore it and contain no trigger):
    /// requests to this path panic in the handler, `<path>/lock` panics while holding the
    /// key-cache lock (poisoning it), and `<path>/logger` makes the logger thread panic
    /// once. The fault tests need a real panic inside the real binary; gating it on both the
    /// build and a variable keeps it out of production binaries and ordinary debug runs.
    #[cfg(debug_assertions)]
    pub test_panic_path: Option<String>,
    /// `TOLLGATE_TEST_CLOCK_SHIFT_SECS`, test-only like `test_panic_path` and read by debug
    /// builds only: seconds added to the database clock in the counting round, so tests
    /// can put the gateway seconds before a day or month boundary without waiting for it.
    /// Always 0 in release builds.
    pub clock_shift_secs: f64,
}

impl Config {
    /// Reads the environment; the error names the variable and what is wrong with it.
    pub fn from_env() -> Result<Config, String> {
        Config::from_vars(&|var| env::var(var).ok())
    }

    /// Reads the settings through `get` (the environment, or a test's map).
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        Config::read(&Vars::new(get))
    }

    /// Every variable `from_vars` reads and its default as docs/operations.md writes it,
    /// in reading order, then `RUST_LOG` (read by `env_logger` in `main`).
    #[cfg(test)]
    pub fn documented() -> Vec<(&'static str, String)> {
        let get = |var: &str| match var {
            "DATABASE_URL" => Some("host=/nonexistent".to_string()),
            "ADMIN_SECRET" => Some("x".repeat(MIN_ADMIN_SECRET_LEN)),
            "TOLLGATE_CLIENT_IP_KEY" => Some("k".repeat(MIN_CLIENT_IP_KEY_LEN)),
            _ => None,
        };
        let vars = Vars::new(&get);
        Config::read(&vars).expect("the defaults are a valid configuration");
        let mut seen = vars.seen.into_inner();
        seen.push(("RUST_LOG", format!("`{DEFAULT_LOG_FILTER}`")));
        seen
    }

    fn read(v: &Vars) -> Result<Config, String> {
        let database_url = v
            .raw("DATABASE_URL", "(required)")
            .ok_or("DATABASE_URL is not set (e.g. host=/path/to/socket dbname=tollgate)")?;
        // Not trimmed: the secret is compared byte for byte.
        let admin_secret = v
            .exact(
                "ADMIN_SECRET",
                format!("(required, ≥ {MIN_ADMIN_SECRET_LEN} chars)"),
            )
            .unwrap_or_default();
        if admin_secret.chars().count() < MIN_ADMIN_SECRET_LEN {
            return Err(format!(
                "ADMIN_SECRET must be set to at least {MIN_ADMIN_SECRET_LEN} characters; \
                 refusing to start with an open or guessable admin API"
            ));
        }
        let client_ip_log = v.client_ip_log()?;
        let workers = v.num("TOLLGATE_WORKERS", DEFAULT_WORKERS)?;
        let cfg = Config {
            database_url,
            admin_secret,
            client_ip_log,
            listen_addr: v
                .raw("LISTEN_ADDR", format!("`{DEFAULT_LISTEN_ADDR}`"))
                .unwrap_or_else(|| DEFAULT_LISTEN_ADDR.into()),
            workers,
            db_pool_size: v.num("TOLLGATE_DB_POOL_SIZE", DEFAULT_DB_POOL_SIZE)?,
            counter_pool_size: v.num("TOLLGATE_COUNTER_POOL_SIZE", DEFAULT_COUNTER_POOL_SIZE)?,
            coalesce_window: Duration::from_micros(
                v.num("TOLLGATE_COALESCE_WINDOW_US", DEFAULT_COALESCE_WINDOW_US)?,
            ),
            lease_horizon: Duration::from_millis(
                v.num("TOLLGATE_LEASE_HORIZON_MS", DEFAULT_LEASE_HORIZON_MS)?,
            ),
            lease_min_room: v.num("TOLLGATE_LEASE_MIN_ROOM", DEFAULT_LEASE_MIN_ROOM)?,
            db_wait: v.ms("TOLLGATE_DB_WAIT_MS", DEFAULT_DB_WAIT_MS)?,
            connect_timeout: v.ms("TOLLGATE_CONNECT_TIMEOUT_MS", DEFAULT_CONNECT_TIMEOUT_MS)?,
            upstream_timeout: v.ms("TOLLGATE_UPSTREAM_TIMEOUT_MS", DEFAULT_UPSTREAM_TIMEOUT_MS)?,
            bcrypt_cost: v.num("TOLLGATE_BCRYPT_COST", DEFAULT_BCRYPT_COST)?,
            rate_window_secs: v.num("TOLLGATE_RATE_WINDOW_SECS", DEFAULT_RATE_WINDOW_SECS)?,
            max_body_bytes: v.num("TOLLGATE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?,
            log_queue: v.num("TOLLGATE_LOG_QUEUE", DEFAULT_LOG_QUEUE)?,
            log_flush: v.ms("TOLLGATE_LOG_FLUSH_MS", DEFAULT_LOG_FLUSH_MS)?,
            log_buffer_max: v.num("TOLLGATE_LOG_BUFFER_MAX", DEFAULT_LOG_BUFFER_MAX)?,
            sync_interval: Duration::from_secs(v.num("TOLLGATE_SYNC_SECS", DEFAULT_SYNC_SECS)?),
            breaker_failures: v.num("TOLLGATE_BREAKER_FAILURES", DEFAULT_BREAKER_FAILURES)?,
            breaker_cooldown: v.ms("TOLLGATE_BREAKER_COOLDOWN_MS", DEFAULT_BREAKER_COOLDOWN_MS)?,
            upstream_max_in_flight: v.num_derived(
                "TOLLGATE_UPSTREAM_MAX_INFLIGHT",
                (workers * 3 / 4).max(1),
                "¾ of workers",
            )?,
            trusted_proxies: v.ips("TOLLGATE_TRUSTED_PROXIES")?,
            log_retention: v.age("TOLLGATE_LOG_RETENTION", DEFAULT_LOG_RETENTION)?,
            rollup_retention: v.age("TOLLGATE_ROLLUP_RETENTION", DEFAULT_ROLLUP_RETENTION)?,
            retention_interval: v.ms(
                "TOLLGATE_RETENTION_INTERVAL_MS",
                DEFAULT_RETENTION_INTERVAL_MS,
            )?,
            retention_batch: v.num("TOLLGATE_RETENTION_BATCH", DEFAULT_RETENTION_BATCH)?,
            metrics_addr: v.raw("TOLLGATE_METRICS_ADDR", "(none)"),
            shutdown_drain: v.ms("TOLLGATE_SHUTDOWN_DRAIN_MS", DEFAULT_SHUTDOWN_DRAIN_MS)?,
            shutdown_grace: v.ms("TOLLGATE_SHUTDOWN_GRACE_MS", DEFAULT_SHUTDOWN_GRACE_MS)?,
            ratelimit_fail_open: v.fail_open("TOLLGATE_RATELIMIT_ON_DB_ERROR")?,
            bcrypt_concurrency: v
                .num_derived(
                    "TOLLGATE_BCRYPT_CONCURRENCY",
                    std::thread::available_parallelism().map_or(1, |n| n.get() / 2),
                    "half the CPUs (≥ 1)",
                )?
                .max(1),
            auth_fail_limit: v.num("TOLLGATE_AUTH_FAIL_LIMIT", DEFAULT_AUTH_FAIL_LIMIT)?,
            admin_fail_limit: v.num("TOLLGATE_ADMIN_FAIL_LIMIT", DEFAULT_ADMIN_FAIL_LIMIT)?,
            auth_fail_window: Duration::from_secs(v.num(
                "TOLLGATE_AUTH_FAIL_WINDOW_SECS",
                DEFAULT_AUTH_FAIL_WINDOW_SECS,
            )?),
            // Test-only: read directly, so it is not listed with the operator's settings.
            #[cfg(debug_assertions)]
            test_panic_path: (v.get)("TOLLGATE_TEST_PANIC_PATH").filter(|p| p.starts_with('/')),
            clock_shift_secs: if cfg!(debug_assertions) {
                (v.get)("TOLLGATE_TEST_CLOCK_SHIFT_SECS")
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite())
                    .unwrap_or(0.0)
            } else {
                0.0
            },
        };
        if !(4..=31).contains(&cfg.bcrypt_cost) {
            return Err("TOLLGATE_BCRYPT_COST must be between 4 and 31".into());
        }
        if cfg.retention_batch < 1 || cfg.retention_interval.is_zero() {
            return Err(
                "TOLLGATE_RETENTION_BATCH and TOLLGATE_RETENTION_INTERVAL_MS must be > 0".into(),
            );
        }
        if cfg.workers == 0
            || cfg.db_pool_size == 0
            || cfg.counter_pool_size == 0
            || cfg.rate_window_secs == 0
        {
            return Err(
                "TOLLGATE_WORKERS, TOLLGATE_DB_POOL_SIZE, TOLLGATE_COUNTER_POOL_SIZE and \
                 TOLLGATE_RATE_WINDOW_SECS must be > 0"
                    .into(),
            );
        }
        Ok(cfg)
    }
}

/// The variables as `Config::read` sees them. Every read names the variable and its
/// default as the docs show it, and is recorded, so the docs can be checked against the
/// reads themselves rather than against a second list.
struct Vars<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    seen: std::cell::RefCell<Vec<(&'static str, String)>>,
}

impl<'a> Vars<'a> {
    fn new(get: &'a dyn Fn(&str) -> Option<String>) -> Vars<'a> {
        Vars {
            get,
            seen: Default::default(),
        }
    }

    /// The variable's value, trimmed; `None` when unset or blank (a blank variable counts
    /// as unset, so `LISTEN_ADDR=` means the default, not an empty address).
    fn raw(&self, var: &'static str, default_shown: impl Into<String>) -> Option<String> {
        self.exact(var, default_shown).map(|v| v.trim().to_string())
    }

    /// The variable's value as set, untrimmed; `None` when unset or blank.
    fn exact(&self, var: &'static str, default_shown: impl Into<String>) -> Option<String> {
        self.seen.borrow_mut().push((var, default_shown.into()));
        (self.get)(var).filter(|v| !v.trim().is_empty())
    }

    fn num<T: std::str::FromStr + std::fmt::Display>(
        &self,
        var: &'static str,
        default: T,
    ) -> Result<T, String> {
        let shown = default.to_string();
        self.num_derived(var, default, shown)
    }

    /// A number whose default is computed, shown in the docs as `shown`.
    fn num_derived<T: std::str::FromStr>(
        &self,
        var: &'static str,
        default: T,
        shown: impl Into<String>,
    ) -> Result<T, String> {
        match self.raw(var, shown) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("{var} must be a non-negative whole number, got {v:?}")),
            None => Ok(default),
        }
    }

    fn ms(&self, var: &'static str, default: u64) -> Result<Duration, String> {
        self.num(var, default).map(Duration::from_millis)
    }

    fn ips(&self, var: &'static str) -> Result<Vec<std::net::IpAddr>, String> {
        let v = self.raw(var, "(none)").unwrap_or_default();
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| format!("{var}: {s:?} is not an IP address"))
            })
            .collect()
    }

    /// An age like `90s`, `30m`, `12h` or `7d`, at least one second.
    fn age(&self, var: &'static str, default: &str) -> Result<Duration, String> {
        let v = self
            .raw(var, format!("`{default}`"))
            .unwrap_or_else(|| default.into());
        parse_age(&v).ok_or_else(|| format!("{var} must look like 90s, 30m, 12h or 7d, got {v:?}"))
    }

    fn client_ip_log(&self) -> Result<ClientIpLog, String> {
        let mode = self
            .raw(
                "TOLLGATE_LOG_CLIENT_IP",
                format!("`{DEFAULT_LOG_CLIENT_IP}`"),
            )
            .unwrap_or_else(|| DEFAULT_LOG_CLIENT_IP.into());
        let key = self.raw(
            "TOLLGATE_CLIENT_IP_KEY",
            format!("(required for `hmac`, ≥ {MIN_CLIENT_IP_KEY_LEN} chars)"),
        );
        match mode.as_str() {
            "raw" => Ok(ClientIpLog::Raw),
            "none" => Ok(ClientIpLog::None),
            "hmac" => match key {
                Some(key) if key.chars().count() >= MIN_CLIENT_IP_KEY_LEN => {
                    Ok(ClientIpLog::Hmac { key })
                }
                // Like the admin secret: refusing beats a key nobody chose, which would
                // change the stored values at every restart.
                _ => Err(format!(
                    "TOLLGATE_CLIENT_IP_KEY must be set to at least {MIN_CLIENT_IP_KEY_LEN} \
                     characters while TOLLGATE_LOG_CLIENT_IP is hmac (the default): logged \
                     client IPs are hashed with it (scripts/run.sh keeps one in \
                     .data/client_ip_key), or set TOLLGATE_LOG_CLIENT_IP to raw or none"
                )),
            },
            other => Err(format!(
                "TOLLGATE_LOG_CLIENT_IP must be raw, hmac or none, got {other:?}"
            )),
        }
    }

    fn fail_open(&self, var: &'static str) -> Result<bool, String> {
        match self.raw(var, "`fail-open`").as_deref() {
            None | Some("fail-open") => Ok(true),
            Some("fail-closed") => Ok(false),
            Some(other) => Err(format!(
                "{var} must be fail-open or fail-closed, got {other:?}"
            )),
        }
    }
}

fn parse_age(v: &str) -> Option<Duration> {
    let unit = match v.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return None,
    };
    let n: u64 = v[..v.len() - 1].parse().ok()?;
    Some(Duration::from_secs(n.checked_mul(unit)?)).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_ages_take_a_unit_suffix() {
        assert_eq!(parse_age("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_age("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_age("2h"), Some(Duration::from_secs(7_200)));
        for bad in [
            "",
            "d",
            "0d",
            "7",
            "7w",
            "-1d",
            "1.5h",
            "99999999999999999999d",
            "7é",
        ] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
    }

    /// The configuration table of docs/operations.md: `(variable, default)` per row.
    fn documented_table() -> Vec<(String, String)> {
        let doc = include_str!("../docs/operations.md");
        let mut lines = doc
            .lines()
            .skip_while(|l| l.trim() != "| variable | default | meaning |")
            .skip(2);
        let mut rows = Vec::new();
        for line in lines.by_ref() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 4 {
                break;
            }
            rows.push((cells[1].trim_matches('`').to_string(), cells[2].to_string()));
        }
        rows
    }

    #[test]
    fn the_operations_doc_lists_every_setting_with_the_default_the_code_uses() {
        let table = documented_table();
        assert!(
            !table.is_empty(),
            "no configuration table in docs/operations.md"
        );
        let code: Vec<(String, String)> = Config::documented()
            .into_iter()
            .map(|(var, default)| (var.to_string(), default))
            .collect();
        for row in &table {
            assert!(
                code.contains(row),
                "docs/operations.md says {row:?}; config.rs reads {:?}",
                code.iter().find(|(v, _)| *v == row.0)
            );
        }
        for read in &code {
            assert!(
                table.contains(read),
                "config.rs reads {read:?}, which docs/operations.md does not list"
            );
        }
        assert_eq!(table.len(), code.len(), "a variable is listed twice");
    }

    /// The Debian package's settings file documents every variable `from_vars` reads with
    /// the default it applies: a heading `# NAME, default DEFAULT: ...` and one assignment,
    /// `#NAME=DEFAULT` (commented, so the default applies) or `NAME=value`.
    #[test]
    fn the_package_env_file_lists_every_setting_with_the_default_the_code_uses() {
        let file = include_str!("../scripts/deb/tollgate.env").replace('`', "");
        let code = Config::documented();
        fn assignment(line: &str) -> Option<(&str, &str)> {
            let line = line.strip_prefix('#').unwrap_or(line);
            let (name, value) = line.split_once('=')?;
            let is_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            is_name.then_some((name, value))
        }
        for (var, default) in &code {
            let default = default.replace('`', "");
            let heading = format!("# {var}, default {default}:");
            assert!(
                file.lines().any(|l| l.starts_with(&heading)),
                "scripts/deb/tollgate.env has no line starting {heading:?}"
            );
            let set: Vec<&str> = file
                .lines()
                .filter(|l| assignment(l).is_some_and(|(n, _)| n == *var))
                .collect();
            assert_eq!(set.len(), 1, "{var} is assigned {set:?} in tollgate.env");
            let literal = !default.starts_with('(') && !default.contains(' ');
            if let Some(value) = set[0].strip_prefix(&format!("#{var}=")) {
                if literal {
                    assert_eq!(value, default, "the commented default of {var}");
                }
            }
        }
        for line in file.lines() {
            if let Some((name, _)) = assignment(line) {
                assert!(
                    code.iter().any(|(var, _)| *var == name),
                    "tollgate.env sets {name}, which config.rs does not read"
                );
            }
        }
    }

    #[test]
    fn a_bad_value_is_refused_naming_its_variable() {
        let get = |var: &str| match var {
            "DATABASE_URL" => Some("host=/x".to_string()),
            "ADMIN_SECRET" => Some("0123456789abcdef".to_string()),
            "TOLLGATE_CLIENT_IP_KEY" => Some("k".repeat(MIN_CLIENT_IP_KEY_LEN)),
            "TOLLGATE_WORKERS" => Some("many".to_string()),
            _ => None,
        };
        let e = Config::from_vars(&get).unwrap_err();
        assert!(e.contains("TOLLGATE_WORKERS"), "{e}");
        let short = |var: &str| (var == "DATABASE_URL").then(|| "host=/x".to_string());
        assert!(Config::from_vars(&short)
            .unwrap_err()
            .contains("ADMIN_SECRET"));
    }

    #[test]
    fn a_blank_variable_counts_as_unset_and_the_secret_is_kept_as_set() {
        let get = |var: &str| match var {
            "DATABASE_URL" => Some(" host=/x ".to_string()),
            "ADMIN_SECRET" => Some(" 0123456789abcdef ".to_string()),
            "TOLLGATE_CLIENT_IP_KEY" => Some("k".repeat(MIN_CLIENT_IP_KEY_LEN)),
            "LISTEN_ADDR" | "TOLLGATE_WORKERS" => Some("  ".to_string()),
            _ => None,
        };
        let cfg = Config::from_vars(&get).unwrap();
        assert_eq!(cfg.listen_addr, DEFAULT_LISTEN_ADDR);
        assert_eq!(cfg.workers, DEFAULT_WORKERS);
        assert_eq!(cfg.database_url, "host=/x");
        assert_eq!(cfg.admin_secret, " 0123456789abcdef ");
        let spaces = |var: &str| match var {
            "DATABASE_URL" => Some("host=/x".to_string()),
            "ADMIN_SECRET" => Some(" ".repeat(20)),
            _ => None,
        };
        assert!(Config::from_vars(&spaces)
            .unwrap_err()
            .contains("ADMIN_SECRET"));
    }

    #[test]
    fn hmac_mode_needs_a_key_of_32_characters_and_the_other_modes_none() {
        let with = |mode: Option<&'static str>, key: Option<String>| {
            move |var: &str| match var {
                "DATABASE_URL" => Some("host=/x".to_string()),
                "ADMIN_SECRET" => Some("0123456789abcdef".to_string()),
                "TOLLGATE_LOG_CLIENT_IP" => mode.map(str::to_string),
                "TOLLGATE_CLIENT_IP_KEY" => key.clone(),
                _ => None,
            }
        };
        let short = "k".repeat(MIN_CLIENT_IP_KEY_LEN - 1);
        for (mode, key) in [(None, None), (Some("hmac"), Some(short.clone()))] {
            let e = Config::from_vars(&with(mode, key)).unwrap_err();
            assert!(
                e.contains("TOLLGATE_CLIENT_IP_KEY") && e.contains("32"),
                "{e}"
            );
            assert!(!e.contains(&short), "the rejected key is echoed: {e}");
        }
        let key = Some("k".repeat(MIN_CLIENT_IP_KEY_LEN));
        let cfg = Config::from_vars(&with(None, key)).unwrap();
        assert!(matches!(cfg.client_ip_log, ClientIpLog::Hmac { .. }));
        assert!(!format!("{cfg:?}").contains("kkkk"), "Debug shows the key");
        let raw = Config::from_vars(&with(Some("raw"), None)).unwrap();
        assert!(matches!(raw.client_ip_log, ClientIpLog::Raw));
        let none = Config::from_vars(&with(Some("none"), None)).unwrap();
        assert!(matches!(none.client_ip_log, ClientIpLog::None));
        let e = Config::from_vars(&with(Some("hash"), None)).unwrap_err();
        assert!(e.contains("TOLLGATE_LOG_CLIENT_IP"), "{e}");
    }
}
