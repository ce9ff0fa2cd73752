//! libFuzzer target `multipart_header`: the invariants are in `beltcam_fuzz::multipart_header` (fuzz/src/lib.rs), shared
//! with tests/fuzz_regression.rs, which replays this target's corpus in the normal test suite.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| beltcam_fuzz::multipart_header(data));
