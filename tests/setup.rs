//! Set-up from anywhere (issue 15): `make run` from a fresh clone in a directory the
//! `postgres` user cannot enter (a `mktemp -d` directory, mode 700, like root's home),
//! without changing any directory's mode, and `make clean-data` removing the private cluster
//! that lives outside the clone. A crate of its own because it is a process shape of its
//! own: a second checkout driven through `make`, with its own cluster.
//!
//! The clone gets a copy of this checkout's release build, and its files that are equal to
//! this checkout's get their modification times: cargo judges freshness by those, so the
//! clone's `cargo build --release` compiles nothing when this checkout is at HEAD, and
//! compiles tollgate again (never a stale binary) when a file differs.

#[path = "util/shell.rs"]
mod shell;
#[allow(dead_code)]
mod util;

use shell::{as_operator, run, sh, sh_ok, Group, TempDir};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The clone compiles tollgate in release mode before it serves: minutes on a busy
/// two-core machine.
const SERVE_WITHIN: Duration = Duration::from_secs(20 * 60);

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// This checkout's release build, copied into the clone's own target dir (its own, so this
/// checkout's build never takes the clone's tollgate for its own).
fn seed_release_build(clone: &Path) {
    let repo = shell::repo();
    run(as_operator(&mut Command::new("cargo"))
        .args(["build", "--release", "--quiet"])
        .current_dir(&repo));
    // CARGO_BIN_EXE_tollgate is <target>/debug/tollgate.
    let target = Path::new(env!("CARGO_BIN_EXE_tollgate"))
        .parent()
        .and_then(Path::parent)
        .unwrap();
    let (from, to) = (target.join("release"), clone.join("target/release"));
    std::fs::create_dir_all(&to).unwrap();
    for sub in ["deps", "build", ".fingerprint"] {
        let (f, t) = (from.join(sub), to.join(sub));
        let (f, t) = (f.to_str().unwrap(), t.to_str().unwrap());
        sh(&format!("cp -a --reflink=auto '{f}' '{t}'"));
    }
    let files = run(Command::new("git").arg("ls-files").current_dir(clone));
    for file in files.lines() {
        let (mine, theirs) = (repo.join(file), clone.join(file));
        if std::fs::read(&mine).ok() == std::fs::read(&theirs).ok() {
            let modified = std::fs::metadata(&mine).and_then(|m| m.modified());
            let theirs = std::fs::File::options().write(true).open(&theirs);
            if let (Ok(time), Ok(f)) = (modified, theirs) {
                f.set_modified(time).unwrap();
            }
        }
    }
}

#[test]
fn make_run_serves_from_a_clone_postgres_cannot_enter_and_clean_data_removes_its_cluster() {
    shell::assert_root();
    let started = Instant::now();
    let tmp = TempDir::new();
    assert_eq!(mode(&tmp.0), 0o700, "mktemp -d makes a mode-700 directory");
    assert!(
        !sh_ok(&format!(
            "runuser -u postgres -- test -x '{}'",
            tmp.0.display()
        )),
        "postgres can enter {:?}: the test would prove nothing",
        tmp.0
    );
    let clone = tmp.0.join("tollgate");
    let repo = shell::repo();
    let head = run(Command::new("git")
        .args(["-c", "safe.directory=*", "rev-parse", "HEAD"])
        .current_dir(&repo));
    run(Command::new("git")
        .args([
            "-c",
            "safe.directory=*",
            "clone",
            "--quiet",
            "--no-checkout",
        ])
        .arg(&repo)
        .arg(&clone));
    run(Command::new("git")
        .args(["checkout", "--quiet", head.trim()])
        .current_dir(&clone));
    seed_release_build(&clone);

    // Stops the clone's cluster and deletes it however the test ends (`make clean-data`
    // below does the same; a second run is a no-op).
    struct Cluster<'a>(&'a Path);
    impl Drop for Cluster<'_> {
        fn drop(&mut self) {
            let _ = Command::new("scripts/pg.sh")
                .arg("clean")
                .current_dir(self.0)
                .output();
        }
    }
    let _cluster = Cluster(&clone);

    let port = util::free_port();
    let log = tmp.0.join("make-run.log");
    let mut make = Group::spawn(
        as_operator(&mut Command::new("make"))
            .arg("run")
            .current_dir(&clone)
            // As a new user's shell: its own target dir, no secret from outside.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("ADMIN_SECRET")
            .env_remove("TOLLGATE_CLIENT_IP_KEY")
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}")),
        &log,
    );
    let base = format!("http://127.0.0.1:{port}");
    shell::wait_for_200(&format!("{base}/healthz"), SERVE_WITHIN, &log, || {
        make.child.try_wait().unwrap().is_none()
    });
    let served_after = started.elapsed();
    // Ready: the database answers through the socket outside the clone.
    assert_eq!(shell::status(&format!("{base}/readyz")), Some(200));

    let cluster = sh(&format!("cd '{}' && scripts/pg.sh dir", clone.display()));
    let cluster = Path::new(cluster.trim());
    assert!(
        !cluster.starts_with(&tmp.0),
        "the cluster {cluster:?} is inside the unreachable directory"
    );
    assert!(cluster.join("pg/PG_VERSION").exists(), "{cluster:?}");
    assert_eq!(
        std::fs::read_to_string(cluster.join("clone"))
            .unwrap()
            .trim(),
        clone.to_str().unwrap(),
        "the cluster directory names its clone"
    );
    assert!(
        clone.join(".data/admin_secret").exists(),
        "the admin secret stays in the clone's .data/"
    );
    assert_eq!(mode(&tmp.0), 0o700, "no directory's mode was changed");

    make.stop();
    run(as_operator(&mut Command::new("make"))
        .args(["--no-print-directory", "clean-data"])
        .current_dir(&clone));
    assert!(!cluster.exists(), "make clean-data left {cluster:?}");
    assert!(!clone.join(".data").exists(), "make clean-data left .data/");
    eprintln!(
        "setup: served after {served_after:?}, whole test {:?}",
        started.elapsed()
    );
}
