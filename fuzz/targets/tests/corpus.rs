//! Every fuzz target on stable, as CI runs it: each seed, each input that
//! once failed (`fuzz/regressions/TARGET/`, one file per finding, kept for
//! good), whatever corpus libFuzzer has grown here (`fuzz/corpus/`, not in
//! git), and a fixed number of seeded mutations of the seeds and
//! regressions. A panic in any is a failure naming the target and input.
//! Long fuzzing is `cargo xtask fuzz`; this keeps every finding fixed and
//! gives each target a short run in every CI build.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mutations per target in one run: a few seconds for all six in a debug build.
const MUTATIONS_PER_TARGET: u32 = 1_500;
/// A grown corpus can hold tens of thousands of inputs: replay at most this many per target.
const GROWN_CORPUS_MAX_INPUTS: usize = 2_000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/targets is inside fuzz/")
        .to_path_buf()
}

fn inputs(dir: &Path, limit: usize) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    paths.sort();
    paths.truncate(limit);
    paths
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).expect("an input file reads")))
        .collect()
}

/// Runs one input, naming it if the target panics.
fn run_one(target: &fuzz_targets::Target, what: &str, data: &[u8]) {
    let outcome = std::panic::catch_unwind(|| (target.run)(data));
    if outcome.is_err() {
        let keep = std::env::temp_dir().join(format!("crashlab-fuzz-{}-failing-input", target.name));
        let _ = std::fs::write(&keep, data);
        panic!(
            "fuzz target {} panicked on {what} ({} bytes, written to {}): add it to fuzz/regressions/{}/ once fixed",
            target.name,
            data.len(),
            keep.display(),
            target.name
        );
    }
}

/// One libFuzzer-like mutation: bit flips, boundary bytes, truncation,
/// duplication, insertion, or a splice with another input.
fn mutate(rng: &mut ChaCha8Rng, base: &[u8], other: &[u8], max_len: usize) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..rng.random_range(1..=8u32) {
        let len = out.len();
        match rng.random_range(0..7u32) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8u32);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = [0, 0xff, 0x7f, 0x80, b'\n', b'-', b'9', b' '][rng.random_range(0..8usize)];
            }
            2 if len > 0 => out.truncate(rng.random_range(0..len)),
            3 if len > 0 => {
                let start = rng.random_range(0..len);
                let end = rng.random_range(start..=len.min(start + 64));
                let chunk = out[start..end].to_vec();
                let at = rng.random_range(0..=len);
                out.splice(at..at, chunk);
            }
            4 => {
                let at = rng.random_range(0..=len);
                let bytes: Vec<u8> = (0..rng.random_range(1..=16)).map(|_| rng.random()).collect();
                out.splice(at..at, bytes);
            }
            5 if !other.is_empty() => {
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            _ if len >= 8 => {
                // An integer field set to an edge value, as parsers meet them.
                let i = rng.random_range(0..len - 7);
                let value = [0u64, 1, u64::MAX, u64::MAX / 2 + 1, u32::MAX as u64][rng.random_range(0..5usize)];
                out[i..i + 8].copy_from_slice(&value.to_le_bytes());
            }
            _ => {}
        }
    }
    out.truncate(max_len);
    out
}

#[test]
fn every_fuzz_target_survives_its_seeds_regressions_and_seeded_mutations() {
    let fuzz = fuzz_dir();
    for target in fuzz_targets::TARGETS {
        let seeds = inputs(&fuzz.join("seeds").join(target.name), usize::MAX);
        let regressions = inputs(&fuzz.join("regressions").join(target.name), usize::MAX);
        let grown = inputs(&fuzz.join("corpus").join(target.name), GROWN_CORPUS_MAX_INPUTS);
        assert!(
            !seeds.is_empty(),
            "fuzz/seeds/{} has no seed: every target keeps one",
            target.name
        );
        let mut bases: Vec<&[u8]> = Vec::new();
        for (path, data) in seeds.iter().chain(&regressions).chain(&grown) {
            run_one(target, &path.display().to_string(), data);
        }
        for (_, data) in seeds.iter().chain(&regressions) {
            bases.push(data);
        }
        if bases.is_empty() {
            bases.push(&[]);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_f022);
        for i in 0..MUTATIONS_PER_TARGET {
            let base = bases[rng.random_range(0..bases.len())];
            let other = bases[rng.random_range(0..bases.len())];
            let data = mutate(&mut rng, base, other, target.max_len_bytes);
            run_one(target, &format!("mutation {i} (seed 0x5eedf022)"), &data);
        }
        eprintln!(
            "{}: {} seeds, {} regressions, {} grown, {MUTATIONS_PER_TARGET} mutations",
            target.name,
            seeds.len(),
            regressions.len(),
            grown.len()
        );
    }
}

/// The mutator itself: a test that runs targets on unchanged inputs could
/// not fail, so check that mutations differ from their base and stay bounded.
#[test]
fn mutations_change_their_input_and_stay_within_the_bound() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let base = b"ACK 1 seq=1 slot=0\nBEGIN 2 seq=2 slot=1\n".repeat(4);
    let changed = (0..200)
        .filter(|_| mutate(&mut rng, &base, b"other", 4096) != base)
        .count();
    assert!(changed > 190, "only {changed} of 200 mutations changed the input");
    assert!((0..200).all(|_| mutate(&mut rng, &base, &base, 100).len() <= 100));
}

/// Each body has its libFuzzer binary in `fuzz/fuzz_targets/` and no binary
/// lacks a body: a target left out of either would go unfuzzed.
#[test]
fn every_target_has_a_libfuzzer_binary_and_every_binary_a_target() {
    let mut binaries: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets/ lists")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .collect();
    binaries.sort();
    let mut names: Vec<String> = fuzz_targets::TARGETS.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(binaries, names);
}

/// The protocol target's cut check is not vacuous: the records seed is a
/// run the timeline accepts, and its cuts are checked.
#[test]
fn the_protocol_seed_is_cut_and_checked() {
    let seed = std::fs::read(fuzz_dir().join("seeds/protocol/records-head")).unwrap();
    let log = record::protocol::parse_log(&String::from_utf8_lossy(&seed)).unwrap();
    assert!(fuzz_targets::cuts_answer_as_rebuilds(&log, &seed) > 0);
}
