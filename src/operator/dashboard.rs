//! `GET /dashboard`: the operator page, embedded in the binary (HTML, script and style
//! from `src/operator/dashboard/`, no build step, nothing fetched from elsewhere). The page holds
//! no data: it asks for the admin secret or an API key and calls `/analytics/*` with it (and,
//! for the plan panel, `/admin/*` or `/me`). [`serve`] also serves `/docs`' files.

use super::READ_ONLY;
use crate::error::{Error, Result};
use crate::http::{Body, Ctx, Reply};

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// A page's files: path, content, content type.
pub type Files = [(&'static str, &'static str, &'static str)];

const FILES: &Files = &[
    ("/dashboard", include_str!("dashboard/index.html"), HTML),
    ("/dashboard/", include_str!("dashboard/index.html"), HTML),
    ("/dashboard/app.js", include_str!("dashboard/app.js"), JS),
    ("/dashboard/app.css", include_str!("dashboard/app.css"), CSS),
];

/// `/docs`' files: the API reference rendered from `/openapi.json` (`src/operator/docs/`).
pub const DOCS: &Files = &[
    ("/docs", include_str!("docs/index.html"), HTML),
    ("/docs/", include_str!("docs/index.html"), HTML),
    ("/docs/app.js", include_str!("docs/app.js"), JS),
    ("/docs/app.css", include_str!("docs/app.css"), CSS),
];

/// Same origin only: the script and style are separate files so that no inline code has
/// to be allowed, and `connect-src 'self'` keeps the credential from leaving the gateway.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

pub fn handle(ctx: &Ctx) -> Result<Reply> {
    serve(ctx, FILES)
}

/// One of `files`, under [`CSP`]; 404 for any other path.
pub fn serve(ctx: &Ctx, files: &Files) -> Result<Reply> {
    let Some((_, body, content_type)) = files.iter().find(|(p, _, _)| *p == ctx.path) else {
        return Err(Error::NotFound("file".into()));
    };
    if ctx.method != "GET" && ctx.method != "HEAD" {
        return Err(Error::method_not_allowed(READ_ONLY));
    }
    let mut reply = Reply::empty(200);
    reply.header("Content-Type", *content_type);
    reply.header("Content-Security-Policy", CSP);
    reply.header("X-Content-Type-Options", "nosniff");
    reply.header("Referrer-Policy", "no-referrer");
    // The page changes only with the binary; `no-cache` revalidates after an upgrade.
    reply.header("Cache-Control", "no-cache");
    reply.body = Body::Bytes(body.as_bytes().to_vec());
    Ok(reply)
}
