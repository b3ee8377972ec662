//! The auth phase: find the request's key, verify it (from the cache, or once from the
//! database with bcrypt), and refuse revoked or expired keys, under the client IP's limit
//! of failed attempts.

use super::guards::{BcryptGate, FailureLimit};
use super::keys::{bearer, parse_key, KeyCache, Lookup};
use crate::config::BCRYPT_WAIT;
use crate::error::{Error, Result};
use crate::http::Ctx;
use crate::store::keys::{self, KeyInfo};
use crate::store::{DbHealth, Pool};
use chrono::Utc;
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A request's verified key, plus which header carried it (never forwarded upstream).
pub struct Authed {
    pub id: i64,
    pub user_id: i64,
    /// Everything cached about the key, its limit fields among them.
    pub info: Arc<KeyInfo>,
    write: bool,
    pub credential_header: &'static str,
}

impl Authed {
    /// `read` allows the safe methods only (RFC 9110 §9.2.1); `write` allows everything.
    pub fn allows(&self, method: &str) -> bool {
        scope_allows(self.write, method)
    }
}

/// The auth phase's state: verified keys, failed attempts per client IP, and the bound on
/// bcrypt verifications at once.
pub struct Auth {
    pub cache: KeyCache,
    pub failures: FailureLimit,
    bcrypt: BcryptGate,
}

impl Auth {
    pub fn new(failures: FailureLimit, bcrypt: BcryptGate) -> Auth {
        Auth {
            cache: KeyCache::default(),
            failures,
            bcrypt,
        }
    }

    /// Finds, verifies and checks the request's key. A key already verified costs a SHA-256
    /// and a map lookup. Anything else first passes the client IP's failure limit (429 once
    /// it has failed too often), then the cache of recent refusals, and only then reaches the
    /// database and a bounded bcrypt slot; each refusal counts against the IP.
    pub fn authenticate(&self, pool: &Pool, health: &DbHealth, ctx: &Ctx) -> Result<Authed> {
        let (raw, credential_header) = presented_key(ctx)?;
        let (public_id, secret) = parse_key(raw).ok_or(Error::InvalidApiKey)?;
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let cache = &self.cache;
        let refuse = || {
            self.failures.record(&ctx.client_ip);
            Error::InvalidApiKey
        };
        let (info, previous) = match cache.lookup(public_id, &digest) {
            Lookup::Current(info) => {
                cache.hits.fetch_add(1, Ordering::Relaxed);
                (info, false)
            }
            Lookup::Previous(info) => {
                cache.hits.fetch_add(1, Ordering::Relaxed);
                (info, true)
            }
            // Cached id, other secret: certainly wrong, and no bcrypt needed to say so.
            Lookup::Wrong => {
                self.failures.check(&ctx.client_ip)?;
                return Err(refuse());
            }
            Lookup::Miss => {
                self.failures.check(&ctx.client_ip)?;
                if cache.recently_failed(public_id, &digest) {
                    return Err(refuse());
                }
                cache.misses.fetch_add(1, Ordering::Relaxed);
                match self.verify_from_db(pool, health, public_id, secret) {
                    Ok((info, hash, previous)) => {
                        let info = Arc::new(info);
                        cache.insert(public_id, digest, &hash, info.clone());
                        (info, previous)
                    }
                    Err(Error::InvalidApiKey) => {
                        cache.remember_failure(public_id, digest);
                        return Err(refuse());
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let now = Utc::now();
        // The previous secret's grace is judged per request, so it ends on time on every
        // replica without any notification.
        if previous && info.hashes.prev_valid_until.is_none_or(|t| t <= now) {
            return Err(Error::RotatedApiKey);
        }
        if info.revoked {
            return Err(Error::RevokedApiKey);
        }
        if info.expires_at.is_some_and(|t| t <= now) {
            return Err(Error::ExpiredApiKey);
        }
        if info.paused {
            return Err(Error::InactiveApiKey);
        }
        Ok(Authed {
            id: info.id,
            user_id: info.user_id,
            write: info.write,
            info,
            credential_header,
        })
    }

    /// The key, the hash that accepted `secret`, and whether that is the previous one
    /// (a rotated-out secret, whose grace the caller judges).
    fn verify_from_db(
        &self,
        pool: &Pool,
        health: &DbHealth,
        public_id: &str,
        secret: &str,
    ) -> Result<(KeyInfo, String, bool)> {
        // While the database is known to be down, unknown keys get 503 at once.
        let found = health.call(|| keys::find_for_verify(pool, public_id))?;
        let key = found.ok_or(Error::InvalidApiKey)?;
        // bcrypt is pure CPU: a bounded number at once keeps cached-key traffic moving.
        let _slot = self.bcrypt.acquire(BCRYPT_WAIT)?;
        let hashes = &key.hashes;
        let candidates = std::iter::once((&hashes.current, false))
            .chain(hashes.previous.as_ref().map(|h| (h, true)));
        for (hash, previous) in candidates {
            self.cache
                .bcrypt_verifications
                .fetch_add(1, Ordering::Relaxed);
            if bcrypt::verify(secret, hash).unwrap_or(false) {
                return Ok((key.info(), hash.clone(), previous));
            }
        }
        Err(Error::InvalidApiKey)
    }
}

/// The key from `x-api-key`, else from `Authorization: Bearer`, with the header's name.
fn presented_key(ctx: &Ctx) -> Result<(&str, &'static str)> {
    if let Some(v) = ctx.header("x-api-key") {
        return Ok((v.trim(), "x-api-key"));
    }
    if let Some(v) = ctx.header("Authorization").and_then(bearer) {
        return Ok((v, "Authorization"));
    }
    Err(Error::MissingApiKey)
}

fn scope_allows(write: bool, method: &str) -> bool {
    write || matches!(method, "GET" | "HEAD" | "OPTIONS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_scope_allows_only_safe_methods() {
        let read = |m| scope_allows(false, m);
        assert!(read("GET") && read("HEAD") && read("OPTIONS"));
        assert!(!read("POST") && !read("DELETE") && !read("PATCH"));
        assert!(scope_allows(true, "DELETE"));
    }
}
