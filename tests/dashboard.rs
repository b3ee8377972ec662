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

#[test]
fn dashboard_has_the_plan_panel_and_the_usage_table_with_a_csv_link() {
    let gw = Gateway::start();
    let page = gw.direct("GET", "/dashboard", &[], None).body;
    for id in [
        "subject",
        "plan-name",
        "plan-limits",
        "usage-group",
        "usage-months",
        "usage",
    ] {
        assert!(page.contains(&format!("id=\"{id}\"")), "#{id} on the page");
    }
    assert!(page.contains(r##"<a id="usage-csv" class="download" href="#" download="##));
    let script = gw.direct("GET", "/dashboard/app.js", &[], None).body;
    // The limits of the chosen key or user (or /me for a key holder), the usage by month,
    // and the CSV made into a blob: URL instead of a link carrying the credential.
    for wiring in [
        "/limits\"",
        "\"/me\"",
        "\"/analytics/usage\"",
        "bucket: \"month\"",
        "format: \"csv\"",
        "URL.createObjectURL",
    ] {
        assert!(script.contains(wiring), "app.js: {wiring}");
    }
}

#[test]
fn docs_page_is_served_like_the_dashboard_under_the_same_policy() {
    let gw = Gateway::start();
    for (path, kind) in [
        ("/docs", "text/html"),
        ("/docs/", "text/html"),
        ("/docs/app.js", "text/javascript"),
        ("/docs/app.css", "text/css"),
    ] {
        let r = gw.direct("GET", path, &[], None);
        assert_eq!(r.status, 200, "{path}");
        assert!(r
            .header("content-type")
            .is_some_and(|c| c.starts_with(kind)));
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"));
        assert!(!r.body.contains("https://") && !r.body.contains("<script>"));
    }
    // Rendered from the document the binary serves, read with the page's own origin.
    let script = gw.direct("GET", "/docs/app.js", &[], None).body;
    assert!(script.contains("fetch(\"/openapi.json\""));
    assert!(
        !script.contains("innerHTML"),
        "text is never parsed as HTML"
    );
    let r = gw.direct("POST", "/docs", &[], Some(b""));
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    assert_eq!(gw.direct("GET", "/docs/nope.js", &[], None).status, 404);
}
