//! The block-write log as the guest's disk traffic wrote it: parse, plan
//! states, and turn each into overlay extents. Bytes are untrusted.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The logged disk: 64 MiB of filesystem and the ack area, as campaigns make.
const DEVICE_BYTES: u64 = 128 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(log) = blocklog::parse_log(data, DEVICE_BYTES) else {
        return;
    };
    let options = blocklog::PlanOptions {
        seed: data.len() as u64,
        budget: 16,
        torn: true,
        ignored_sectors: 1024..2048,
    };
    for state in blocklog::plan_states(&log, &options) {
        let position = blocklog::crash_position(&log, &state);
        assert!(position <= log.entries.len() as u64);
        let extents = blocklog::overlay_extents(&log, &state);
        for e in &extents {
            assert!(e.device_offset_bytes + e.len_bytes <= DEVICE_BYTES);
        }
    }
});
