#![no_main]

// The harness lives beside lib.rs, not in it: see its header.
#[path = "../src/tcp_session.rs"]
mod tcp_session;

libfuzzer_sys::fuzz_target!(|data: &[u8]| tcp_session::tcp_session(data));
