//! `/readyz` follows whether the data directory takes writes (issue 26):
//! on a small tmpfs filled to the last byte it answers `503
//! store_unavailable`, and `ready` again once there is room. Mounting a
//! tmpfs needs root (CI runs as root); otherwise the test fails, saying so.

mod support;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use support::{http, start};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let uid = Command::new("id").arg("-u").output().expect("id runs");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test mounts a tmpfs to fill a disk: run it as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap().keep();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount runs");
        assert!(
            mounted.success(),
            "mounting a tmpfs failed: the test needs root with CAP_SYS_ADMIN"
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Writes a file until the filesystem is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    // What is left below a whole chunk, byte by byte in small writes.
    let small = [0u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
}

fn ready(addr: &str) -> (String, String) {
    http(addr, "GET", "/readyz", "", "")
}

fn eventually(addr: &str, status: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, b) = ready(addr);
        if s.contains(status) && b.contains(body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {s} {b}, not {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readyz_says_the_store_is_unavailable_while_the_disk_is_full() {
    let disk = Tmpfs::mount("16m");
    let data = disk.0.join("data");
    let (_server, addr, _, _logs) = start(&["--data-dir", data.to_str().unwrap()]);
    eventually(&addr, " 200 ", "ready");

    let filler = disk.0.join("filler");
    fill(&filler);
    eventually(&addr, " 503 ", "store_unavailable");

    std::fs::remove_file(&filler).unwrap();
    eventually(&addr, " 200 ", "ready");
}
