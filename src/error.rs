//! The gateway's one error type. Every failure a client can see is a variant here, and
//! `Error::status`/`Error::code` are the single place it is mapped to HTTP.

use serde_json::json;
use std::borrow::Cow;
use std::fmt;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A field of the request is missing, wrong or unknown; `field` names it (owned only
    /// for an unknown field, whose name comes from the request).
    InvalidField {
        field: Cow<'static, str>,
        message: String,
    },
    /// The request itself cannot be understood (framing, JSON syntax, path).
    BadRequest(String),
    /// No admin secret, or the wrong one.
    Unauthorized,
    MissingApiKey,
    InvalidApiKey,
    ExpiredApiKey,
    RevokedApiKey,
    /// The secret was replaced by a rotation and its grace period has ended.
    RotatedApiKey,
    /// The key is paused; unlike a revoked key it may be resumed.
    InactiveApiKey,
    InsufficientScope,
    /// The client address is outside the key's or the route's IP rules.
    IpNotAllowed,
    /// A CORS preflight from an origin the matched route's policy does not allow.
    CorsOriginNotAllowed,
    NotFound(String),
    RouteNotFound,
    Conflict(String),
    /// The path exists but not for this method; `allow` lists the methods it takes, as the
    /// `Allow` header every 405 must carry says them (RFC 9110 §15.5.6), e.g. `GET, HEAD`.
    MethodNotAllowed {
        allow: Cow<'static, str>,
    },
    PayloadTooLarge(u64),
    /// The request target is longer than this many bytes.
    UriTooLong(usize),
    /// A header value, or the header section, is longer than this many bytes.
    HeaderTooLarge(usize),
    /// Over a named rate limit (`limit` is its name as the headers show it).
    RateLimited {
        retry_after: u64,
        limit: String,
    },
    /// Over a quota (`limit` is `quota` or `user.quota`); `retry_after` reaches its reset.
    QuotaExceeded {
        retry_after: u64,
        limit: String,
    },
    UpstreamUnreachable(String),
    UpstreamTimeout,
    /// The upstream's circuit breaker is open (or probing): refused without trying.
    CircuitOpen {
        retry_after: u64,
    },
    /// Too many requests already in flight to this upstream.
    UpstreamBusy,
    /// No target of the route's pool may take a request now: circuits open, or marked
    /// unhealthy by the health check.
    UpstreamUnavailable {
        retry_after: u64,
    },
    /// Too many failed key or admin-secret checks from this client IP.
    TooManyFailures {
        retry_after: u64,
    },
    /// Every bcrypt slot stayed busy for `config::BCRYPT_WAIT`.
    AuthBusy,
    /// The database cannot be reached or no pooled connection came free in time.
    DatabaseUnavailable,
    /// The process is leaving (SIGTERM/SIGINT): `/readyz` from the first signal, every
    /// request once the drain is over.
    ShuttingDown,
    /// A bug or an unexpected database answer; details go to the log, not the client.
    Internal(String),
}

impl Error {
    pub fn field(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Error {
        Error::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A 405 for an endpoint that takes `allow` (a static list, e.g. `"GET, HEAD"`).
    pub fn method_not_allowed(allow: impl Into<Cow<'static, str>>) -> Error {
        Error::MethodNotAllowed {
            allow: allow.into(),
        }
    }

    /// The `Allow` header a 405 carries.
    pub fn allow(&self) -> Option<&str> {
        match self {
            Error::MethodNotAllowed { allow } => Some(allow),
            _ => None,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidField { .. } | Error::BadRequest(_) => 400,
            Error::Unauthorized
            | Error::MissingApiKey
            | Error::InvalidApiKey
            | Error::ExpiredApiKey
            | Error::RevokedApiKey
            | Error::RotatedApiKey
            | Error::InactiveApiKey => 401,
            Error::InsufficientScope | Error::IpNotAllowed | Error::CorsOriginNotAllowed => 403,
            Error::NotFound(_) | Error::RouteNotFound => 404,
            Error::MethodNotAllowed { .. } => 405,
            Error::Conflict(_) => 409,
            Error::PayloadTooLarge(_) => 413,
            Error::UriTooLong(_) => 414,
            Error::HeaderTooLarge(_) => 431,
            Error::RateLimited { .. }
            | Error::QuotaExceeded { .. }
            | Error::TooManyFailures { .. } => 429,
            Error::Internal(_) => 500,
            Error::UpstreamUnreachable(_) => 502,
            Error::DatabaseUnavailable
            | Error::CircuitOpen { .. }
            | Error::UpstreamBusy
            | Error::UpstreamUnavailable { .. }
            | Error::AuthBusy
            | Error::ShuttingDown => 503,
            Error::UpstreamTimeout => 504,
        }
    }

    /// Stable machine-readable code: clients branch on this, never on the message.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidField { .. } => "invalid_field",
            Error::BadRequest(_) => "bad_request",
            Error::Unauthorized => "unauthorized",
            Error::MissingApiKey => "missing_api_key",
            Error::InvalidApiKey => "invalid_api_key",
            Error::ExpiredApiKey => "expired_api_key",
            Error::RevokedApiKey => "revoked_api_key",
            Error::RotatedApiKey => "rotated_api_key",
            Error::InactiveApiKey => "inactive_api_key",
            Error::InsufficientScope => "insufficient_scope",
            Error::IpNotAllowed => "ip_not_allowed",
            Error::CorsOriginNotAllowed => "cors_origin_not_allowed",
            Error::NotFound(_) => "not_found",
            Error::RouteNotFound => "route_not_found",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::Conflict(_) => "conflict",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::UriTooLong(_) => "uri_too_long",
            Error::HeaderTooLarge(_) => "header_too_large",
            Error::RateLimited { .. } => "rate_limited",
            Error::QuotaExceeded { .. } => "quota_exceeded",
            Error::TooManyFailures { .. } => "too_many_failed_attempts",
            Error::AuthBusy => "auth_busy",
            Error::UpstreamUnreachable(_) => "upstream_unreachable",
            Error::UpstreamTimeout => "upstream_timeout",
            Error::CircuitOpen { .. } => "upstream_circuit_open",
            Error::UpstreamBusy => "upstream_busy",
            Error::UpstreamUnavailable { .. } => "upstream_unavailable",
            Error::DatabaseUnavailable => "database_unavailable",
            Error::ShuttingDown => "shutting_down",
            Error::Internal(_) => "internal",
        }
    }

    /// The JSON body: `{"error":{"code":..,"message":..}}`, plus `field` for validation.
    /// Seconds a client should wait before trying again, for the `Retry-After` header.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::RateLimited { retry_after, .. }
            | Error::QuotaExceeded { retry_after, .. }
            | Error::CircuitOpen { retry_after }
            | Error::UpstreamUnavailable { retry_after }
            | Error::TooManyFailures { retry_after } => Some(*retry_after),
            Error::UpstreamBusy | Error::DatabaseUnavailable | Error::AuthBusy => Some(1),
            _ => None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let mut err = json!({ "code": self.code(), "message": self.to_string() });
        match self {
            Error::InvalidField { field, .. } => err["field"] = json!(field),
            Error::RateLimited { limit, .. } | Error::QuotaExceeded { limit, .. } => {
                err["limit"] = json!(limit)
            }
            _ => {}
        }
        json!({ "error": err })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidField { field, message } => write!(f, "{field}: {message}"),
            Error::BadRequest(m) => write!(f, "{m}"),
            Error::Unauthorized => write!(f, "missing or wrong x-admin-secret"),
            Error::MissingApiKey => {
                write!(f, "send an API key in x-api-key or Authorization: Bearer")
            }
            Error::InvalidApiKey => write!(f, "invalid API key"),
            Error::ExpiredApiKey => write!(f, "API key has expired"),
            Error::RevokedApiKey => write!(f, "API key has been revoked"),
            Error::RotatedApiKey => write!(
                f,
                "API key has been rotated and this secret's grace period is over; use the new key"
            ),
            Error::InactiveApiKey => write!(f, "API key is paused"),
            Error::InsufficientScope => {
                write!(f, "this key's scopes do not allow this method")
            }
            Error::IpNotAllowed => {
                write!(f, "this client address may not use this key or route")
            }
            Error::CorsOriginNotAllowed => {
                write!(f, "this origin is not allowed by the route's CORS policy")
            }
            Error::NotFound(what) => write!(f, "{what} not found"),
            Error::RouteNotFound => write!(f, "no route matches this path for this key"),
            Error::MethodNotAllowed { allow } => {
                write!(f, "method not allowed on this endpoint; it takes {allow}")
            }
            Error::Conflict(m) => write!(f, "{m}"),
            Error::PayloadTooLarge(max) => {
                write!(f, "request body is larger than {max} bytes")
            }
            Error::UriTooLong(max) => write!(f, "request target is longer than {max} bytes"),
            Error::HeaderTooLarge(max) => {
                write!(f, "request header is larger than {max} bytes")
            }
            Error::RateLimited { retry_after, limit } => {
                write!(f, "rate limit \"{limit}\" exceeded; retry in {retry_after} s")
            }
            Error::QuotaExceeded { retry_after, limit } => {
                write!(f, "quota \"{limit}\" used up; it resets in {retry_after} s")
            }
            Error::UpstreamUnreachable(why) => write!(f, "upstream unreachable: {why}"),
            Error::UpstreamTimeout => write!(f, "upstream did not answer in time"),
            Error::CircuitOpen { retry_after } => {
                write!(f, "upstream is failing; not trying it for {retry_after} s")
            }
            Error::UpstreamBusy => write!(f, "too many requests in flight to this upstream"),
            Error::UpstreamUnavailable { .. } => write!(
                f,
                "no target of this route's upstream pool is available (circuits open or unhealthy)"
            ),
            Error::TooManyFailures { retry_after } => write!(
                f,
                "too many failed authentication attempts from this address; retry in {retry_after} s"
            ),
            Error::AuthBusy => write!(f, "too many key verifications in progress, try again"),
            Error::DatabaseUnavailable => write!(f, "database unavailable, try again"),
            Error::ShuttingDown => {
                write!(f, "this instance is shutting down; send the request again")
            }
            Error::Internal(_) => write!(f, "internal error"),
        }
    }
}

impl std::error::Error for Error {}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Error {
        // A closed connection or a failed connect is an outage, not a bug: 503 lets clients
        // and load balancers retry elsewhere.
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        // 57P0x: the server is shutting down or starting; 53300: too many connections.
        let outage = e
            .code()
            .is_some_and(|c| c.code().starts_with("57P0") || c.code() == "53300");
        if e.is_closed() || io || outage {
            log::warn!("database unavailable: {}", describe(&e));
            return Error::DatabaseUnavailable;
        }
        // Class 22 (data exception: a NUL in text, a number out of range) is a value the
        // client sent that validation let through: the request's fault, not a 500.
        if e.code().is_some_and(|c| c.code().starts_with("22")) {
            log::warn!("value refused by the database: {}", describe(&e));
            return Error::BadRequest("a value in the request cannot be stored".into());
        }
        Error::Internal(format!("database: {}", describe(&e)))
    }
}

impl From<r2d2::Error> for Error {
    fn from(e: r2d2::Error) -> Error {
        // `store::Pool::get` has logged it (once per outage).
        log::debug!("no database connection: {e}");
        Error::DatabaseUnavailable
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A database error with its server message or cause; `postgres::Error`'s own `Display`
/// says only "db error" for errors the server reports.
pub fn describe(e: &postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}
