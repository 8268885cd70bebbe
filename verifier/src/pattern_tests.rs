//! The rules of each workload pattern, on crafted evidence: a `Run` plays
//! the workload (protocol lines and the bytes a crash left in each file).

use record::layout::{self, RecordHeader};
use record::{DurabilityMode, Event, Geometry, Pattern, ProtocolLog, WorkloadParams};

use super::*;

const RS: u32 = 4096;
const SEED: u64 = 0xfeed;

struct Run {
    params: WorkloadParams,
    geometry: Geometry,
    log: ProtocolLog,
    files: Vec<Vec<u8>>,
}

impl Run {
    fn new(pattern: Pattern, file_size_bytes: u64) -> Run {
        let params = WorkloadParams {
            mode: DurabilityMode::MsSync,
            record_size_bytes: RS,
            file_size_bytes,
            records: 1000,
            seed: SEED,
            planted_bug: None,
            hold_after_acks: None,
            hold_at_point: None,
            ack_area_offset_bytes: None,
            pattern,
            io_errors: false,
        };
        params.validate().unwrap();
        let geometry = params.geometry();
        let log = ProtocolLog {
            events: vec![Event::Ready {
                slots: geometry.total_slots(),
            }],
            truncated_tail: None,
        };
        let files = vec![vec![0; geometry.initial_size_bytes as usize]; geometry.files as usize];
        Run {
            params,
            geometry,
            log,
            files,
        }
    }

    fn begin(&mut self, seq: u64, slot: u64) {
        self.log.events.push(Event::Begin { seq, slot });
    }

    fn ack(&mut self, seq: u64, slot: u64) {
        self.log.events.push(Event::Ack { seq, slot });
    }

    fn msync(&mut self, file: u32, offset_bytes: u64, len_bytes: u64) {
        self.log.events.push(Event::Msync {
            file,
            offset_bytes,
            len_bytes,
            flags: "MS_SYNC".into(),
            errno: 0,
        });
    }

    fn persist(&mut self, seq: u64, slot: u64) {
        let (file, offset) = self.geometry.locate(slot, RS);
        let bytes = layout::encode_vec(&RecordHeader {
            record_size_bytes: RS,
            seq,
            slot,
            seed: SEED,
        });
        let data = &mut self.files[file as usize];
        let end = offset as usize + RS as usize;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(&bytes);
    }

    fn verify(&self, profile: Profile) -> Verdict {
        let evidence = Evidence {
            params: &self.params,
            protocol: &self.log,
            seen: crate::Seen::All,
            recovered: Recovered {
                recovery_failure: None,
                mount_rc: 0,
                files: self.files.iter().map(|f| FileFound::Read(f)).collect(),
                fsck: None,
            },
        };
        verify(&evidence, profile)
    }
}

fn rules(v: &Verdict) -> Vec<Rule> {
    v.violations.iter().map(|f| f.rule).collect()
}

#[test]
fn partial_msync_promises_only_the_synced_pages() {
    let mut r = Run::new(Pattern::PartialMsync, 1 << 20);
    // Dirty slots 3, 9 and 40; sync pages 8..10 (slot 9 only): ack 9.
    for (seq, slot) in [(0, 3), (1, 9), (2, 40)] {
        r.begin(seq, slot);
    }
    r.msync(0, 8 * 4096, 2 * 4096);
    r.ack(1, 9);
    r.persist(1, 9);
    // Unsynced records may be old or new: slot 3 old (zeros), 40 new.
    r.persist(2, 40);
    let v = r.verify(Profile::Linux);
    assert!(v.passed, "{:?}", v.violations);
    assert_eq!(v.slots[9], SlotState::Intact { seq: 1 });
    assert_eq!(v.slots[3], SlotState::InFlightOld { found_seq: None });
    assert_eq!(v.slots[40], SlotState::InFlightNew { seq: 2 });
}

#[test]
fn partial_msync_loss_names_the_call_that_promised_the_record() {
    let mut r = Run::new(Pattern::PartialMsync, 1 << 20);
    r.begin(0, 12);
    // One byte past a page: the kernel rounds the length up to two pages,
    // so the record in page 12 is promised by the rounded tail.
    r.msync(0, 11 * 4096, 4096 + 1);
    r.ack(0, 12);
    let v = r.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::AckedRecordLost]);
    let covered = v.violations[0].covered_by.as_deref().unwrap();
    assert_eq!(covered, "msync(file 0, offset 45056, len 4097, MS_SYNC) = 0");
    assert_eq!(v.last_msyncs, vec![covered.to_string()]);
}

#[test]
fn acks_in_any_order_and_overwritten_unsynced_records() {
    // A record overwritten before any sync is never acked; the next sync
    // acks the newest version only.
    let mut r = Run::new(Pattern::PartialMsync, 1 << 20);
    r.begin(0, 5);
    r.begin(1, 6);
    r.begin(2, 5); // overwrites seq 0 before a sync
    r.ack(1, 6);
    r.ack(2, 5);
    r.persist(1, 6);
    r.persist(0, 5); // the slot still shows the overwritten version: lost
    let v = r.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::AckedRecordLost]);
    assert_eq!(v.violations[0].expected_seq, Some(2));
    assert_eq!(v.violations[0].found_seq, Some(0));
}

#[test]
fn protocol_errors_of_the_general_history() {
    let mut r = Run::new(Pattern::PartialMsync, 1 << 20);
    r.begin(4, 1);
    r.begin(4, 2);
    assert!(r.verify(Profile::Linux).violations[0].reason.contains("BEGIN 4 twice"));
    let mut r = Run::new(Pattern::PartialMsync, 1 << 20);
    r.begin(0, 256); // one past the 256 slots of a 1 MiB file
    assert!(r.verify(Profile::Linux).violations[0]
        .reason
        .contains("past the 256 slots"));
    let mut r = Run::new(Pattern::PartialMsync, 1 << 20);
    r.begin(0, 1);
    r.ack(0, 2);
    assert!(r.verify(Profile::Linux).violations[0]
        .reason
        .contains("it was begun in 1"));
}

/// Wal transaction `t`: log record 2t in log slot t % log_slots, then data
/// record 2t+1 in `data_slot`.
fn wal_transaction(r: &mut Run, t: u64, data_slot: u64, persist_log: bool, persist_data: bool) {
    let log_slot = t % r.geometry.log_slots;
    r.begin(2 * t, log_slot);
    r.ack(2 * t, log_slot);
    r.begin(2 * t + 1, data_slot);
    r.ack(2 * t + 1, data_slot);
    if persist_log {
        r.persist(2 * t, log_slot);
    }
    if persist_data {
        r.persist(2 * t + 1, data_slot);
    }
}

#[test]
fn wal_data_pages_are_explained_by_their_log() {
    let mut r = Run::new(Pattern::Wal, 64 << 10); // 16 slots, 4 of log
    assert_eq!(r.geometry.log_slots, 4);
    wal_transaction(&mut r, 0, 10, true, true);
    wal_transaction(&mut r, 4, 11, true, true); // log slot 0 again: 8 replaces 0
    assert!(r.verify(Profile::Linux).passed);

    // The data page of transaction 5 reached the disk, its log did not:
    // both the lost log record and the order are reported.
    let mut r = Run::new(Pattern::Wal, 64 << 10);
    r.begin(10, 1);
    r.begin(11, 12);
    r.ack(11, 12); // data-before-log: the data was acked first
    r.persist(11, 12);
    let v = r.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::WalOrder], "{:?}", v.violations);
    assert!(
        v.violations[0].reason.contains("log slot 1"),
        "{}",
        v.violations[0].reason
    );
}

#[test]
fn a_log_slot_reused_by_a_later_transaction_may_hold_anything_its_rules_allow() {
    let mut r = Run::new(Pattern::Wal, 64 << 10); // 4 log slots
    wal_transaction(&mut r, 0, 10, true, true);
    // Transaction 4 reuses log slot 0; its log record is in flight and the
    // slot is found torn between records 0 and 8.
    r.begin(8, 0);
    let old = layout::encode_vec(&RecordHeader {
        record_size_bytes: RS,
        seq: 0,
        slot: 0,
        seed: SEED,
    });
    let new = layout::encode_vec(&RecordHeader {
        record_size_bytes: RS,
        seq: 8,
        slot: 0,
        seed: SEED,
    });
    r.files[0][..2048].copy_from_slice(&new[..2048]);
    r.files[0][2048..4096].copy_from_slice(&old[2048..]);
    let v = r.verify(Profile::Linux);
    assert!(v.passed, "{:?}", v.violations);
    assert_eq!(v.slots[0], SlotState::Torn);
}

#[test]
fn growth_size_follows_the_profile() {
    let mut r = Run::new(Pattern::Growth, 1 << 20);
    let step = r.geometry.growth_step_bytes;
    assert_eq!(r.files[0].len() as u64, step);
    r.log.events.push(Event::Grow {
        file: 0,
        size_bytes: 2 * step,
    });
    let slot = step / u64::from(RS); // the first slot past the old end
    r.begin(0, slot);
    r.ack(0, slot);
    // The record is on disk but the size did not follow.
    let v = r.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::SizeDurable], "{:?}", v.violations);
    assert!(v.violations[0].reason.contains("Linux's msync persists the size"));
    // POSIX promises only the data: the short file is no violation, the
    // record past its end an observation.
    let v = r.verify(Profile::Posix);
    assert!(v.passed, "{:?}", v.violations);
    assert_eq!(v.counts.lost, 1);
    // Grown as promised, the record is intact.
    r.persist(0, slot);
    assert!(r.verify(Profile::Linux).passed);
    // Larger than ever set is a violation under both.
    r.files[0].resize(3 * step as usize, 0);
    assert_eq!(rules(&r.verify(Profile::Posix)), vec![Rule::SizeNotGrown]);
}

#[test]
fn several_files_are_judged_each_with_their_own_slots() {
    let mut r = Run::new(Pattern::Several, 64 << 10); // 2 files of 16 slots
                                                      // Writer 0 in file 0, writer 1 in file 1.
    r.begin(0, 2);
    r.ack(0, 2);
    r.persist(0, 2);
    r.begin(1, 16 + 9);
    r.ack(1, 16 + 9);
    r.persist(1, 16 + 9);
    let v = r.verify(Profile::Linux);
    assert!(v.passed, "{:?}", v.violations);
    assert_eq!(v.slots.len(), 32);
    assert_eq!(v.slots[25], SlotState::Intact { seq: 1 });
    // The second file lost its record: the finding names the global slot.
    r.files[1].fill(0);
    let v = r.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::AckedRecordLost]);
    assert_eq!(v.violations[0].slot, Some(25));
    // A missing second file is its own finding.
    let evidence = Evidence {
        params: &r.params,
        protocol: &r.log,
        seen: crate::Seen::All,
        recovered: Recovered {
            recovery_failure: None,
            mount_rc: 0,
            files: vec![FileFound::Read(&r.files[0]), FileFound::Missing],
            fsck: None,
        },
    };
    let v = verify(&evidence, Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::FilePresent]);
    assert!(v.violations[0].reason.contains("crashlab-1.dat"));
}

#[test]
fn live_findings_come_from_the_workloads_own_checks() {
    let log = record::protocol::parse_log(
        "READY 16\nBEGIN 0 0\nINCOHERENT 0 512 map-after-pwrite\nSEEN 0 0\nSEENBAD 1 1 torn\n",
    )
    .unwrap();
    let found: Vec<Rule> = live_findings(&log).iter().map(|f| f.rule).collect();
    assert_eq!(found, vec![Rule::Coherent, Rule::ConsumerSeesCommitted]);
    // They are not the crash state's business: the same log verifies clean.
    let mut r = Run::new(Pattern::Invalidate, 64 << 10);
    r.log = log;
    assert!(r.verify(Profile::Linux).passed);
}

#[test]
fn a_record_acked_after_its_msync_failed_is_a_violation() {
    let mut r = Run::new(Pattern::Records, 64 << 10);
    r.begin(0, 0);
    r.log.events.push(Event::Msync {
        file: 0,
        offset_bytes: 0,
        len_bytes: 4096,
        flags: "MS_SYNC".into(),
        errno: 5,
    });
    r.ack(0, 0);
    r.persist(0, 0);
    let v = r.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::NoAckAfterFailedSync]);
    assert!(v.violations[0].covered_by.as_deref().unwrap().ends_with("= -1 errno 5"));
    // A retry that succeeded before the ack makes the ack honest.
    let mut r = Run::new(Pattern::Records, 64 << 10);
    r.begin(0, 0);
    r.log.events.push(Event::Msync {
        file: 0,
        offset_bytes: 0,
        len_bytes: 4096,
        flags: "MS_SYNC".into(),
        errno: 5,
    });
    r.msync(0, 0, 4096);
    r.ack(0, 0);
    r.persist(0, 0);
    assert!(r.verify(Profile::Linux).passed);
}
