//! A real `redis-server` for tests: started on a free port of 127.0.0.1
//! with its own directory and an append-only file fsynced at every write,
//! killed when dropped. Shared with broker-server's tests (by `#[path]`).
#![allow(dead_code)] // Each test file uses its own part.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// How long a started server has to answer `PING`.
const STARTUP: Duration = Duration::from_secs(10);

/// A running `redis-server`; killed (SIGKILL) and reaped when dropped.
pub(crate) struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// The `redis-server` binary, or a failure saying how to get it: a test
/// that needs Redis fails without it, it never skips.
fn binary() -> &'static str {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "redis-server is not installed: these tests need a real Redis \
         (Debian/Ubuntu: `apt-get install redis-server`, the package redis-server; \
         .ci/run installs it)"
    );
    "redis-server"
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl RedisServer {
    /// Starts a server on a free port, in a new temporary directory.
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // A port found free may be taken before the server binds it: try
        // a few.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            match spawn(port, dir.path()) {
                Ok(child) => {
                    return RedisServer {
                        child: Some(child),
                        port,
                        dir,
                    }
                }
                Err(why) => last = why,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL: no shutdown, no final write; what Redis fsynced is what
    /// survives.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (after
    /// [`kill`](Self::kill)): it loads its append-only file.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + STARTUP;
        loop {
            match spawn(self.port, self.dir.path()) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(why) => {
                    assert!(
                        Instant::now() < deadline,
                        "redis-server did not restart: {why}"
                    );
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `redis-server` on `port` in `dir` and waits (bounded) until it
/// answers `PING`.
fn spawn(port: u16, dir: &Path) -> Result<Child, String> {
    let mut child = Command::new(binary())
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "yes"])
        .args(["--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", "redis.log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn redis-server: {e}"))?;
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(format!("exited with {status}: {tail:?}"));
        }
        if ping(port) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no PONG on port {port} within {STARTUP:?}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}

/// A port nothing listens on (bound, then released).
pub(crate) fn closed_port() -> u16 {
    free_port()
}
