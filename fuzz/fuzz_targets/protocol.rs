//! The guest channel's line protocol: whatever the guest sends, parsing
//! gives events or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let _ = record::Event::parse(line);
    }
    let _ = record::protocol::parse_log(&text);
});
