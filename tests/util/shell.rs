//! Helpers of the crates that drive the repository's own commands (`make`, `git`, `apt-get`)
//! the way an operator types them, as root on a Debian machine: tests/setup.rs and
//! tests/package.rs include this file as a module of their own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository the tests run in.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `cmd` with the environment an operator's shell has: without what `cargo test` and `make`
/// set for this process. A nested cargo would otherwise see `CARGO_PKG_NAME` and the like,
/// which build scripts (ring's) watch, and rebuild them.
pub fn as_operator(cmd: &mut Command) -> &mut Command {
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        let cargo_set = name == "CARGO"
            || name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR";
        if cargo_set || ["OUT_DIR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"].contains(&&*name) {
            cmd.env_remove(&var);
        }
    }
    cmd
}

/// Runs `cmd` to completion, asserts that it succeeded and returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sh -c script`, asserted to succeed; its stdout.
pub fn sh(script: &str) -> String {
    run(Command::new("sh").args(["-c", script]))
}

/// Whether `sh -c script` exits 0 (its output discarded).
pub fn sh_ok(script: &str) -> bool {
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// These tests do what an operator does as root (`make run`, `apt-get install`).
pub fn assert_root() {
    assert_eq!(
        sh("id -u").trim(),
        "0",
        "this crate runs as root, like `make test` on a fresh machine"
    );
}

/// A `mktemp -d` directory (mode 700, so the `postgres` user cannot enter it), deleted
/// with the handle.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        TempDir(PathBuf::from(sh("mktemp -d").trim()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process started in a process group of its own (`make` and the shells and the server
/// it starts), stopped as a group with SIGTERM when the handle is dropped.
pub struct Group {
    pub child: Child,
}

impl Group {
    pub fn spawn(cmd: &mut Command, log: &Path) -> Group {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log).unwrap();
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Group { child }
    }

    /// SIGTERM to the whole group, then waits for its leader.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status of `GET url`, or `None` when nothing answers.
pub fn status(url: &str) -> Option<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent.get(url).call().ok().map(|r| r.status().as_u16())
}

/// Waits until `GET url` answers 200; panics with `log`'s tail when `alive` says the
/// server is gone or `limit` passes.
pub fn wait_for_200(url: &str, limit: Duration, log: &Path, mut alive: impl FnMut() -> bool) {
    let start = Instant::now();
    while status(url) != Some(200) {
        let tail = || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        assert!(alive(), "exited before {url} answered 200:\n{}", tail());
        assert!(
            start.elapsed() < limit,
            "{url} did not answer 200 within {limit:?}:\n{}",
            tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
