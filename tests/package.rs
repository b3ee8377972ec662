//! The Debian package (`make deb`, issue 15): it installs with `apt-get install ./…deb`, its
//! unit passes `systemd-analyze verify`, the installed binary serves against a database
//! with the settings of /etc/tollgate, started the way the unit starts it (systemd is not
//! PID 1 here), and `apt-get remove` keeps /etc/tollgate and the database. A crate of its
//! own because it is a process shape of its own: the package manager changes the machine.
//! It needs root and apt, as on a fresh CI machine, and refuses to run where tollgate is
//! already installed (it purges the package at the end).
//! That the settings file lists every setting is a unit test in src/config.rs.

#[path = "util/shell.rs"]
mod shell;
#[allow(dead_code)]
mod util;

use shell::{as_operator, run, sh, sh_ok, Group};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const UNIT: &str = "/usr/lib/systemd/system/tollgate.service";
const ENV_FILE: &str = "/etc/tollgate/tollgate.env";
const SECRETS: &str = "/etc/tollgate/secrets.env";

fn apt_get(args: &[&str], dir: &Path) -> String {
    run(Command::new("apt-get")
        .args(["-y", "-q"])
        .args(args)
        .current_dir(dir)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn package_status() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "tollgate"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Purges the package however the test ends.
struct Installed;
impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("apt-get")
            .args(["-y", "-q", "purge", "tollgate"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
    }
}

/// `NAME=value` of an environment file (the subset systemd and sh read alike).
fn env_value(file: &str, name: &str) -> Option<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(|v| v.trim_matches('"').to_string())
}

/// The values of `key=` lines in the installed unit.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_package_installs_serves_with_its_env_file_and_remove_keeps_config_and_data() {
    shell::assert_root();
    assert!(
        !package_status().contains("installed"),
        "tollgate is installed on this machine ({}); this test installs and purges the \
         package, so remove it first",
        package_status()
    );
    let started = Instant::now();
    let repo = shell::repo();
    run(as_operator(&mut Command::new("scripts/deps.sh"))
        .arg("package")
        .current_dir(&repo));
    // --fast: the same files, compressed in seconds instead of most of a minute.
    let built = run(as_operator(&mut Command::new("make"))
        .args(["--no-print-directory", "deb", "DEB_FLAGS=--fast"])
        .current_dir(&repo));
    let deb = Path::new(built.lines().rev().find(|l| l.ends_with(".deb")).unwrap());
    let built_after = started.elapsed();

    let _installed = Installed;
    let (dir, name) = (deb.parent().unwrap(), deb.file_name().unwrap());
    apt_get(&["install", &format!("./{}", name.to_str().unwrap())], dir);
    let listing = run(Command::new("dpkg").args(["-L", "tollgate"]));
    eprintln!("dpkg -L tollgate:\n{listing}");
    for path in [
        "/usr/bin/tollgate",
        UNIT,
        ENV_FILE,
        "/usr/share/doc/tollgate/examples/nginx.conf",
    ] {
        assert!(
            listing.lines().any(|l| l == path),
            "{path} not in the package"
        );
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "tollgate"]));
    assert!(conffiles.contains(ENV_FILE), "not a conffile: {conffiles}");
    assert!(sh_ok("id -u tollgate"), "no tollgate user");
    assert_eq!(sh(&format!("stat -c %a {SECRETS}")).trim(), "600");
    let secret = env_value(SECRETS, "ADMIN_SECRET").unwrap();
    assert_eq!(secret.len(), 48, "a generated admin secret");
    assert_eq!(
        env_value(SECRETS, "TOLLGATE_CLIENT_IP_KEY").unwrap().len(),
        64
    );

    run(Command::new("systemd-analyze").args(["verify", UNIT]));

    // What an operator edits: the database and the address.
    let db = util::TestDb::create();
    let port = util::free_port();
    let env = std::fs::read_to_string(ENV_FILE).unwrap();
    let db_line = env
        .lines()
        .find(|l| l.starts_with("DATABASE_URL="))
        .unwrap();
    let edited = env
        .replace(db_line, &format!("DATABASE_URL=\"{}\"", db.url()))
        .replace(
            "#LISTEN_ADDR=127.0.0.1:3000",
            &format!("LISTEN_ADDR=127.0.0.1:{port}"),
        );
    assert_ne!(edited, env);
    std::fs::write(ENV_FILE, &edited).unwrap();

    // Started as the unit starts it: its EnvironmentFile= in order into an empty
    // environment, its ExecStart as its User, from /, without new privileges.
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let user = &unit_values(&unit, "User")[0];
    let sources: Vec<String> = unit_values(&unit, "EnvironmentFile")
        .iter()
        .map(|f| format!(". {}", f.trim_start_matches('-')))
        .collect();
    let exec = &unit_values(&unit, "ExecStart")[0];
    let script = format!(
        "set -a; {}; set +a; exec setpriv --reuid={user} --regid={user} --init-groups \
         --no-new-privs -- {exec}",
        sources.join("; ")
    );
    let tmp = shell::TempDir::new();
    let log = tmp.0.join("tollgate.log");
    let mut server = Group::spawn(
        Command::new("sh")
            .args(["-c", &script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir("/"),
        &log,
    );
    let base = format!("http://127.0.0.1:{port}");
    shell::wait_for_200(
        &format!("{base}/readyz"),
        Duration::from_secs(60),
        &log,
        || server.child.try_wait().unwrap().is_none(),
    );
    let pid = server.child.id();
    assert_eq!(sh(&format!("ps -o user= -p {pid}")).trim(), "tollgate");
    let made = ureq::post(&format!("{base}/admin/users"))
        .header("x-admin-secret", &secret)
        .send(r#"{"email":"ops@example.com","name":"Ops"}"#)
        .expect("the admin API with the generated secret");
    assert_eq!(made.status().as_u16(), 201);
    server.stop();

    apt_get(&["remove", "tollgate"], &repo);
    assert_eq!(package_status(), "deinstall ok config-files");
    assert!(!Path::new("/usr/bin/tollgate").exists());
    assert_eq!(
        std::fs::read_to_string(ENV_FILE).unwrap(),
        edited,
        "remove keeps the settings"
    );
    assert_eq!(env_value(SECRETS, "ADMIN_SECRET").unwrap(), secret);
    let users = db
        .client()
        .query_one(
            "SELECT count(*) FROM users WHERE email = 'ops@example.com'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(users, 1, "remove keeps the database");

    apt_get(&["purge", "tollgate"], &repo);
    assert!(
        !Path::new("/etc/tollgate").exists(),
        "purge deletes /etc/tollgate"
    );
    eprintln!(
        "package: built after {built_after:?}, whole test {:?}",
        started.elapsed()
    );
}
