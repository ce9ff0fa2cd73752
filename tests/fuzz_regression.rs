//! The fuzz corpus as a regression suite, on stable Rust in the normal `cargo test`.
//!
//! libFuzzer needs sanitizer flags stable Rust does not take, so the fuzzers run only from
//! `scripts/fuzz.sh`. What they learned is kept in the repo: `fuzz/corpus/<target>/` (the minimized
//! coverage corpus), `fuzz/seeds/<target>/` (hand-written: real browser, VLC, ffmpeg, curl and
//! OctoPrint requests, real, padded, DHT-less and broken JPEGs) and `fuzz/regressions/<target>/`
//! (every input that ever broke an invariant). Each file is replayed here through the very checks the fuzz targets run, which live
//! in `fuzz/src/lib.rs` and are included below, so a fixed bug stays fixed without a fuzzer.

#[path = "../fuzz/src/lib.rs"]
mod fuzz_checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// A fuzz target: its name, the check it runs, and the `fuzz/seeds/` folder it starts from.
struct Target {
    name: &'static str,
    check: fn(&[u8]),
    seeds: &'static str,
}

/// Every fuzz target; `every_target_is_replayed` keeps this list complete. The DHT targets take
/// JPEGs, so they share the JPEG seeds (scripts/fuzz.sh hands them the same folder).
const TARGETS: [Target; 6] = [
    Target {
        name: "request",
        check: fuzz_checks::request,
        seeds: "request",
    },
    Target {
        name: "jpeg_check",
        check: fuzz_checks::jpeg_check,
        seeds: "jpeg_check",
    },
    Target {
        name: "dht_insert",
        check: fuzz_checks::dht_insert,
        seeds: "jpeg_check",
    },
    Target {
        name: "dht_strip",
        check: fuzz_checks::dht_strip,
        seeds: "jpeg_check",
    },
    Target {
        name: "multipart_header",
        check: fuzz_checks::multipart_header,
        seeds: "multipart_header",
    },
    Target {
        name: "part_reader",
        check: fuzz_checks::part_reader,
        seeds: "part_reader",
    },
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted; none if the folder does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir
        .map(|e| e.expect("reading a fuzz input folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every corpus, seed and regression input of `target` through `check`; fails naming each input
/// that panicked (the panic message itself is printed above by the default hook).
fn replay(target: &str) {
    let t = TARGETS
        .iter()
        .find(|t| t.name == target)
        .expect("target listed in TARGETS");
    let corpus = inputs("corpus", target);
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is empty: run scripts/fuzz.sh"
    );
    let seeds = inputs("seeds", t.seeds);
    let regressions = inputs("regressions", target);
    let total = corpus.len() + seeds.len() + regressions.len();
    let failed: Vec<String> = corpus
        .iter()
        .chain(&seeds)
        .chain(&regressions)
        .filter(|path| {
            let data = std::fs::read(path).expect("reading a fuzz input");
            catch_unwind(AssertUnwindSafe(|| (t.check)(&data))).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {total} {target} inputs broke an invariant:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}

#[test]
fn request_corpus() {
    replay("request");
}

#[test]
fn jpeg_check_corpus() {
    replay("jpeg_check");
}

#[test]
fn dht_insert_corpus() {
    replay("dht_insert");
}

#[test]
fn dht_strip_corpus() {
    replay("dht_strip");
}

#[test]
fn multipart_header_corpus() {
    replay("multipart_header");
}

#[test]
fn part_reader_corpus() {
    replay("part_reader");
}

/// A target added under `fuzz/fuzz_targets/` without a replay here would guard nothing in CI.
#[test]
fn every_target_is_replayed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets/")
        .map(|e| e.expect("reading fuzz/fuzz_targets/").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|t| t.name.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}
