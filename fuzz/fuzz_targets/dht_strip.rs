//! libFuzzer target `dht_strip`: the invariants are in `beltcam_fuzz::dht_strip` (fuzz/src/lib.rs), shared
//! with tests/fuzz_regression.rs, which replays this target's corpus in the normal test suite.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| beltcam_fuzz::dht_strip(data));
