//! `/admin/users`: create, list, read and delete users.

use super::paged;
use crate::error::{Error, Result};
use crate::gateway::keys::KeyCache;
use crate::gateway::routes::RouteTable;
use crate::http::{Ctx, Reply};
use crate::operator::input::{self, required, string};
use crate::operator::ts;
use crate::store::users::{self, User};
use crate::store::Pool;
use serde_json::{json, Map, Value};

fn user_json(u: &User) -> Value {
    json!({
        "id": u.id,
        "email": u.email,
        "name": u.name,
        "createdAt": ts(u.created_at),
    })
}

pub fn create(pool: &Pool, body: &Map<String, Value>) -> Result<Reply> {
    let email = required(string(body, "email", 254)?, "email")?;
    let name = required(string(body, "name", 200)?, "name")?;
    if !valid_email(&email) {
        return Err(Error::field("email", "must be an email address"));
    }
    let user = users::insert(pool, &email, &name, &Default::default())?;
    Ok(Reply::json(201, &user_json(&user)))
}

/// One `@` with something on both sides and no spaces: enough to catch mistakes without
/// rejecting the odd valid address a stricter pattern would.
fn valid_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

pub fn list(pool: &Pool, ctx: &Ctx) -> Result<Reply> {
    let (limit, after) = input::page(ctx)?;
    let rows = users::list(pool, after, limit + 1)?;
    Ok(paged(rows, limit, |u| u.id, user_json))
}

pub fn get(pool: &Pool, id: i64) -> Result<Reply> {
    let user = users::get(pool, id)?.ok_or_else(|| Error::NotFound("user".into()))?;
    Ok(Reply::json(200, &user_json(&user)))
}

/// Deletes the user with its keys and routes; the key cache and route table forget them
/// before the reply leaves.
pub fn delete(pool: &Pool, cache: &KeyCache, routes: &RouteTable, id: i64) -> Result<Reply> {
    if !users::delete(pool, id)? {
        return Err(Error::NotFound("user".into()));
    }
    cache.forget_user(id);
    routes.reload(pool)?;
    Ok(Reply::empty(204))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_need_one_at_and_a_dotted_domain() {
        assert!(valid_email("a@b.co"));
        for bad in ["a", "a@b", "@b.co", "a@@b.co", "a b@c.co", "a@.co"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }
}
