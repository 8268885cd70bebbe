//! libFuzzer over `fuzz_targets::evidence` (fuzz/targets/src/lib.rs says what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::evidence(data));
