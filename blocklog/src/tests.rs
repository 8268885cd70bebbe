//! Tests on logs crafted with [`crate::testing::LogWriter`].

use crate::format::{EntryHeader, Superblock, WRITE_LOG_MAGIC};
use crate::testing::LogWriter;
use crate::*;

/// A 64-sector (32 KiB) device.
const DEVICE_SIZE_BYTES: u64 = 64 * 512;

fn write_header(sector: u64, nr_sectors: u64) -> EntryHeader {
    EntryHeader {
        sector,
        nr_sectors,
        flags: EntryFlags(0),
        data_len: 0,
    }
}

/// W(0,2) W(4,1) F W(8,3) D(10,2) F W(2,1); 512-byte log sectors.
fn sample_log() -> Vec<u8> {
    let mut log = LogWriter::new(512);
    log.write_fill(0, 2, 0xa1).write_fill(4, 1, 0xb2).flush();
    log.write_fill(8, 3, 0xc3).discard(10, 2).flush();
    log.write_fill(2, 1, 0xd4);
    log.into_bytes()
}

/// Five epochs of six overlapping writes each (entry i filled with byte i+1),
/// a flush after each of the first four: 34 entries.
fn rich_log() -> Vec<u8> {
    let mut log = LogWriter::new(512);
    let mut fill = 1u8;
    for epoch in 0..5u64 {
        for write in 0..6u64 {
            let sector = (epoch * 7 + write * 5) % 56;
            log.write_fill(sector, 1 + (write + epoch) % 4, fill);
            fill += 1;
        }
        if epoch < 4 {
            log.flush();
            fill += 1; // keep "fill == index + 1"
        }
    }
    log.into_bytes()
}

/// Replays a state the slow, obvious way: every applied write in log order.
fn reference_image(log_bytes: &[u8], log: &ParsedLog, state: &CrashState) -> Vec<u8> {
    let mut image = vec![0u8; DEVICE_SIZE_BYTES as usize];
    let mut put = |entry: &LogEntry, sector_offset: u64| {
        let to = ((entry.sector + sector_offset) * 512) as usize;
        if entry.flags.is_discard() {
            image[to..to + 512].fill(0);
            return;
        }
        let data = entry_data(log_bytes, entry);
        let from = (sector_offset * 512) as usize;
        image[to..to + 512].copy_from_slice(&data[from..from + 512]);
    };
    for entry in log.entries[..state.prefix_entries as usize]
        .iter()
        .filter(|e| e.changes_data())
    {
        (0..entry.nr_sectors).for_each(|k| put(entry, k));
    }
    for &index in &state.extra_writes {
        let entry = &log.entries[index as usize];
        match state.torn.as_ref().filter(|torn| torn.entry == index) {
            Some(torn) => torn.sectors_kept.iter().for_each(|&k| put(entry, k)),
            None => (0..entry.nr_sectors).for_each(|k| put(entry, k)),
        }
    }
    image
}

fn applied_image(log_bytes: &[u8], log: &ParsedLog, state: &CrashState) -> Vec<u8> {
    let mut image = vec![0u8; DEVICE_SIZE_BYTES as usize];
    apply_state(log_bytes, log, state, &mut image).unwrap();
    image
}

/// No ignored sectors.
const NONE: std::ops::Range<u64> = 0..0;

fn opts(seed: u64, budget: usize, torn: bool) -> PlanOptions {
    PlanOptions {
        seed,
        budget,
        torn,
        tear_unit: crate::TearUnit::Sector,
        ignored_sectors: NONE,
    }
}

fn sector_of(image: &[u8], sector: usize) -> &[u8] {
    &image[sector * 512..(sector + 1) * 512]
}

// ---------------------------------------------------------------- parsing

#[test]
fn round_trip_reads_every_entry_with_offsets() {
    let bytes = sample_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let summary: Vec<(u64, u64, u64, u64, u64)> = log
        .entries
        .iter()
        .map(|e| (e.sector, e.nr_sectors, e.flags.0, e.data_offset_bytes, e.data_len_bytes))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, 2, 0, 1024, 1024),
            (4, 1, 0, 2560, 512),
            (0, 0, EntryFlags::FLUSH, 3584, 0),
            (8, 3, 0, 4096, 1536),
            (10, 2, EntryFlags::DISCARD, 6144, 0),
            (0, 0, EntryFlags::FLUSH, 6656, 0),
            (2, 1, 0, 7168, 512),
        ]
    );
    assert!(log.entries.iter().enumerate().all(|(i, e)| e.index == i as u64));
    assert_eq!(log.sector_size_bytes, 512);
    assert_eq!(log.superblock_nr_entries, 6);
    assert!(log.superblock_written);
    assert_eq!(log.truncated, None);
    assert_eq!(log.end_offset_bytes, 7680);
    assert_eq!(log.end_offset_bytes, bytes.len() as u64);
    assert_eq!(log.stray_data_offset_bytes, None);
    assert_eq!(entry_data(&bytes, &log.entries[3]), &[0xc3; 1536][..]);
    let mut buf = Vec::new();
    read_entry_data(bytes.as_slice(), &log.entries[1], &mut buf).unwrap();
    assert_eq!(buf, vec![0xb2; 512]);
}

#[test]
fn large_log_sectors_are_converted_to_512_byte_units() {
    let mut writer = LogWriter::new(4096);
    writer.write_fill(8, 8, 0x11).flush();
    let bytes = writer.into_bytes();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    assert_eq!(log.sector_size_bytes, 4096);
    let write = log.entries[0];
    assert_eq!((write.sector, write.nr_sectors), (8, 8));
    assert_eq!((write.data_offset_bytes, write.data_len_bytes), (8192, 4096));
    assert_eq!(log.entries[1].data_offset_bytes, 4 * 4096);
    // The raw header holds log-sector units: sector 1, one sector.
    let raw: [u8; 32] = bytes[4096..4128].try_into().unwrap();
    assert_eq!(
        (EntryHeader::decode(&raw).sector, EntryHeader::decode(&raw).nr_sectors),
        (1, 1)
    );
}

#[test]
fn log_cut_in_entry_data_is_truncated_not_an_error() {
    let bytes = sample_log();
    let cut = &bytes[..7168 + 100];
    let log = parse_log(cut, DEVICE_SIZE_BYTES).unwrap();
    assert_eq!(log.entries.len(), 6);
    assert_eq!(
        log.truncated,
        Some(Truncation {
            entry_index: 6,
            header_offset_bytes: 6656,
            part: TruncatedPart::Data,
            needed_bytes: 1024,
            available_bytes: 612,
        })
    );
    assert_eq!(log.end_offset_bytes, 6656);
}

#[test]
fn log_cut_in_entry_header_is_truncated_not_an_error() {
    let bytes = sample_log();
    for cut_len in [6656 + 20, 6656 + 100] {
        let log = parse_log(&bytes[..cut_len], DEVICE_SIZE_BYTES).unwrap();
        assert_eq!(log.entries.len(), 6, "cut at {cut_len}");
        let truncation = log.truncated.expect("truncation reported");
        assert_eq!(truncation.part, TruncatedPart::Header);
        assert_eq!(truncation.entry_index, 6);
        assert_eq!(truncation.available_bytes, cut_len as u64 - 6656);
    }
}

#[test]
fn log_cut_at_an_entry_boundary_is_clean() {
    let bytes = sample_log();
    let log = parse_log(&bytes[..6656], DEVICE_SIZE_BYTES).unwrap();
    assert_eq!(log.entries.len(), 6);
    assert_eq!(log.truncated, None);
}

#[test]
fn stale_superblock_count_does_not_stop_the_walk() {
    let mut writer = LogWriter::new(512);
    writer
        .write_fill(0, 1, 1)
        .flush()
        .write_fill(1, 1, 2)
        .write_fill(2, 1, 3);
    writer.write_superblock(1);
    let log = parse_log(writer.bytes(), DEVICE_SIZE_BYTES).unwrap();
    assert_eq!(log.superblock_nr_entries, 1);
    assert_eq!(log.entries.len(), 4);
    assert_eq!(log.entries[3].sector, 2);
}

#[test]
fn superblock_updates_every_4096_entries_like_qemu() {
    let mut writer = LogWriter::new(512);
    for i in 0..4100u64 {
        writer.write_fill(i % 64, 1, 7);
    }
    let log = parse_log(writer.bytes(), DEVICE_SIZE_BYTES).unwrap();
    assert_eq!(log.superblock_nr_entries, 4096);
    assert_eq!(log.entries.len(), 4100);
}

#[test]
fn log_before_the_first_flush_has_no_superblock() {
    let mut writer = LogWriter::new(512);
    writer.write_fill(3, 2, 9);
    let log = parse_log(writer.bytes(), DEVICE_SIZE_BYTES).unwrap();
    assert!(!log.superblock_written);
    assert_eq!(log.superblock_nr_entries, 0);
    assert_eq!(log.entries.len(), 1);
    assert_eq!(log.entries[0].sector, 3);
}

#[test]
fn empty_file_is_an_empty_log() {
    let log = parse_log(&[], DEVICE_SIZE_BYTES).unwrap();
    assert!(log.entries.is_empty());
    assert!(!log.superblock_written);
    assert_eq!(log.truncated, None);
}

#[test]
fn zero_header_ends_the_log_and_stray_bytes_are_reported() {
    let mut bytes = sample_log();
    let end = bytes.len() as u64;
    bytes.resize(bytes.len() + 4096, 0);
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    assert_eq!(log.entries.len(), 7);
    assert_eq!(log.end_offset_bytes, end);
    assert_eq!(log.stray_data_offset_bytes, None);

    bytes[end as usize + 1000] = 0x5a;
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    assert_eq!(log.entries.len(), 7);
    assert_eq!(log.stray_data_offset_bytes, Some(end + 1000));
}

#[test]
fn bad_magic_is_rejected() {
    let mut bytes = sample_log();
    bytes[0] ^= 0xff;
    match parse_log(&bytes, DEVICE_SIZE_BYTES) {
        Err(LogError::BadMagic { found }) => assert_eq!(found, WRITE_LOG_MAGIC ^ 0xff),
        other => panic!("expected BadMagic, got {other:?}"),
    }
}

#[test]
fn bad_version_and_sector_size_are_rejected() {
    let superblock = |version, sector_size_bytes| {
        let mut bytes = vec![0u8; 1024];
        let sb = Superblock {
            magic: WRITE_LOG_MAGIC,
            version,
            nr_entries: 0,
            sector_size_bytes,
        };
        bytes[..28].copy_from_slice(&sb.encode());
        bytes
    };
    assert!(matches!(
        parse_log(&superblock(2, 512), DEVICE_SIZE_BYTES),
        Err(LogError::UnsupportedVersion { found: 2 })
    ));
    assert!(matches!(
        parse_log(&superblock(1, 1000), DEVICE_SIZE_BYTES),
        Err(LogError::UnsupportedSectorSize { found: 1000 })
    ));
    assert!(matches!(
        parse_log(&[1, 2, 3], DEVICE_SIZE_BYTES),
        Err(LogError::SuperblockTooShort { file_size_bytes: 3 })
    ));
}

#[test]
fn write_past_device_end_is_rejected() {
    let mut writer = LogWriter::new(512);
    writer.write_fill(0, 1, 1).write_fill(63, 2, 2);
    match parse_log(writer.bytes(), DEVICE_SIZE_BYTES) {
        Err(LogError::WritePastDeviceEnd {
            index,
            sector,
            nr_sectors,
            device_size_bytes,
        }) => {
            assert_eq!(
                (index, sector, nr_sectors, device_size_bytes),
                (1, 63, 2, DEVICE_SIZE_BYTES)
            );
        }
        other => panic!("expected WritePastDeviceEnd, got {other:?}"),
    }
    // Absurd lengths fail the same way instead of overflowing.
    let mut writer = LogWriter::new(512);
    writer.raw_entry(&write_header(1, u64::MAX / 2), &[]);
    assert!(matches!(
        parse_log(writer.bytes(), DEVICE_SIZE_BYTES),
        Err(LogError::WritePastDeviceEnd { index: 0, .. })
    ));
    // The last sector itself is fine.
    let mut writer = LogWriter::new(512);
    writer.write_fill(63, 1, 1);
    assert_eq!(parse_log(writer.bytes(), DEVICE_SIZE_BYTES).unwrap().entries.len(), 1);
}

#[test]
fn unknown_flag_bits_are_rejected() {
    let mut writer = LogWriter::new(512);
    writer.write_fill(0, 1, 1);
    writer.raw_entry(
        &EntryHeader {
            sector: 0,
            nr_sectors: 0,
            flags: EntryFlags(0x21),
            data_len: 0,
        },
        &[],
    );
    match parse_log(writer.bytes(), DEVICE_SIZE_BYTES) {
        Err(LogError::UnknownFlags {
            index,
            offset_bytes,
            flags,
        }) => {
            assert_eq!((index, offset_bytes, flags), (1, 1536, 0x21));
        }
        other => panic!("expected UnknownFlags, got {other:?}"),
    }
}

#[test]
fn inconsistent_headers_are_rejected() {
    let mut with_data_len = LogWriter::new(512);
    with_data_len.raw_entry(
        &EntryHeader {
            data_len: 8,
            ..write_header(0, 1)
        },
        &[1; 512],
    );
    let mut flush_with_data = LogWriter::new(512);
    flush_with_data.raw_entry(
        &EntryHeader {
            flags: EntryFlags(EntryFlags::FLUSH),
            ..write_header(0, 1)
        },
        &[1; 512],
    );
    let mut dirty_padding = LogWriter::new(512).into_bytes();
    dirty_padding.extend_from_slice(&write_header(0, 1).encode());
    dirty_padding.resize(1024, 0);
    dirty_padding[600] = 1;
    dirty_padding.resize(1536, 7);
    for bytes in [with_data_len.bytes(), flush_with_data.bytes(), &dirty_padding[..]] {
        assert!(matches!(
            parse_log(bytes, DEVICE_SIZE_BYTES),
            Err(LogError::BadEntry {
                index: 0,
                offset_bytes: 512,
                ..
            })
        ));
    }
}

#[test]
fn strict_mode_rejects_entries_the_superblock_promised() {
    let strict = ParseOptions {
        strict_superblock_count: true,
        ..ParseOptions::default()
    };
    let bytes = sample_log(); // superblock counts 6 of 7 entries
    assert_eq!(
        parse_log_from(bytes.as_slice(), DEVICE_SIZE_BYTES, &strict)
            .unwrap()
            .entries
            .len(),
        7
    );
    // Entry 6 (not counted) cut: fine. Entry 3 (counted) cut: the file lost data.
    assert!(parse_log_from(&bytes[..7200], DEVICE_SIZE_BYTES, &strict).is_ok());
    assert!(matches!(
        parse_log_from(&bytes[..4200], DEVICE_SIZE_BYTES, &strict),
        Err(LogError::EntryPastEof {
            index: 3,
            superblock_nr_entries: 6,
            ..
        })
    ));
    assert!(matches!(
        parse_log_from(&bytes[..3584], DEVICE_SIZE_BYTES, &strict),
        Err(LogError::MissingEntries {
            found: 3,
            superblock_nr_entries: 6
        })
    ));
    // Lenient (default) mode reports the same cut as a truncation.
    assert_eq!(
        parse_log(&bytes[..4200], DEVICE_SIZE_BYTES)
            .unwrap()
            .truncated
            .unwrap()
            .entry_index,
        3
    );
}

#[test]
fn entry_count_is_capped() {
    let options = ParseOptions {
        max_entries: 2,
        ..ParseOptions::default()
    };
    let bytes = sample_log();
    assert!(matches!(
        parse_log_from(bytes.as_slice(), DEVICE_SIZE_BYTES, &options),
        Err(LogError::TooManyEntries { max_entries: 2 })
    ));
    let options = ParseOptions {
        max_entries: 7,
        ..ParseOptions::default()
    };
    assert!(parse_log_from(bytes.as_slice(), DEVICE_SIZE_BYTES, &options).is_ok());
}

#[test]
fn error_messages_name_problem_and_cause() {
    let magic = LogError::BadMagic { found: 1 }.to_string();
    assert!(magic.contains("0x1") && magic.contains("not a blklogwrites"), "{magic}");
    let past = LogError::WritePastDeviceEnd {
        index: 4,
        sector: 63,
        nr_sectors: 2,
        device_size_bytes: 32768,
    }
    .to_string();
    assert!(
        past.contains("entry 4") && past.contains("63..65") && past.contains("64 sectors"),
        "{past}"
    );
}

#[test]
fn log_file_is_read_with_positioned_reads() {
    let bytes = sample_log();
    let path = std::env::temp_dir().join(format!("blocklog-test-{}.log", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let from_file = read_log_file(&path, DEVICE_SIZE_BYTES);
    let file = std::fs::File::open(&path).unwrap();
    let state = CrashState::prefix(7);
    let mut image = vec![0u8; DEVICE_SIZE_BYTES as usize];
    let log = from_file.unwrap();
    apply_state(&file, &log, &state, &mut image).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(log, parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap());
    assert_eq!(image, reference_image(&bytes, &log, &state));
    let missing = read_log_file("/nonexistent/blocklog.log", DEVICE_SIZE_BYTES).unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/blocklog.log"), "{missing}");
}

// ---------------------------------------------------------------- states

#[test]
fn prefix_states_one_per_flush_plus_final() {
    let bytes = sample_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let prefixes: Vec<u64> = prefix_states(&log).iter().map(|s| s.prefix_entries).collect();
    assert_eq!(prefixes, vec![3, 6, 7]); // 2 flushes + final
    assert!(prefix_states(&log)
        .iter()
        .all(|s| s.kind == StateKind::Prefix && s.extra_writes.is_empty()));

    // A log ending in a flush has no separate final state.
    let log = parse_log(&bytes[..6656], DEVICE_SIZE_BYTES).unwrap();
    let prefixes: Vec<u64> = prefix_states(&log).iter().map(|s| s.prefix_entries).collect();
    assert_eq!(prefixes, vec![3, 6]);

    let bytes = rich_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let flushes = log.entries.iter().filter(|e| e.flags.is_flush()).count();
    assert_eq!(flushes, 4);
    assert_eq!(prefix_states(&log).len(), flushes + 1);
}

#[test]
fn prefix_states_apply_to_an_image() {
    let bytes = sample_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let states = prefix_states(&log);
    let first = applied_image(&bytes, &log, &states[0]);
    assert_eq!(sector_of(&first, 0), &[0xa1; 512][..]);
    assert_eq!(sector_of(&first, 1), &[0xa1; 512][..]);
    assert_eq!(sector_of(&first, 4), &[0xb2; 512][..]);
    assert_eq!(sector_of(&first, 8), &[0; 512][..]);
    let last = applied_image(&bytes, &log, &states[2]);
    assert_eq!(sector_of(&last, 2), &[0xd4; 512][..]);
    assert_eq!(sector_of(&last, 9), &[0xc3; 512][..]);
    assert_eq!(sector_of(&last, 10), &[0; 512][..], "a durable discard reads as zeros");
    assert_eq!(sector_of(&last, 11), &[0; 512][..]);
    for state in &states {
        assert_eq!(applied_image(&bytes, &log, state), reference_image(&bytes, &log, state));
    }
}

#[test]
fn overlay_extents_list_final_winners() {
    let bytes = sample_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    // Prefix 3 (writes 0 and 1) plus write 3 of the open epoch.
    let state = CrashState::new(3, vec![3], None);
    let extents = overlay_extents(&log, &state);
    let expected = vec![
        Extent {
            device_offset_bytes: 0,
            len_bytes: 1024,
            source: ExtentSource::Log { offset_bytes: 1024 },
        },
        Extent {
            device_offset_bytes: 2048,
            len_bytes: 512,
            source: ExtentSource::Log { offset_bytes: 2560 },
        },
        Extent {
            device_offset_bytes: 4096,
            len_bytes: 1536,
            source: ExtentSource::Log { offset_bytes: 4096 },
        },
    ];
    assert_eq!(extents, expected);

    // The final write (sector 2) does not touch earlier extents; the
    // discard of sectors 10..12 reads as zeros.
    let final_extents = overlay_extents(&log, &CrashState::prefix(7));
    assert_eq!(final_extents.len(), 5);
    assert_eq!(
        final_extents[4],
        Extent {
            device_offset_bytes: 10 * 512,
            len_bytes: 1024,
            source: ExtentSource::Zeros
        }
    );
    assert_eq!(
        final_extents[1],
        Extent {
            device_offset_bytes: 1024,
            len_bytes: 512,
            source: ExtentSource::Log { offset_bytes: 7168 }
        }
    );
}

#[test]
fn overlapping_write_splits_an_extent() {
    let mut writer = LogWriter::new(512);
    writer.write_fill(0, 4, 1).write_fill(1, 2, 2);
    let bytes = writer.into_bytes();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let extents = overlay_extents(&log, &CrashState::prefix(2));
    assert_eq!(
        extents,
        vec![
            Extent {
                device_offset_bytes: 0,
                len_bytes: 512,
                source: ExtentSource::Log { offset_bytes: 1024 }
            },
            Extent {
                device_offset_bytes: 512,
                len_bytes: 1024,
                source: ExtentSource::Log { offset_bytes: 3584 }
            },
            Extent {
                device_offset_bytes: 1536,
                len_bytes: 512,
                source: ExtentSource::Log { offset_bytes: 2560 }
            },
        ]
    );
}

#[test]
fn torn_state_keeps_exactly_the_chosen_sectors() {
    let mut writer = LogWriter::new(512);
    writer.write_fill(4, 4, 0xaa).write_fill(20, 1, 0xbb);
    let bytes = writer.into_bytes();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let torn = TornWrite {
        entry: 0,
        sectors_kept: vec![0, 2],
        unit_sectors: 1,
    };
    let state = CrashState::new(0, vec![0, 1], Some(torn));
    assert_eq!(state.kind, StateKind::Torn);
    state.validate(&log).unwrap();
    let image = applied_image(&bytes, &log, &state);
    let changed: Vec<usize> = (0..64).filter(|&s| sector_of(&image, s) != [0; 512]).collect();
    assert_eq!(changed, vec![4, 6, 20]);
    assert_eq!(sector_of(&image, 6), &[0xaa; 512][..]);
}

#[test]
fn random_states_are_deterministic_and_within_budget() {
    let bytes = rich_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let a = random_states(&log, &opts(42, 50, true));
    assert_eq!(a, random_states(&log, &opts(42, 50, true)));
    assert_eq!(a.len(), 50);
    assert_ne!(a, random_states(&log, &opts(43, 50, true)));
    assert_eq!(random_states(&log, &opts(42, 7, false)).len(), 7);
    assert!(random_states(&log, &opts(42, 0, false)).is_empty());
    assert!(a.iter().any(|s| s.kind == StateKind::Torn));
    assert!(a.iter().any(|s| s.kind == StateKind::Subset));
}

#[test]
fn random_states_stay_in_their_open_epoch() {
    let bytes = rich_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    for state in random_states(&log, &opts(7, 200, true)) {
        state.validate(&log).unwrap();
        let epoch = open_epoch(&log, state.prefix_entries);
        let boundary = state.prefix_entries == 0 || log.entries[state.prefix_entries as usize - 1].flags.is_flush();
        assert!(boundary, "prefix {} is not after a flush", state.prefix_entries);
        assert!(
            state.extra_writes.iter().all(|i| epoch.contains(i)),
            "{state:?} leaves {epoch:?}"
        );
        assert!(state
            .extra_writes
            .iter()
            .all(|&i| !log.entries[i as usize].flags.is_flush()));
    }
}

#[test]
fn random_states_skip_identical_contents() {
    // Two writes of the same two sectors, then a flush: entry 1 covers entry 0.
    let mut writer = LogWriter::new(512);
    writer.write_fill(0, 2, 1).write_fill(0, 2, 2);
    let bytes = writer.bytes().to_vec();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    // {} / {0} / {1} = {0,1}: three contents.
    let states = random_states(&log, &opts(1, 100, false));
    assert_eq!(states.len(), 3);
    let images: std::collections::HashSet<Vec<u8>> = states.iter().map(|s| applied_image(&bytes, &log, s)).collect();
    assert_eq!(images.len(), 3);

    // With a flush, "prefix 0 + both writes" equals "prefix 3": still three.
    writer.flush();
    let bytes = writer.into_bytes();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let states = random_states(&log, &opts(1, 100, false));
    assert_eq!(states.len(), 3);
    let keys: std::collections::HashSet<StateKey> = states.iter().map(|s| state_key(&log, s, &NONE)).collect();
    assert_eq!(keys.len(), 3);
}

#[test]
fn incremental_keys_match_keys_from_scratch() {
    let bytes = rich_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let states = random_states(&log, &opts(11, 300, true));
    let keys: std::collections::HashSet<StateKey> = states.iter().map(|s| state_key(&log, s, &NONE)).collect();
    assert_eq!(
        keys.len(),
        states.len(),
        "random_states returned two states with equal contents"
    );
    // Equal keys exactly when images are equal, over all pairs drawn.
    let images: std::collections::HashSet<Vec<u8>> = states.iter().map(|s| applied_image(&bytes, &log, s)).collect();
    assert_eq!(images.len(), states.len());
    // A subset state covering its whole epoch has the next prefix's key.
    let epoch = open_epoch(&log, 7);
    let writes: Vec<u64> = epoch.clone().collect();
    assert_eq!(
        state_key(&log, &CrashState::new(7, writes, None), &NONE),
        state_key(&log, &CrashState::prefix(epoch.end + 1), &NONE)
    );
}

#[test]
fn random_states_apply_like_the_reference_replay() {
    let bytes = rich_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    for state in random_states(&log, &opts(5, 100, true)) {
        assert_eq!(
            applied_image(&bytes, &log, &state),
            reference_image(&bytes, &log, &state),
            "{state:?}"
        );
    }
}

#[test]
fn validate_rejects_states_outside_the_model() {
    let bytes = sample_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let reason = |state: CrashState| state.validate(&log).unwrap_err().reason;
    assert!(reason(CrashState::new(0, vec![3], None)).contains("outside the open epoch"));
    assert!(
        CrashState::new(3, vec![4], None).validate(&log).is_ok(),
        "a discard may persist or not"
    );
    let mut writer = LogWriter::new(512);
    writer.write_fill(0, 1, 1).discard(4, 0);
    let empty_discard = parse_log(writer.bytes(), DEVICE_SIZE_BYTES).unwrap();
    let err = CrashState::new(0, vec![1], None).validate(&empty_discard).unwrap_err();
    assert!(err.reason.contains("not a data write or discard"), "{err}");
    assert!(reason(CrashState::new(3, vec![3, 3], None)).contains("strictly increasing"));
    assert!(reason(CrashState::prefix(8)).contains("the log has 7"));
    let torn = |kept: Vec<u64>| {
        Some(TornWrite {
            entry: 3,
            sectors_kept: kept,
            unit_sectors: 1,
        })
    };
    assert!(reason(CrashState::new(3, vec![], torn(vec![0]))).contains("not one of extra_writes"));
    assert!(reason(CrashState::new(3, vec![3], torn(vec![0, 1, 2]))).contains("proper subset"));
    assert!(reason(CrashState::new(3, vec![3], torn(vec![3]))).contains("proper subset"));
    let mislabeled = CrashState {
        kind: StateKind::Prefix,
        ..CrashState::new(3, vec![3], None)
    };
    assert!(reason(mislabeled).contains("kind"));
    assert!(CrashState::new(3, vec![3], torn(vec![1, 2])).validate(&log).is_ok());
}

// ------------------------------------------------ judging point and planning

#[test]
fn states_are_judged_at_the_end_of_their_open_epoch() {
    // W0 W1 F W3 D4 F W6: epochs [0,2) [3,5) [6,7).
    let bytes = sample_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    // The prefix at the first flush is judged just before the second one
    // completes, whatever the open epoch keeps: acks logged in between
    // had been given.
    assert_eq!(crash_position(&log, &CrashState::prefix(3)), 5);
    assert_eq!(crash_position(&log, &CrashState::new(3, vec![3], None)), 5);
    assert_eq!(crash_position(&log, &CrashState::new(3, vec![3, 4], None)), 5);
    // Open to the log's end: judged at the end.
    assert_eq!(crash_position(&log, &CrashState::prefix(6)), 7);
    assert_eq!(crash_position(&log, &CrashState::prefix(7)), 7);
    assert_eq!(crash_position(&log, &CrashState::prefix(0)), 2);
}

/// W0 FUA1 W2 FUA3 W4 F W6: the FUA writes end the epoch early when left out.
fn fua_log() -> (Vec<u8>, ParsedLog) {
    let mut w = LogWriter::new(512);
    w.write_fill(0, 2, 1).write_fill_fua(2, 1, 2).write_fill(3, 2, 3);
    w.write_fill_fua(5, 1, 4)
        .write_fill(6, 1, 5)
        .flush()
        .write_fill(8, 1, 7);
    let bytes = w.into_bytes();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    (bytes, log)
}

#[test]
fn a_fua_write_left_out_is_the_crash_point() {
    let (_, log) = fua_log();
    assert!(log.entries[1].flags.is_fua());
    // Without FUA 1, the crash came before it completed: judged at 1, and
    // nothing logged after it may be present.
    assert_eq!(crash_position(&log, &CrashState::new(0, vec![0], None)), 1);
    let err = CrashState::new(0, vec![2], None).validate(&log).unwrap_err();
    assert!(err.reason.contains("follows FUA write 1"), "{err}");
    // With FUA 1 but not FUA 3: judged at 3.
    assert_eq!(crash_position(&log, &CrashState::new(0, vec![1, 2], None)), 3);
    assert!(CrashState::new(0, vec![1, 4], None).validate(&log).is_err());
    // With both: the epoch's end, the flush at 5.
    assert_eq!(crash_position(&log, &CrashState::new(0, vec![1, 3], None)), 5);
    // A FUA write is durable once complete: it never tears.
    let torn = TornWrite {
        entry: 1,
        sectors_kept: vec![0],
        unit_sectors: 1,
    };
    assert!(CrashState::new(0, vec![1], Some(torn)).validate(&log).is_err());
}

#[test]
fn random_states_keep_every_fua_write_before_their_crash_point() {
    let (bytes, log) = fua_log();
    let states = random_states(&log, &opts(3, 200, true));
    assert!(states.len() > 10);
    let mut positions = std::collections::HashSet::new();
    for state in &states {
        state.validate(&log).unwrap();
        let position = crash_position(&log, state);
        positions.insert(position);
        for fua in [1u64, 3] {
            if fua < position && state.prefix_entries <= fua {
                assert!(state.extra_writes.contains(&fua), "{state:?} at {position}");
            }
        }
        assert_eq!(applied_image(&bytes, &log, state), reference_image(&bytes, &log, state));
    }
    // Crash points before each FUA write and at the flush are all drawn.
    assert!(positions.is_superset(&[1, 3, 5].into_iter().collect()), "{positions:?}");
}

#[test]
fn random_states_include_or_leave_out_discards() {
    let bytes = sample_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let states = random_states(&log, &opts(1, 100, false));
    let with_discard = states.iter().filter(|s| s.extra_writes.contains(&4)).count();
    assert!(with_discard > 0 && with_discard < states.len(), "{states:?}");
    for state in states.iter().filter(|s| s.extra_writes.contains(&4)) {
        let image = applied_image(&bytes, &log, state);
        assert_eq!(sector_of(&image, 10), &[0; 512][..]);
        assert_eq!(image, reference_image(&bytes, &log, state));
    }
}

#[test]
fn random_draws_skip_epochs_without_writes_and_weigh_the_rest() {
    // One epoch of 40 writes, then 200 epochs of one write, and 200
    // flush-only epochs in between: a uniform draw over epochs would give
    // the big epoch about 0.25% of the states.
    let mut w = LogWriter::new(512);
    for i in 0..40u64 {
        w.write_fill(i % 60, 1, 1 + i as u8);
    }
    w.flush();
    for i in 0..200u64 {
        w.write_fill(i % 60, 1, 100).flush().flush();
    }
    let bytes = w.into_bytes();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let states = random_states(&log, &opts(5, 400, false));
    assert_eq!(states.len(), 400);
    let from_big = states.iter().filter(|s| s.prefix_entries == 0).count();
    // 40 of 240 drawable writes: about a sixth of the draws.
    assert!(from_big >= 40, "the long epoch got {from_big} of 400 states");
    for state in &states {
        let epoch = open_epoch(&log, state.prefix_entries);
        assert!(
            epoch.clone().any(|i| log.entries[i as usize].changes_data()),
            "{state:?}"
        );
    }
}

#[test]
fn planned_states_with_equal_contents_are_judged_at_the_later_point() {
    // W0 F A2 F A4 F W6 F, where A (sector 40) is in the ignored area: the
    // prefixes after flush 1, 3 and 5 hold the same checked contents.
    let mut w = LogWriter::new(512);
    w.write_fill(0, 1, 1).flush();
    w.write_fill(40, 1, 2).flush();
    w.write_fill(41, 1, 3).flush();
    w.write_fill(1, 1, 4).flush();
    let bytes = w.into_bytes();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let options = PlanOptions {
        ignored_sectors: 40..64,
        ..opts(1, 10, false)
    };
    let states = plan_states(&log, &options);
    let prefixes: Vec<u64> = states.iter().map(|s| s.prefix_entries).collect();
    // Prefix 2 and 4 give way to prefix 6 (judged at 7, after both acks).
    assert_eq!(prefixes, vec![6, 8, 0], "{states:?}");
    assert_eq!(crash_position(&log, &states[0]), 7);
    // Writes in the ignored area are never drawn into a subset.
    for state in &states {
        assert!(state.extra_writes.iter().all(|&i| log.entries[i as usize].sector < 40));
    }
    // Without the ignored area, all four prefixes differ.
    let states = plan_states(&log, &opts(1, 10, false));
    let flush_prefixes = states
        .iter()
        .filter(|s| s.kind == StateKind::Prefix && s.prefix_entries > 0)
        .count();
    assert_eq!(flush_prefixes, 4);
}

#[test]
fn plan_thins_prefixes_to_half_the_budget_and_fills_with_random_states() {
    let bytes = rich_log();
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let states = plan_states(&log, &opts(2, 6, true));
    assert_eq!(states.len(), 6);
    assert_eq!(states.iter().take_while(|s| s.kind == StateKind::Prefix).count(), 3);
    assert_eq!(states, plan_states(&log, &opts(2, 6, true)), "deterministic");
    let keys: std::collections::HashSet<StateKey> = states.iter().map(|s| state_key(&log, s, &NONE)).collect();
    assert_eq!(keys.len(), 6, "no two states with the same contents");
}

/// Thousands of overlapping writes and discards with flushes between them,
/// seeded: long enough for a [`PrefixIndex`] to hold several checkpoints.
fn long_log(seed: u64, entries: u64) -> Vec<u8> {
    let mut rng = crate::rng::SplitMix64::new(seed);
    let mut log = LogWriter::new(512);
    let mut written = 0;
    while written < entries {
        match rng.below(10) {
            0 | 1 => log.flush(),
            2 => log.discard(rng.below(60), 1 + rng.below(4)),
            _ => log.write_fill(rng.below(56), 1 + rng.below(8), 1 + rng.below(255) as u8),
        };
        written += 1;
    }
    log.into_bytes()
}

#[test]
fn prefix_index_builds_the_same_states_as_a_full_replay() {
    for seed in 0..4 {
        let bytes = long_log(seed, 3 * CHECKPOINT_STRIDE_MIN_ENTRIES + 517);
        let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
        let index = PrefixIndex::new(&log);
        let mut states = plan_states(&log, &opts(seed, 400, true));
        // Every checkpoint boundary and its neighbours too.
        for k in 0..=3 {
            let at = k * CHECKPOINT_STRIDE_MIN_ENTRIES;
            states.extend([at.saturating_sub(1), at, at + 1].map(CrashState::prefix));
        }
        states.push(CrashState::prefix(log.entries.len() as u64));
        assert!(states
            .iter()
            .any(|s| s.prefix_entries > 2 * CHECKPOINT_STRIDE_MIN_ENTRIES));
        for state in &states {
            let extents = index.extents(&log, state);
            assert_eq!(extents, overlay_extents(&log, state), "{state:?}");
            let mut image = vec![0u8; DEVICE_SIZE_BYTES as usize];
            apply_extents(&bytes[..], &extents, &mut image).unwrap();
            assert_eq!(image, reference_image(&bytes, &log, state), "{state:?}");
        }
    }
}

#[test]
fn prefix_index_memory_is_bounded_whatever_the_log_length() {
    let bytes = long_log(9, 200 * CHECKPOINT_STRIDE_MIN_ENTRIES);
    let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
    let index = PrefixIndex::new(&log);
    assert!(index.checkpoint_count() as u64 <= CHECKPOINTS_MAX + 1);
    let last = CrashState::prefix(log.entries.len() as u64);
    assert_eq!(index.extents(&log, &last), overlay_extents(&log, &last));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One log entry: a flush, a discard, a write, or a FUA write.
    fn op() -> impl Strategy<Value = (u8, u64, u64, u8)> {
        (0u8..10, 0u64..56, 1u64..8, 1u8..=255)
    }

    fn build(ops: &[(u8, u64, u64, u8)]) -> Vec<u8> {
        let mut log = LogWriter::new(512);
        for &(kind, sector, len, byte) in ops {
            match kind {
                0 | 1 => log.flush(),
                2 => log.discard(sector, len.min(4)),
                3 => log.write_fill_fua(sector, len, byte),
                _ => log.write_fill(sector, len, byte),
            };
        }
        log.into_bytes()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the log: every planned state satisfies the crash model
        /// (`CrashState::validate`), is distinct, crashes inside the log,
        /// and its incremental extents are the from-scratch replay's.
        #[test]
        fn planned_states_satisfy_the_crash_model(
            ops in prop::collection::vec(op(), 1..300),
            seed: u64,
            budget in 1usize..48,
            torn: bool,
        ) {
            let bytes = build(&ops);
            let log = parse_log(&bytes, DEVICE_SIZE_BYTES).unwrap();
            let states = plan_states(&log, &opts(seed, budget, torn));
            prop_assert!(!states.is_empty() && states.len() <= budget);
            let index = PrefixIndex::new(&log);
            let mut keys = std::collections::HashSet::new();
            for state in &states {
                prop_assert!(state.validate(&log).is_ok(), "{:?}", state);
                prop_assert!(crash_position(&log, state) <= log.entries.len() as u64);
                prop_assert!(keys.insert(state_key(&log, state, &NONE)), "two states alike: {:?}", state);
                prop_assert_eq!(index.extents(&log, state), overlay_extents(&log, state));
            }
        }
    }
}

/// Page tears (`TearUnit::Page`): a write tears only at the device's 4 KiB
/// boundaries inside it; the planner and the exploration make such tears
/// with `Both`, each valid and recording its unit; sector tears are what
/// they were (no unit in their serialised form, so earlier states keep
/// their identity).
#[test]
fn page_tears_fall_on_device_page_boundaries() {
    assert_eq!(tear_points(4, 16, PAGE_SECTORS), [4, 12]);
    assert_eq!(
        tear_points(0, 8, PAGE_SECTORS),
        Vec::<u64>::new(),
        "one aligned page does not tear"
    );
    assert_eq!(tear_points(0, 3, 1), [1, 2]);

    let mut writer = LogWriter::new(512);
    writer
        .write_fill(0, 8, 1)
        .flush()
        .write_fill(4, 16, 2)
        .write_fill(40, 8, 3)
        .flush();
    let log = parse_log(writer.bytes(), DEVICE_SIZE_BYTES).unwrap();
    let torn = |kept: std::ops::Range<u64>, unit: u64| {
        CrashState::new(
            2,
            vec![2],
            Some(TornWrite {
                entry: 2,
                sectors_kept: kept.collect(),
                unit_sectors: unit,
            }),
        )
    };
    torn(0..4, PAGE_SECTORS).validate(&log).unwrap();
    torn(0..12, PAGE_SECTORS).validate(&log).unwrap();
    let err = torn(0..3, PAGE_SECTORS).validate(&log).unwrap_err().to_string();
    assert!(err.contains("not whole 8-sector units"), "{err}");
    assert!(torn(0..4, 3).validate(&log).is_err(), "a unit is 1 or 8 sectors");

    let explore = |tear_unit| {
        explore_states(
            &log,
            &ExploreOptions {
                tear_unit,
                ..ExploreOptions::default()
            },
        )
    };
    let (page, sector, both) = (
        explore(TearUnit::Page),
        explore(TearUnit::Sector),
        explore(TearUnit::Both),
    );
    for state in page.states.iter().chain(&both.states) {
        state.validate(&log).unwrap();
    }
    let page_tears: Vec<(u64, usize)> = page
        .states
        .iter()
        .filter_map(|s| s.torn.as_ref())
        .map(|t| (t.unit_sectors, t.sectors_kept.len()))
        .collect();
    assert_eq!(
        page_tears,
        [(PAGE_SECTORS, 4), (PAGE_SECTORS, 12)],
        "the 16-sector write at sector 4 tears at its two page boundaries, the 8-sector writes not at all"
    );
    // Sector tears keep 1, 4, 8 and 12 of the 16 sectors: the page tears'
    // contents are among them, so both units give the sector states, the
    // equal ones counted as duplicates.
    assert_eq!(both.coverage.states, sector.coverage.states);
    assert_eq!(both.coverage.duplicates, sector.coverage.duplicates + 2);

    let mut options = opts(5, 200, true);
    options.tear_unit = TearUnit::Both;
    let planned = plan_states(&log, &options);
    let units: std::collections::BTreeSet<u64> = planned
        .iter()
        .filter_map(|s| s.torn.as_ref())
        .map(|t| t.unit_sectors)
        .collect();
    assert_eq!(units, [1, PAGE_SECTORS].into_iter().collect(), "both units are drawn");
    for state in &planned {
        state.validate(&log).unwrap();
    }
    options.tear_unit = TearUnit::Page;
    for state in plan_states(&log, &options) {
        if let Some(t) = &state.torn {
            assert_eq!(t.unit_sectors, PAGE_SECTORS);
            state.validate(&log).unwrap();
            assert_eq!(t.entry, 2, "only the write that crosses a page boundary tears");
        }
    }
}

#[cfg(feature = "serde")]
#[test]
fn a_sector_tear_serialises_as_before_page_tears() {
    let sector = TornWrite::sectors(7, vec![0, 1]);
    let text = serde_json::to_string(&sector).unwrap();
    assert_eq!(text, r#"{"entry":7,"sectors_kept":[0,1]}"#);
    let back: TornWrite = serde_json::from_str(&text).unwrap();
    assert_eq!(back, sector);
    let page = TornWrite {
        unit_sectors: PAGE_SECTORS,
        ..sector
    };
    assert!(serde_json::to_string(&page).unwrap().contains(r#""unit_sectors":8"#));
}
