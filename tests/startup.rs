//! Start-up: configuration refused with a message, unknown subcommands, migrations, and the
//! two probes: liveness (`/healthz`) and readiness (`/readyz`), which follows the database.

use crate::util::{free_port, Gateway, TestDb, ADMIN_SECRET, CLIENT_IP_KEY};
use serde_json::json;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with exactly `env` (plus PATH) and waits at most 15 s for it to exit.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "tollgate {args:?} still running after 15 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `serve` (also when no subcommand is given) refuses an admin secret that is missing or
/// shorter than 16 characters, saying so and without echoing it.
#[test]
fn the_server_refuses_to_start_without_an_admin_secret_of_16_characters_or_more() {
    let db = TestDb::create();
    let listen = format!("127.0.0.1:{}", free_port());
    let url = db.url();
    for (args, secret) in [
        (&[][..], None),
        (&["serve"][..], None),
        (&["serve"][..], Some("short")),
        (&["serve"][..], Some("0123456789abcde")),
    ] {
        let mut env = vec![("DATABASE_URL", url.as_str()), ("LISTEN_ADDR", &listen)];
        env.extend(secret.map(|s| ("ADMIN_SECRET", s)));
        let out = run(args, &env);
        assert!(!out.status.success(), "{args:?} {secret:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ADMIN_SECRET"), "{args:?} {secret:?}: {err}");
        if let Some(secret) = secret {
            assert!(err.contains("16"), "{secret}: {err}");
            assert!(
                !err.contains(secret),
                "the rejected secret is echoed: {err}"
            );
        }
    }
}

/// The default `hmac` mode refuses to start without a client IP key of 32 characters or
/// more, saying so and without echoing it; `raw` and `none` need none.
#[test]
fn hmac_mode_refuses_to_start_without_a_client_ip_key_of_32_characters_or_more() {
    let db = TestDb::create();
    let listen = format!("127.0.0.1:{}", free_port());
    let url = db.url();
    let short = "0123456789abcdef0123456789abcde";
    let base = [
        ("DATABASE_URL", url.as_str()),
        ("ADMIN_SECRET", ADMIN_SECRET),
        ("LISTEN_ADDR", &listen),
    ];
    for extra in [
        vec![],
        vec![("TOLLGATE_LOG_CLIENT_IP", "hmac")],
        vec![("TOLLGATE_CLIENT_IP_KEY", short)],
    ] {
        let out = run(&["serve"], &[&base[..], &extra].concat());
        assert!(!out.status.success(), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("TOLLGATE_CLIENT_IP_KEY"), "{extra:?}: {err}");
        assert!(err.contains("32"), "{extra:?}: {err}");
        assert!(!err.contains(short), "the rejected key is echoed: {err}");
    }
    for mode in ["raw", "none"] {
        let out = run(
            &["migrate"],
            &[&base[..], &[("TOLLGATE_LOG_CLIENT_IP", mode)]].concat(),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {err}");
    }
}

#[test]
fn a_missing_database_url_is_refused_with_a_message() {
    let listen = format!("127.0.0.1:{}", free_port());
    for args in [&["serve"][..], &["migrate"][..]] {
        let out = run(
            args,
            &[("ADMIN_SECRET", ADMIN_SECRET), ("LISTEN_ADDR", &listen)],
        );
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("DATABASE_URL"), "{args:?}: {err}");
    }
}

#[test]
fn an_unknown_subcommand_is_refused() {
    let db = TestDb::create();
    let url = db.url();
    let out = run(
        &["migrat"],
        &[
            ("DATABASE_URL", &url),
            ("ADMIN_SECRET", ADMIN_SECRET),
            ("TOLLGATE_CLIENT_IP_KEY", CLIENT_IP_KEY),
        ],
    );
    assert!(!out.status.success());
}

#[test]
fn migrate_creates_the_schema_with_its_indexes_and_a_second_run_changes_nothing() {
    let db = TestDb::create();
    let url = db.url();
    let migrate = || {
        let out = run(
            &["migrate"],
            &[
                ("DATABASE_URL", &url),
                ("ADMIN_SECRET", ADMIN_SECRET),
                ("TOLLGATE_CLIENT_IP_KEY", CLIENT_IP_KEY),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    migrate();
    let mut c = db.client();
    let tables: Vec<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables
              WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in [
        "api_keys",
        "limit_counters",
        "plans",
        "request_logs",
        "routes",
        "schema_migrations",
        "users",
    ] {
        assert!(tables.iter().any(|x| x == t), "no table {t}: {tables:?}");
    }
    let indexes: Vec<String> = c
        .query(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'request_logs'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let all = indexes.join("\n");
    for cols in [
        "(api_key_id, created_at",
        "(user_id, created_at",
        "(created_at",
    ] {
        assert!(
            all.contains(cols),
            "request_logs lacks an index on {cols}: {all}"
        );
    }
    let unique_public_id: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'api_keys'
                AND indexdef LIKE 'CREATE UNIQUE INDEX%(public_id)%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(unique_public_id, 1);
    let versions = |c: &mut postgres::Client| -> Vec<(String, String)> {
        c.query(
            "SELECT version, applied_at::text FROM schema_migrations ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let first = versions(&mut c);
    assert!(first.len() >= 2, "{first:?}");
    migrate();
    assert_eq!(
        versions(&mut c),
        first,
        "a second migrate re-applied something"
    );
    drop(c);
}

#[test]
fn readiness_follows_the_database_while_liveness_does_not() {
    let gw = Gateway::start_with(&[("TOLLGATE_DB_WAIT_MS", "500")]);
    let live = gw.get("/healthz", &[]);
    assert_eq!(
        (live.status, live.json()["status"].clone()),
        (200, json!("ok"))
    );
    let ready = gw.get("/readyz", &[]);
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready", "{}", ready.body);
    assert_eq!(ready.json()["database"], "ok", "{}", ready.body);
    let mut admin = postgres::Client::connect(
        &format!("{} dbname=postgres", crate::util::pg_base()),
        postgres::NoTls,
    )
    .unwrap();
    let name = gw.db.name.clone();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
        ))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let down = loop {
        let r = gw.get("/readyz", &[]);
        if r.status != 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let live = gw.get("/healthz", &[]).status;
    let restore = admin.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(
        down.header("content-type").unwrap_or("").contains("json"),
        "{}",
        down.body
    );
    assert_eq!(live, 200, "healthz followed the database");
    restore.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if gw.get("/readyz", &[]).status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready again: {}",
            gw.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
