//! What a log row keeps of the client's address (`TOLLGATE_LOG_CLIENT_IP`). Only what is
//! written changes: the per-IP failure limits keep using the address itself, in memory.

use crate::config::ClientIpLog;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt::Write;

/// Hex digits of the HMAC kept: 128 bits, so two addresses never share a value in practice,
/// at half the column width of the full digest.
const KEPT_HEX_DIGITS: usize = 32;

pub enum ClientIps {
    Raw,
    /// The keyed state, built once: each row clones it instead of rehashing the key.
    Hmac(Hmac<Sha256>),
    None,
}

impl ClientIps {
    pub fn new(mode: &ClientIpLog) -> ClientIps {
        match mode {
            ClientIpLog::Raw => ClientIps::Raw,
            ClientIpLog::Hmac { key } => ClientIps::Hmac(
                Hmac::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length"),
            ),
            ClientIpLog::None => ClientIps::None,
        }
    }

    /// The value stored for `ip`: the address, `hmac:<32 hex digits>`, or empty.
    pub fn stored(&self, ip: &str) -> String {
        match self {
            ClientIps::Raw => ip.to_string(),
            ClientIps::Hmac(keyed) => {
                let mut mac = keyed.clone();
                mac.update(ip.as_bytes());
                let mut out = String::with_capacity(5 + KEPT_HEX_DIGITS);
                out.push_str("hmac:");
                for b in &mac.finalize().into_bytes()[..KEPT_HEX_DIGITS / 2] {
                    let _ = write!(out, "{b:02x}");
                }
                out
            }
            ClientIps::None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hmac_matches_rfc_4231_and_keeps_its_first_128_bits() {
        // RFC 4231 test case 2: key "Jefe"; the full HMAC-SHA256 is
        // 5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843.
        let ips = ClientIps::new(&ClientIpLog::Hmac { key: "Jefe".into() });
        assert_eq!(
            ips.stored("what do ya want for nothing?"),
            "hmac:5bdcc146bf60754e6a042426089575c7"
        );
    }

    #[test]
    fn raw_keeps_the_address_and_none_keeps_nothing() {
        assert_eq!(ClientIps::new(&ClientIpLog::Raw).stored("::1"), "::1");
        assert_eq!(ClientIps::new(&ClientIpLog::None).stored("::1"), "");
    }
}
