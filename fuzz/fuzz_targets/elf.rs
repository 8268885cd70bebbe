//! libFuzzer over `fuzz_targets::elf` (fuzz/targets/src/lib.rs says what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_targets::elf(data));
