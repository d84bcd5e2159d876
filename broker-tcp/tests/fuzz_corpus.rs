//! Replays the TCP protocol's fuzzing corpus (`fuzz/corpus/tcp_session/`)
//! through the same harness the fuzzer runs, so every seed and every past
//! finding stays a test.

#[allow(unreachable_pub, dead_code)]
#[path = "../../fuzz/src/tcp_session.rs"]
mod harness;

use std::{fs, path::Path};

#[test]
fn tcp_session_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/tcp_session");
    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| harness::tcp_session(&data));
        assert!(outcome.is_ok(), "{} fails", path.display());
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} seeds in {}", dir.display());
}
