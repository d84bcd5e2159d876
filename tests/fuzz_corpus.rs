//! Replays the fuzzing corpus (`fuzz/corpus/`) through the same harnesses
//! the fuzzers run, so every seed and every past finding stays a test.

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::{fs, path::Path};

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails", path.display());
        seen += 1;
    }
    assert!(seen > 0, "no seeds in {}", dir.display());
}

#[test]
fn api_request_corpus() {
    replay("api_request", harness::api_request);
}

#[test]
fn endpoint_corpus() {
    replay("endpoint", harness::endpoint);
}
