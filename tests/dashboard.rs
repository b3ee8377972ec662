//! `/dashboard` as served: the page and its assets without credentials, under a content
//! security policy that allows nothing from elsewhere and no inline code. The page in a
//! real browser is tests/browser.rs.

use crate::util::Gateway;

#[test]
fn dashboard_page_loads_without_credentials_under_a_self_only_policy() {
    let gw = Gateway::start();
    let page = gw.direct("GET", "/dashboard", &[], None);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html")));
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"));
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    // Nothing is loaded from anywhere else, and no inline code needs allowing.
    assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    assert!(!page.body.contains("<script>") && !page.body.contains("style="));
    for (path, kind) in [
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let r = gw.direct("GET", path, &[], None);
        assert_eq!(r.status, 200, "{path}");
        assert!(r
            .header("content-type")
            .is_some_and(|c| c.starts_with(kind)));
        assert!(
            !r.body.contains("https://"),
            "{path} fetches nothing remote"
        );
    }
    let missing = gw.direct("GET", "/dashboard/nope.js", &[], None);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.code(), "not_found");
}
