//! The judging point, ack placement and the protocol at a crash, on
//! hand-built logs: the argument of ARCHITECTURE.md, one step a test.

use super::*;
use blocklog::testing::LogWriter;
use blocklog::{CrashState, ParsedLog};
use record::layout::ack::{encode, AckRecord, READY_MARKER_INDEX};
use record::{Event, ProtocolLog};
use std::fs::File;

const SEED: u64 = 0x5eed;
/// 64 data sectors, then the ack area.
const AREA_SECTOR: u64 = 64;
const DEVICE_BYTES: u64 = 128 * 512;

fn ack_sector(ack_index: u64, seq: u64) -> Vec<u8> {
    encode(&AckRecord {
        ack_index,
        seq,
        slot: seq,
        seed: SEED,
    })
    .to_vec()
}

fn write_ready(w: &mut LogWriter) {
    w.write(AREA_SECTOR, &ack_sector(READY_MARKER_INDEX, 0));
}

fn write_ack(w: &mut LogWriter, ack_index: u64, seq: u64) {
    w.write(AREA_SECTOR + 1 + ack_index, &ack_sector(ack_index, seq));
}

/// What one MS_SYNC of record `seq` logs on ext4: data, flush, ack.
fn record(w: &mut LogWriter, seq: u64) {
    w.write_fill(seq, 1, 1 + seq as u8).flush();
    write_ack(w, seq, seq);
}

fn serial(lines: &str) -> ProtocolLog {
    record::protocol::parse_log(lines).unwrap()
}

fn promises_of(w: &LogWriter) -> (ParsedLog, LoggedPromises) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    std::fs::write(&path, w.bytes()).unwrap();
    let log = blocklog::read_log_file(&path, DEVICE_BYTES).unwrap();
    let promises = acks_in_log(&log, &File::open(&path).unwrap(), AREA_SECTOR * 512, DEVICE_BYTES, SEED).unwrap();
    (log, promises)
}

/// READY, then records 0..3 each synced and acked.
fn three_records() -> LogWriter {
    let mut w = LogWriter::new(512);
    w.write_fill(40, 2, 9).flush(); // file creation, fsynced
    write_ready(&mut w);
    for seq in 0..3 {
        record(&mut w, seq);
    }
    w
}

const THREE_SERIAL: &str =
    "BOOTED workload\nREADY 8\nBEGIN 0 0\nACK 0 0\nBEGIN 1 1\nACK 1 1\nBEGIN 2 2\nACK 2 2\nDONE 3\n";

#[test]
fn acks_are_found_in_log_order() {
    let (log, promises) = promises_of(&three_records());
    // Entries: W F READY | W0 F ACK0 | W1 F ACK1 | W2 F ACK2.
    assert_eq!(log.entries.len(), 12);
    assert_eq!(promises.ready_entry, Some(2));
    let found: Vec<(u64, u64)> = promises.acks.iter().map(|a| (a.entry_index, a.seq)).collect();
    assert_eq!(found, vec![(5, 0), (8, 1), (11, 2)]);
}

#[test]
fn ack_area_rejects_foreign_or_out_of_order_records() {
    let read = |w: &LogWriter| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, w.bytes()).unwrap();
        let log = blocklog::read_log_file(&path, DEVICE_BYTES).unwrap();
        acks_in_log(&log, &File::open(&path).unwrap(), AREA_SECTOR * 512, DEVICE_BYTES, SEED)
    };
    // Acks of several writers arrive in any order of seq.
    let mut w = LogWriter::new(512);
    write_ready(&mut w);
    write_ack(&mut w, 1, 1);
    write_ack(&mut w, 0, 0);
    let promises = read(&w).unwrap();
    assert_eq!(promises.acks.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![1, 0]);
    // An ack in another record's sector.
    let mut w = LogWriter::new(512);
    write_ready(&mut w);
    w.write(AREA_SECTOR + 1, &ack_sector(1, 1));
    let err = read(&w).unwrap_err();
    assert!(err.to_string().contains("is not one of this run's"), "{err}");
    // The same ack twice, or an ack before the ready marker.
    let mut w = LogWriter::new(512);
    write_ready(&mut w);
    write_ack(&mut w, 0, 0);
    write_ack(&mut w, 0, 0);
    assert!(read(&w).unwrap_err().to_string().contains("a second time"));
    let mut w = LogWriter::new(512);
    write_ack(&mut w, 0, 0);
    assert!(read(&w).unwrap_err().to_string().contains("before the ready marker"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    // A write straddling the area's start: the filesystem wrote past its end.
    let mut w = LogWriter::new(512);
    w.write_fill(AREA_SECTOR - 1, 2, 1);
    std::fs::write(&path, w.bytes()).unwrap();
    let log = blocklog::read_log_file(&path, DEVICE_BYTES).unwrap();
    let err = acks_in_log(&log, &File::open(&path).unwrap(), AREA_SECTOR * 512, DEVICE_BYTES, SEED).unwrap_err();
    assert!(err.to_string().contains("straddles"), "{err}");
}

#[test]
fn the_protocol_at_a_crash_ends_before_the_first_act_not_yet_logged() {
    let (_, promises) = promises_of(&three_records());
    let serial = serial(THREE_SERIAL);
    let lines = |position| {
        protocol_at(&serial, &promises, position, 1)
            .events
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    // Before the ready marker: nothing was promised, nothing begun.
    assert_eq!(lines(2), "BOOTED workload");
    // Marker logged, no ack yet: record 0 is in flight.
    assert_eq!(lines(5), "BOOTED workload,READY 8,BEGIN 0 0");
    // Ack 0 logged: record 1 may have begun, not more.
    assert_eq!(lines(6), "BOOTED workload,READY 8,BEGIN 0 0,ACK 0 0,BEGIN 1 1");
    // Everything logged: the whole run, DONE included.
    assert_eq!(lines(12), THREE_SERIAL.trim_end().replace('\n', ","));
}

#[test]
fn prefix_states_are_judged_with_the_acks_of_their_epoch() {
    let w = three_records();
    let (log, promises) = promises_of(&w);
    // The prefix up to record 1's flush (entries 0..8) is judged just
    // before the next flush (entry 10) completes: ack 1 (entry 8) had
    // been given, and the data it vouches for (entry 6) is in the prefix.
    let state = CrashState::prefix(8);
    assert_eq!(blocklog::crash_position(&log, &state), 10);
    assert_eq!(earliest_crash_position(&state), 8);
    let given = |position| {
        protocol_at(&serial(THREE_SERIAL), &promises, position, 1)
            .events
            .iter()
            .filter(|e| matches!(e, Event::Ack { .. }))
            .count()
    };
    assert_eq!(given(10), 2, "judged at the latest point: acks 0 and 1");
    assert_eq!(given(8), 1, "the earliest point misses ack 1");
}

#[test]
fn a_hole_left_by_the_kill_ends_the_usable_log_without_failing_the_capture() {
    let mut bytes = three_records().bytes().to_vec();
    // A request whose entry was never written (zeros), then one that was.
    bytes.extend_from_slice(&[0u8; 1024]);
    let mut tail = LogWriter::new(512);
    write_ack(&mut tail, 3, 3);
    bytes.extend_from_slice(&tail.bytes()[512..]);
    let dir = tempfile::tempdir().unwrap();
    let (log_path, protocol_path, base) = (
        dir.path().join("log"),
        dir.path().join("proto"),
        dir.path().join("base"),
    );
    std::fs::write(&log_path, &bytes).unwrap();
    std::fs::write(
        &protocol_path,
        format!("{THREE_SERIAL}BEGIN 3 3\nACK 3 3\n").replace("DONE 3\n", ""),
    )
    .unwrap();
    File::create(&base).unwrap().set_len(DEVICE_BYTES).unwrap();
    let params = test_params();
    let source = CaptureSource {
        log_path: &log_path,
        protocol_path: &protocol_path,
        base_disk: &base,
        ack_area_offset_bytes: AREA_SECTOR * 512,
        params: &params,
        device_bug: None,
    };
    let capture = read_capture(&source).unwrap();
    assert!(capture.log.stray_data_offset_bytes.is_some());
    assert_eq!(capture.promises.acks.len(), 3);
    assert_eq!(
        capture.acks_past_log_end, 1,
        "ACK 3 lies past the hole: counted, not judged"
    );

    // Without the hole, a missing ack is an incomplete capture.
    std::fs::write(&log_path, three_records().bytes()).unwrap();
    let err = read_capture(&source).err().unwrap();
    assert!(
        err.to_string()
            .contains("ACK 3 reached the channel but not the block log"),
        "{err}"
    );
}

#[test]
fn a_ready_line_without_its_marker_is_an_incomplete_capture() {
    let mut w = LogWriter::new(512);
    w.write_fill(40, 2, 9).flush(); // no ready marker
    let (_, promises) = promises_of(&w);
    let err = check_acks_match(&serial("BOOTED workload\nREADY 8\n"), &promises, false).unwrap_err();
    assert!(err.to_string().contains("READY reached the channel"), "{err}");
    // A log that ends early may have lost it: judged up to its end.
    assert_eq!(check_acks_match(&serial("READY 8\n"), &promises, true).unwrap(), 0);
}

#[test]
fn a_dropped_flush_is_judged_with_the_acks_it_let_through() {
    // With every flush of the log dropped (a device that ignores them),
    // the prefix before record 0 is judged at the log's end: all three
    // acks given, none of the records' data in it.
    let (log, _) = promises_of(&three_records());
    let (bad, effect) = blocklog::apply_device_bug(&log, "drop-flush:1".parse().unwrap(), &(AREA_SECTOR..128), 1);
    assert_eq!(effect.flushes_dropped, 4);
    let state = CrashState::prefix(0);
    assert_eq!(blocklog::crash_position(&bad, &state), bad.entries.len() as u64);
}

// ---------------------------------------------------------------
// The sensitivity catalogue on hand-built logs: a "filesystem" that
// keeps the data file in sectors 0.. of the disk, so a state's first
// bytes are the file. Each planted bug's log pattern, planned, judged
// at each state's crash point, must fail some state; the correct
// pattern must fail none.

const RECORD_BYTES: usize = 512;
const RECORDS: u64 = 12;

fn record_bytes(seq: u64) -> Vec<u8> {
    record::layout::encode_vec(&record::RecordHeader {
        record_size_bytes: RECORD_BYTES as u32,
        seq,
        slot: seq,
        seed: SEED,
    })
}

/// How a planted workload bug changes one record's log pattern.
#[derive(Clone, Copy, PartialEq)]
enum Pattern {
    Correct,
    AckBeforeSync,
    /// No data write and no flush for odd records (skip-sync,
    /// async-instead-of-sync: MS_ASYNC writes nothing back).
    SkipOdd,
    /// The sync writes the record before's sector, not this one.
    WrongRange,
}

/// The parameters of the crafted runs (12 records of 512 bytes).
fn test_params() -> record::WorkloadParams {
    record::WorkloadParams {
        mode: record::DurabilityMode::MsSync,
        record_size_bytes: RECORD_BYTES as u32,
        file_size_bytes: RECORD_BYTES as u64 * RECORDS,
        records: RECORDS,
        seed: SEED,
        planted_bug: None,
        hold_after_acks: None,
        hold_at_point: None,
        ack_area_offset_bytes: Some(AREA_SECTOR * 512),
        pattern: record::Pattern::Records,
        io_errors: false,
    }
}

fn workload_log(pattern: Pattern) -> (LogWriter, String) {
    let mut w = LogWriter::new(512);
    w.flush();
    write_ready(&mut w);
    let mut serial = format!("BOOTED workload\nREADY {RECORDS}\n");
    for seq in 0..RECORDS {
        serial += &format!("BEGIN {seq} {seq}\n");
        match pattern {
            Pattern::Correct => {
                w.write(seq, &record_bytes(seq)).flush();
                write_ack(&mut w, seq, seq);
            }
            Pattern::AckBeforeSync => {
                write_ack(&mut w, seq, seq);
                w.write(seq, &record_bytes(seq)).flush();
            }
            Pattern::SkipOdd if seq % 2 == 1 => write_ack(&mut w, seq, seq),
            Pattern::SkipOdd => {
                w.write(seq, &record_bytes(seq)).flush();
                write_ack(&mut w, seq, seq);
            }
            Pattern::WrongRange => {
                if seq > 0 {
                    w.write(seq - 1, &record_bytes(seq - 1));
                }
                w.flush();
                write_ack(&mut w, seq, seq);
            }
        }
        serial += &format!("ACK {seq} {seq}\n");
    }
    (w, serial + &format!("DONE {RECORDS}\n"))
}

/// Plans every state of the log (after the device bug, if any), judges
/// each on its file bytes at its crash point; returns (failed, total).
fn judge_all(w: &LogWriter, serial_text: &str, device_bug: Option<&str>) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let (log_path, protocol_path, base) = (
        dir.path().join("log"),
        dir.path().join("proto"),
        dir.path().join("base"),
    );
    std::fs::write(&log_path, w.bytes()).unwrap();
    std::fs::write(&protocol_path, serial_text).unwrap();
    File::create(&base).unwrap().set_len(DEVICE_BYTES).unwrap();
    let params = test_params();
    let capture = read_capture(&CaptureSource {
        log_path: &log_path,
        protocol_path: &protocol_path,
        base_disk: &base,
        ack_area_offset_bytes: AREA_SECTOR * 512,
        params: &params,
        device_bug: device_bug.map(|b| b.parse().unwrap()),
    })
    .unwrap();
    let options = blocklog::PlanOptions {
        seed: 3,
        budget: 400,
        torn: false,
        tear_unit: blocklog::TearUnit::Sector,
        ignored_sectors: ack_area_sectors(AREA_SECTOR * 512, DEVICE_BYTES),
    };
    let states = blocklog::plan_states(&capture.log, &options);
    let failed = states
        .iter()
        .filter(|state| {
            let mut image = vec![0u8; DEVICE_BYTES as usize];
            blocklog::apply_state(w.bytes(), &capture.log, state, &mut image).unwrap();
            let position = blocklog::crash_position(&capture.log, state);
            let file = &image[..params.file_size_bytes as usize];
            let judge = |protocol: &record::ProtocolLog, seen| {
                let evidence = verifier::Evidence {
                    params: &params,
                    protocol,
                    seen,
                    recovered: verifier::Recovered {
                        recovery_failure: None,
                        mount_rc: 0,
                        files: vec![verifier::FileFound::Read(file)],
                        fsck: None,
                    },
                };
                verifier::verify(&evidence, verifier::Profile::Linux)
            };
            // Judged as campaigns judge it, through the cut of the run's
            // timeline, and by the events seen at the crash, rebuilt.
            let cut = capture.cuts.cut_at(position);
            let timeline = capture.timeline.as_ref().expect("a well-formed protocol");
            let verdict = judge(&capture.serial, verifier::Seen::Cut(timeline, &cut));
            let rebuilt = judge(
                &protocol_at(&capture.serial, &capture.promises, position, 1),
                verifier::Seen::All,
            );
            assert_eq!(
                serde_json::to_value(&verdict).unwrap(),
                serde_json::to_value(&rebuilt).unwrap(),
                "{state:?}"
            );
            if !verdict.passed {
                assert_eq!(verdict.violations[0].rule, verifier::Rule::AckedRecordLost, "{state:?}");
            }
            !verdict.passed
        })
        .count();
    (failed, states.len())
}

#[test]
fn the_correct_pattern_fails_no_state() {
    let (w, serial) = workload_log(Pattern::Correct);
    let (failed, total) = judge_all(&w, &serial, None);
    assert!(total > RECORDS as usize, "{total}");
    assert_eq!(failed, 0);
}

#[test]
fn each_planted_workload_bug_fails_some_state() {
    for pattern in [Pattern::AckBeforeSync, Pattern::SkipOdd, Pattern::WrongRange] {
        let (w, serial) = workload_log(pattern);
        let (failed, total) = judge_all(&w, &serial, None);
        assert!(failed > 0, "caught in {failed} of {total} states");
    }
}

#[test]
fn each_planted_device_bug_fails_some_state() {
    let (w, serial) = workload_log(Pattern::Correct);
    for bug in ["drop-flush:2", "reorder-across-flush:2"] {
        let (failed, total) = judge_all(&w, &serial, Some(bug));
        assert!(failed > 0, "{bug}: caught in {failed} of {total} states");
    }
}

#[test]
fn a_device_without_flushes_loses_acked_records_in_most_states() {
    // barrier=0 as the log shows it: no flush at all.
    let (w, serial) = workload_log(Pattern::Correct);
    let (failed, total) = judge_all(&w, &serial, Some("drop-flush:1"));
    assert!(failed * 2 > total, "caught in {failed} of {total} states");
}

/// The f2fs first-fsync race as it logs: record 1's second write lands
/// after the flush and before its ack. It is counted, with the entry.
#[test]
fn an_ack_after_an_unflushed_write_is_counted_and_named() {
    let mut w = three_records();
    let clean = promises_of(&w);
    assert!(super::report::acks_after_unflushed_writes(&clean.0, &clean.1).is_empty());
    // Record 3: data, flush, node write, ack (no flush between).
    w.write_fill(3, 1, 4).flush();
    w.write_fill(60, 1, 5);
    write_ack(&mut w, 3, 3);
    let (log, promises) = promises_of(&w);
    let found = super::report::acks_after_unflushed_writes(&log, &promises);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].seq, 3);
    assert_eq!(found[0].unflushed_entries, vec![log.entries.len() as u64 - 2]);
}
