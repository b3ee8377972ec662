//! API keys: the `gw_<publicId>_<secret>` format, minting, and the cache of verified keys.
//! A key's first use costs one indexed lookup and one bcrypt verify (`auth.rs`); after
//! that the cache answers with a SHA-256 comparison, so bcrypt never sits on the hot path.

use crate::config::{FAILED_KEY_CACHE_MAX, FAILED_KEY_TTL};
use crate::error::{Error, Result};
use crate::store::keys::KeyInfo;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Length of the public lookup id (base62): 62^12 ≈ 2^71, so ids never collide in practice
/// and reveal nothing secret.
const PUBLIC_ID_LEN: usize = 12;
/// Length of the secret (base62): 62^32 ≈ 2^190 bits, well over the 128 required.
const SECRET_LEN: usize = 32;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

struct Cached {
    /// The secrets bcrypt accepted, at most one per hash the key has (its current one and,
    /// after a rotation, the previous one).
    verified: Vec<Verified>,
    /// Shared with the requests using it, so a lookup copies a pointer, not the limits.
    info: Arc<KeyInfo>,
}

/// SHA-256 of a secret bcrypt accepted, and the hash that accepted it: a later rotation
/// changes which hash is current, so the digest alone cannot say which secret it was.
struct Verified {
    digest: [u8; 32],
    hash: String,
}

/// What the cache knows about a presented secret.
pub(super) enum Lookup {
    /// The key's current secret.
    Current(Arc<KeyInfo>),
    /// The secret before the last rotation (within its grace or not: the caller judges).
    Previous(Arc<KeyInfo>),
    /// Neither, while every hash of the key has a verified secret: certainly wrong.
    Wrong,
    /// Not known either way: bcrypt must decide.
    Miss,
}

/// Verified keys by public id. Entries are only ever created after a successful bcrypt
/// verify; admin changes update them in place and the sync thread refreshes them.
#[derive(Default)]
pub struct KeyCache {
    map: RwLock<HashMap<String, Cached>>,
    /// Recently refused (public id, secret digest) pairs and when they were refused.
    failed: Mutex<HashMap<(String, [u8; 32]), Instant>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub bcrypt_verifications: AtomicU64,
}

impl KeyCache {
    /// Replaces the metadata of a cached key (revoked, limit changed...), if cached.
    pub fn update(&self, info: KeyInfo) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.values_mut().find(|c| c.info.id == info.id) {
            c.info = Arc::new(info);
        }
    }

    /// Forgets every cached key of a user (the user was deleted).
    pub fn forget_user(&self, user_id: i64) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, c| c.info.user_id != user_id);
    }

    pub fn cached_ids(&self) -> Vec<i64> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.values().map(|c| c.info.id).collect()
    }

    /// Applies a fresh read of the cached keys' rows; ids absent from `fresh` were deleted.
    pub fn replace_all(&self, fresh: Vec<KeyInfo>) {
        let by_id: HashMap<i64, KeyInfo> = fresh.into_iter().map(|k| (k.id, k)).collect();
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, c| match by_id.get(&c.info.id) {
            Some(k) => {
                c.info = Arc::new(k.clone());
                true
            }
            None => false,
        });
    }

    pub(super) fn lookup(&self, public_id: &str, digest: &[u8; 32]) -> Lookup {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let Some(c) = map.get(public_id) else {
            return Lookup::Miss;
        };
        let hashes = &c.info.hashes;
        let is_previous = |h: &str| hashes.previous.as_deref() == Some(h);
        let (mut current, mut previous) = (false, false);
        for v in &c.verified {
            // The id is public; the secret's digest is compared in constant time.
            let same: bool = v.digest.ct_eq(digest).into();
            if same && v.hash == hashes.current {
                return Lookup::Current(c.info.clone());
            }
            if same && is_previous(&v.hash) {
                return Lookup::Previous(c.info.clone());
            }
            current |= v.hash == hashes.current;
            previous |= is_previous(&v.hash);
        }
        if current && (previous || hashes.previous.is_none()) {
            Lookup::Wrong
        } else {
            Lookup::Miss
        }
    }

    pub(super) fn recently_failed(&self, public_id: &str, digest: &[u8; 32]) -> bool {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed
            .get(&(public_id.to_string(), *digest))
            .is_some_and(|at| at.elapsed() < FAILED_KEY_TTL)
    }

    pub(super) fn remember_failure(&self, public_id: &str, digest: [u8; 32]) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.len() >= FAILED_KEY_CACHE_MAX {
            failed.retain(|_, at| at.elapsed() < FAILED_KEY_TTL);
            if failed.len() >= FAILED_KEY_CACHE_MAX {
                failed.clear();
            }
        }
        failed.insert((public_id.to_string(), digest), Instant::now());
    }

    /// Debug builds only: panics while holding the cache's write lock, poisoning it, for
    /// the test that a poisoned lock takes nothing down (see `Config::test_panic_path`).
    #[cfg(debug_assertions)]
    pub fn panic_holding_lock(&self) {
        let _map = self.map.write().unwrap_or_else(|p| p.into_inner());
        panic!("test-only panic while holding the key cache lock");
    }

    /// Remembers that bcrypt accepted the secret with this digest against `hash`; digests
    /// of hashes the key no longer has are dropped.
    pub(super) fn insert(&self, public_id: &str, digest: [u8; 32], hash: &str, info: Arc<KeyInfo>) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let c = map.entry(public_id.to_string()).or_insert_with(|| Cached {
            verified: Vec::new(),
            info: info.clone(),
        });
        let h = &info.hashes;
        c.verified.retain(|v| {
            v.hash != hash && (v.hash == h.current || h.previous.as_deref() == Some(&v.hash))
        });
        c.verified.push(Verified {
            digest,
            hash: hash.to_string(),
        });
        c.info = info;
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
pub fn bearer(v: &str) -> Option<&str> {
    let v = v.trim();
    let scheme = v.get(..7)?;
    scheme
        .eq_ignore_ascii_case("bearer ")
        .then(|| v[7..].trim())
}

/// The gateway key carried by an `Authorization` value, if it carries one.
pub fn bearer_key(v: &str) -> Option<(&str, &str)> {
    parse_key(bearer(v)?)
}

/// Splits `gw_<publicId>_<secret>`; `None` for anything else, before any DB work.
pub fn parse_key(raw: &str) -> Option<(&str, &str)> {
    let rest = raw.strip_prefix("gw_")?;
    let (id, secret) = rest.split_once('_')?;
    let base62 = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_alphanumeric());
    (base62(id, PUBLIC_ID_LEN) && base62(secret, SECRET_LEN)).then_some((id, secret))
}

/// A new key: `(public_id, secret, raw key)`. The caller stores bcrypt(secret) only.
pub fn mint_key() -> Result<(String, String, String)> {
    let public_id = random_base62(PUBLIC_ID_LEN)?;
    let secret = random_base62(SECRET_LEN)?;
    let raw = format!("gw_{public_id}_{secret}");
    Ok((public_id, secret, raw))
}

fn random_base62(n: usize) -> Result<String> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).map_err(|e| Error::Internal(format!("getrandom: {e}")))?;
        // Rejection sampling: 248 = 4 * 62, so accepted bytes are uniform over base62.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == n {
                break;
            }
            out.push(BASE62[usize::from(*b % 62)] as char);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_parse_back() {
        let (id, secret, raw) = mint_key().unwrap();
        assert_eq!(parse_key(&raw), Some((id.as_str(), secret.as_str())));
        assert!(raw.starts_with("gw_"));
    }

    #[test]
    fn malformed_keys_are_rejected_before_any_lookup() {
        for bad in [
            "",
            "gw_",
            "gw_abc_def",
            "xx_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
            "gw_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB!",
            "gw_AAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
            "gw_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB_",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// Whatever a client sends, parsing answers without panicking, and what it
            /// accepts is exactly `gw_` + 12 base62 + `_` + 32 base62, split at the `_`.
            #[test]
            fn parse_key_accepts_only_the_key_shape(raw in prop_oneof![
                any::<String>(),
                "gw_[A-Za-z0-9_]{0,50}",
                "gw_[A-Za-z0-9]{12}_[A-Za-z0-9]{32}",
                "gw_[A-Za-z0-9]{11,13}_[A-Za-z0-9é!]{31,33}",
            ]) {
                if let Some((id, secret)) = parse_key(&raw) {
                    prop_assert_eq!(format!("gw_{id}_{secret}"), raw.clone());
                    prop_assert_eq!(id.len(), PUBLIC_ID_LEN);
                    prop_assert_eq!(secret.len(), SECRET_LEN);
                    prop_assert!(id.bytes().chain(secret.bytes()).all(|b| b.is_ascii_alphanumeric()));
                } else {
                    let shaped = raw.len() == 3 + PUBLIC_ID_LEN + 1 + SECRET_LEN
                        && raw.starts_with("gw_")
                        && raw.as_bytes()[3 + PUBLIC_ID_LEN] == b'_'
                        && raw.bytes().enumerate().all(|(i, b)| i < 3 || i == 3 + PUBLIC_ID_LEN || b.is_ascii_alphanumeric());
                    prop_assert!(!shaped, "refused a well-shaped key {}", raw);
                }
            }

            /// `Authorization: Bearer <key>`: any case of the scheme, spaces around the
            /// token; anything else (other schemes, no key, any string) is not a key.
            #[test]
            fn bearer_key_finds_the_key_in_any_spelling_of_the_scheme(
                id in "[A-Za-z0-9]{12}", secret in "[A-Za-z0-9]{32}",
                scheme in "[bB][eE][aA][rR][eE][rR]", pad in " {0,3}", tail in " {0,3}",
                junk in any::<String>(),
            ) {
                let value = format!("{pad}{scheme} {pad}gw_{id}_{secret}{tail}");
                prop_assert_eq!(bearer_key(&value), Some((id.as_str(), secret.as_str())));
                let basic = format!("Basic gw_{id}_{secret}");
                prop_assert_eq!(bearer_key(&basic), None);
                if let Some((i, s)) = bearer_key(&junk) {
                    let key = format!("gw_{i}_{s}");
                    prop_assert!(junk.contains(&key));
                }
            }
        }
    }
}
