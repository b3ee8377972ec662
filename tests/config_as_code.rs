//! Config as code: `tollgate export` and `tollgate apply FILE [--dry-run] [--prune]`, the
//! real binary's subcommands against test databases, and a running gateway that picks an
//! applied change up.

use crate::util::{Gateway, TestDb, Upstream, ADMIN_SECRET, CLIENT_IP_KEY};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The lines that report a change (not the `kept` ones, not the summary).
    fn changes(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| {
                ["created ", "updated ", "deleted "]
                    .iter()
                    .any(|v| l.starts_with(v))
            })
            .collect()
    }
}

fn tollgate(args: &[&str], db: &TestDb) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", db.url())
        .env("ADMIN_SECRET", ADMIN_SECRET)
        .env("TOLLGATE_CLIENT_IP_KEY", CLIENT_IP_KEY)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn export(db: &TestDb) -> Value {
    let r = tollgate(&["export"], db);
    assert_eq!(r.code, 0, "export: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// A file of its own for `value`, removed with the handle.
struct File(std::path::PathBuf);

impl File {
    fn new(value: &Value) -> File {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tollgate-{}-{n}.json", std::process::id()));
        std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
        File(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn apply(db: &TestDb, file: &Value, flags: &[&str]) -> Run {
    let f = File::new(file);
    let mut args = vec!["apply", f.path()];
    args.extend_from_slice(flags);
    tollgate(&args, db)
}

fn apply_ok(db: &TestDb, file: &Value, flags: &[&str]) -> Run {
    let r = apply(db, file, flags);
    assert_eq!(r.code, 0, "apply {flags:?}: {}{}", r.stdout, r.stderr);
    r
}

/// A plan, two users (one with an external id, metadata and the plan), a route with most
/// options and a signing secret, and a key: everything a file holds and what it must not.
fn populated() -> (Gateway, String) {
    let gw = Gateway::start();
    let plan = gw.admin_post(
        "/admin/plans",
        json!({"name": "pro", "limits": [{"name": "burst", "limit": 10, "windowSecs": 1}],
               "quota": {"limit": 1000, "period": "month"}}),
    );
    assert_eq!(plan.status, 201, "{}", plan.body);
    let ada = gw.admin_post(
        "/admin/users",
        json!({"email": "ada@example.com", "name": "Ada", "externalId": "cus_1",
               "metadata": {"tier": "gold"}, "planId": plan.json()["id"]}),
    );
    assert_eq!(ada.status, 201, "{}", ada.body);
    let ada = ada.json()["id"].as_i64().unwrap();
    let bob = gw.create_user("bob@example.com");
    gw.create_route_with(
        ada,
        "/api",
        "http://127.0.0.1:9",
        json!({"host": "acme.example.com", "stripPrefix": true, "methods": ["GET", "POST"],
               "timeoutMs": 1500, "maxBodyBytes": 4096, "allowCidrs": ["10.0.0.0/8"],
               "signingSecret": "s".repeat(40),
               "cors": {"allowedOrigins": ["https://app.example.com"], "maxAgeSecs": 60}}),
    );
    gw.create_route(bob, "/bob", "http://127.0.0.1:9");
    let (raw_key, _) = gw.create_key(ada, json!({}));
    (gw, raw_key)
}

#[test]
fn export_applied_to_an_empty_database_exports_the_same_and_holds_no_secret() {
    let (gw, raw_key) = populated();
    let file = export(&gw.db);
    assert_eq!(file["users"][0]["externalId"], "cus_1");
    assert_eq!(file["users"][0]["metadata"], json!({"tier": "gold"}));
    assert_eq!(file["users"][0]["plan"], "pro");
    assert_eq!(file["routes"][0]["owner"], "ada@example.com");
    assert_eq!(file["routes"][0]["cors"]["maxAgeSecs"], 60);
    let text = file.to_string();
    let hash: String = gw
        .db()
        .query_one("SELECT key_hash FROM api_keys", &[])
        .unwrap()
        .get(0);
    for secret in [raw_key.as_str(), hash.as_str(), &"s".repeat(40)] {
        assert!(!text.contains(secret), "the file holds a secret: {text}");
    }
    for field in [
        "signingSecret",
        "hasSigningSecret",
        "apiKeys",
        "\"keys\"",
        "\"id\"",
    ] {
        assert!(!text.contains(field), "{field} in {text}");
    }

    let empty = TestDb::create();
    let r = apply_ok(&empty, &file, &[]);
    assert_eq!(r.changes().len(), 5, "{}", r.stdout);
    assert_eq!(export(&empty), file);

    // Applied back where it came from: nothing to do, and the secret the file does not
    // mention is kept.
    let r = apply_ok(&gw.db, &file, &[]);
    assert!(r.changes().is_empty(), "{}", r.stdout);
    let kept: Option<String> = gw
        .db()
        .query_one(
            "SELECT signing_secret FROM routes WHERE prefix = '/api'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(kept, Some("s".repeat(40)));
}

#[test]
fn applying_twice_changes_nothing_the_second_time() {
    let db = TestDb::create();
    let file = json!({
        "version": 1,
        "plans": [{"name": "free", "quota": {"limit": 100, "period": "day"}}],
        "users": [{"email": "ada@example.com", "name": "Ada", "plan": "free"}],
        "routes": [{"owner": "ada@example.com", "prefix": "/api/", "targetUrl": "http://h:1/",
                    "methods": ["get"]}],
    });
    let first = apply_ok(&db, &file, &[]);
    assert_eq!(
        first.changes(),
        [
            "created plan free",
            "created user ada@example.com",
            "created route ada@example.com /api"
        ]
    );
    let second = apply_ok(&db, &file, &[]);
    assert!(second.changes().is_empty(), "{}", second.stdout);
    assert_eq!(second.stdout.trim(), "no changes");
    let mut c = db.client();
    let audit: Vec<(String, String)> = c
        .query("SELECT actor, action FROM audit_log ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let apply = |a: &str| ("apply".to_string(), a.to_string());
    assert_eq!(
        audit,
        [
            apply("plan.create"),
            apply("user.create"),
            apply("route.create")
        ]
    );

    let mut changed = file.clone();
    changed["routes"][0]["timeoutMs"] = json!(800);
    changed["users"][0]["name"] = json!("Ada L.");
    let third = apply_ok(&db, &changed, &[]);
    assert_eq!(
        third.changes(),
        [
            "updated user ada@example.com (name)",
            "updated route ada@example.com /api (timeoutMs)"
        ]
    );
}

#[test]
fn a_dry_run_prints_the_changes_and_makes_none() {
    let (gw, _) = populated();
    let before = export(&gw.db);
    let mut file = before.clone();
    file["routes"][0]["targetUrl"] = json!("http://127.0.0.1:10");
    file["plans"][0]["quota"] = Value::Null;
    file["users"].as_array_mut().unwrap().pop();
    file["routes"].as_array_mut().unwrap().pop();
    let audited = gw.audit_rows();
    let r = apply_ok(&gw.db, &file, &["--dry-run", "--prune"]);
    assert_eq!(
        r.changes(),
        [
            "updated plan pro (quota)",
            "updated route ada@example.com acme.example.com/api (targetUrl)",
            "deleted route bob@example.com /bob (not in the file)",
            "deleted user bob@example.com (not in the file; with its 0 API key(s))"
        ],
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("dry run: nothing applied"),
        "{}",
        r.stdout
    );
    assert_eq!(export(&gw.db), before);
    assert_eq!(gw.audit_rows(), audited);
}

#[test]
fn prune_deletes_what_the_file_does_not_hold_and_without_it_they_are_kept() {
    let (gw, _) = populated();
    let mut file = export(&gw.db);
    file["users"].as_array_mut().unwrap().pop();
    file["routes"].as_array_mut().unwrap().pop();
    file["plans"] = json!([]);
    file["users"][0]["plan"] = Value::Null;
    let r = apply_ok(&gw.db, &file, &[]);
    assert_eq!(r.changes(), ["updated user ada@example.com (plan)"]);
    let kept: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("kept "))
        .collect();
    assert_eq!(
        kept,
        [
            "kept route bob@example.com /bob (not in the file; --prune deletes it)",
            "kept user bob@example.com (not in the file; --prune deletes it)",
            "kept plan pro (not in the file; --prune deletes it)"
        ]
    );
    let r = apply_ok(&gw.db, &file, &["--prune"]);
    assert_eq!(r.changes().len(), 3, "{}", r.stdout);
    assert_eq!(export(&gw.db), file);
    assert_eq!(
        gw.admin_get("/admin/users")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Ada's key is not in the file and stays: keys are made through the API.
    assert_eq!(
        gw.admin_get("/admin/api-keys")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_bad_file_exits_1_naming_the_object_and_field_and_changes_nothing() {
    let (gw, _) = populated();
    let good = export(&gw.db);
    let audited = gw.audit_rows();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        // A valid change first: nothing of it may be applied either.
        v["users"][0]["name"] = json!("Someone else");
        f(&mut v);
        v
    };
    for (file, expect) in [
        (
            edit(&|v| v["routes"][1]["stripprefix"] = json!(true)),
            "routes[1] (bob@example.com /bob): field stripprefix: unknown field",
        ),
        (
            edit(&|v| v["routes"][0]["timeoutMs"] = json!(0)),
            "routes[0] (ada@example.com acme.example.com/api): field timeoutMs",
        ),
        (
            edit(&|v| v["routes"][1]["owner"] = json!("carol@example.com")),
            "field owner: names no user in this file",
        ),
        (
            edit(&|v| v["users"][0]["plan"] = json!("enterprise")),
            "users[0] (ada@example.com): field plan: names no plan in this file",
        ),
        (
            edit(&|v| v["users"][1]["email"] = json!("not-an-email")),
            "users[1] (not-an-email): field email",
        ),
    ] {
        let r = apply(&gw.db, &file, &["--prune"]);
        assert_eq!(r.code, 1, "{expect}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(expect), "want {expect:?} in {}", r.stderr);
        assert!(r.stderr.contains("nothing applied"), "{}", r.stderr);
        assert!(r.stdout.is_empty(), "{}", r.stdout);
    }
    // Refused by the database half-way (a plan a key is still on): rolled back whole.
    let ids = gw
        .db()
        .query_one("SELECT k.id, p.id FROM api_keys k, plans p", &[])
        .unwrap();
    let (key, plan): (i64, i64) = (ids.get(0), ids.get(1));
    let r = gw.admin_patch(&format!("/admin/api-keys/{key}"), json!({"planId": plan}));
    assert_eq!(r.status, 200, "{}", r.body);
    let no_plans = edit(&|v| {
        v["plans"] = json!([]);
        v["users"][0]["plan"] = Value::Null;
    });
    let r = apply(&gw.db, &no_plans, &["--prune"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("plan pro"), "{}", r.stderr);
    assert_eq!(export(&gw.db), good);
    assert_eq!(
        gw.audit_rows(),
        audited + 1,
        "only the key's PATCH is audited"
    );
}

#[test]
fn a_running_gateway_picks_up_an_applied_route_change() {
    // The periodic full reload is an hour away: only the NOTIFY at commit can tell it.
    let gw = Gateway::start_with(&[("TOLLGATE_SYNC_SECS", "3600")]);
    let (first, second) = (Upstream::start(), Upstream::start());
    let user = gw.create_user("ada@example.com");
    let (key, _) = gw.create_key(user, json!({"rateLimit": 1_000_000}));
    let mut file = export(&gw.db);
    file["routes"] = json!([{"owner": "ada@example.com", "prefix": "/api",
                             "targetUrl": first.addr}]);
    apply_ok(&gw.db, &file, &[]);
    let reaches = |up: &Upstream| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = up.requests().len();
            let r = gw.with_key("GET", "/api/x", &key);
            if r.status == 200 && up.requests().len() > before {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never reached: {} {}",
                r.status,
                r.body
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    reaches(&first);
    file["routes"][0]["targetUrl"] = json!(second.addr);
    let r = apply_ok(&gw.db, &file, &[]);
    assert_eq!(
        r.changes(),
        ["updated route ada@example.com /api (targetUrl)"]
    );
    reaches(&second);
}
