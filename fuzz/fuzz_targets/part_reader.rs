//! libFuzzer target `part_reader`: the invariants are in `beltcam_fuzz::part_reader` (fuzz/src/lib.rs),
//! shared with tests/fuzz_regression.rs, which replays this target's corpus in the normal test suite.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| beltcam_fuzz::part_reader(data));
