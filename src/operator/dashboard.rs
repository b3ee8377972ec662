//! `GET /dashboard`: the operator page, embedded in the binary (HTML, script and style
//! from `src/operator/dashboard/`, no build step, nothing fetched from elsewhere). The page holds
//! no data: it asks for the admin secret or an API key and calls `/analytics/*` with it (and,
//! for the plan panel, `/admin/*` or `/me`).

use super::READ_ONLY;
use crate::error::{Error, Result};
use crate::http::{Body, Ctx, Reply};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// Same origin only: the script and style are separate files so that no inline code has
/// to be allowed, and `connect-src 'self'` keeps the credential from leaving the gateway.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

pub fn handle(ctx: &Ctx) -> Result<Reply> {
    let (body, content_type) = match ctx.path.as_str() {
        "/dashboard" | "/dashboard/" => (INDEX, "text/html; charset=utf-8"),
        "/dashboard/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/dashboard/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return Err(Error::NotFound("dashboard file".into())),
    };
    if ctx.method != "GET" && ctx.method != "HEAD" {
        return Err(Error::method_not_allowed(READ_ONLY));
    }
    let mut reply = Reply::empty(200);
    reply.header("Content-Type", content_type);
    reply.header("Content-Security-Policy", CSP);
    reply.header("X-Content-Type-Options", "nosniff");
    reply.header("Referrer-Policy", "no-referrer");
    // The page changes only with the binary; `no-cache` revalidates after an upgrade.
    reply.header("Cache-Control", "no-cache");
    reply.body = Body::Bytes(body.as_bytes().to_vec());
    Ok(reply)
}
