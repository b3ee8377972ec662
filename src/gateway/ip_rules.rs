//! Judging a request's client address against a key's or a route's IP rules
//! (`store::ip_rules` holds the rules and the matching).

use crate::error::{Error, Result};
use crate::store::ip_rules::IpRules;
use std::cell::OnceCell;
use std::net::IpAddr;

/// The client address as `http::context` resolved it (through the trusted proxies),
/// parsed the first time a rule needs it and at most once per request.
pub struct Client<'a> {
    raw: &'a str,
    ip: OnceCell<Option<IpAddr>>,
}

impl<'a> Client<'a> {
    pub fn new(raw: &'a str) -> Client<'a> {
        Client {
            raw,
            ip: OnceCell::new(),
        }
    }

    /// `IpNotAllowed` unless `rules` admit the client. No rules: nothing is parsed. An
    /// address that cannot be read (no peer address) fails any rule: rules exist to refuse.
    pub fn check(&self, rules: &IpRules) -> Result<()> {
        if rules.is_empty() {
            return Ok(());
        }
        match self.ip.get_or_init(|| self.raw.parse().ok()) {
            Some(ip) if rules.admits(*ip) => Ok(()),
            _ => Err(Error::IpNotAllowed),
        }
    }
}
