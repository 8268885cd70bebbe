//! Crafted evidence for every rule. A `Scenario` plays the workload: it keeps
//! the protocol log and the file bytes the way a crash would leave them.

use record::layout::{self, RecordHeader, SECTOR_SIZE_BYTES};
use record::{DurabilityMode, Event, ProtocolLog, WorkloadParams};

use super::*;

const RS: usize = 1024;
const SLOTS: u64 = 4;
const SEED: u64 = 0xC0FFEE;

struct Scenario {
    params: WorkloadParams,
    log: ProtocolLog,
    file: Vec<u8>,
    fsck: Option<(String, i32)>,
    mount_rc: i32,
    file_present: bool,
}

impl Scenario {
    fn new(mode: DurabilityMode) -> Scenario {
        let params = WorkloadParams {
            mode,
            record_size_bytes: RS as u32,
            file_size_bytes: RS as u64 * SLOTS,
            records: 100,
            seed: SEED,
            planted_bug: None,
            hold_after_acks: None,
            hold_at_point: None,
            ack_area_offset_bytes: None,
            pattern: record::Pattern::Records,
            io_errors: false,
        };
        let log = ProtocolLog {
            events: vec![Event::Ready { slots: SLOTS }],
            truncated_tail: None,
        };
        let file = vec![0; RS * SLOTS as usize];
        Scenario {
            params,
            log,
            file,
            fsck: Some(("e2fsck".into(), 0)),
            mount_rc: 0,
            file_present: true,
        }
    }

    fn record(seq: u64) -> Vec<u8> {
        layout::encode_vec(&RecordHeader {
            record_size_bytes: RS as u32,
            seq,
            slot: seq % SLOTS,
            seed: SEED,
        })
    }

    fn begin(&mut self, seq: u64) {
        self.log.events.push(Event::Begin { seq, slot: seq % SLOTS });
    }

    fn ack(&mut self, seq: u64) {
        self.log.events.push(Event::Ack { seq, slot: seq % SLOTS });
    }

    /// The record reached the disk.
    fn persist(&mut self, seq: u64) {
        let at = (seq % SLOTS) as usize * RS;
        self.file[at..at + RS].copy_from_slice(&Self::record(seq));
    }

    /// begin + persist + ack: a record that was written, synced and acked.
    fn durable(&mut self, seq: u64) {
        self.begin(seq);
        self.persist(seq);
        self.ack(seq);
    }

    fn verify(&self, profile: Profile) -> Verdict {
        let evidence = Evidence {
            params: &self.params,
            protocol: &self.log,
            seen: crate::Seen::All,
            recovered: Recovered {
                recovery_failure: None,
                mount_rc: self.mount_rc,
                files: vec![match self.file_present {
                    true => FileFound::Read(&self.file[..]),
                    false => FileFound::Missing,
                }],
                fsck: self.fsck.clone(),
            },
        };
        verify(&evidence, profile)
    }
}

fn rules(v: &Verdict) -> Vec<Rule> {
    v.violations.iter().map(|f| f.rule).collect()
}

#[test]
fn intact_records_pass() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    for seq in 0..6 {
        s.durable(seq); // wraps: slots 0 and 1 hold seq 4 and 5
    }
    let v = s.verify(Profile::Linux);
    assert!(v.passed, "{:?}", v.violations);
    assert_eq!(v.counts.acked, 6);
    assert_eq!(v.counts.intact, 4);
    assert_eq!(v.slots[0], SlotState::Intact { seq: 4 });
    assert_eq!(v.slots[3], SlotState::Intact { seq: 3 });
}

#[test]
fn acked_but_lost_is_a_violation_naming_slot_and_seqs() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    for seq in 0..5 {
        s.durable(seq);
    }
    s.begin(5);
    s.ack(5); // acked, but the disk still holds seq 1 in slot 1
    let v = s.verify(Profile::Linux);
    assert!(!v.passed);
    assert_eq!(rules(&v), vec![Rule::AckedRecordLost]);
    let f = &v.violations[0];
    assert_eq!((f.slot, f.expected_seq, f.found_seq), (Some(1), Some(5), Some(1)));
    assert!(f.hex_excerpt.as_deref().unwrap().starts_with("@0x"), "{f:?}");
    assert_eq!(
        v.slots[1],
        SlotState::Lost {
            expected_seq: 5,
            found_seq: Some(1)
        }
    );
    assert_eq!(v.counts.lost, 1);
}

#[test]
fn acked_record_found_as_zeros_is_lost() {
    let mut s = Scenario::new(DurabilityMode::Batch(2));
    s.begin(0);
    s.begin(1);
    s.persist(0);
    s.ack(0);
    s.ack(1); // the batch was acked but seq 1 never reached the disk
    let v = s.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::AckedRecordLost]);
    assert_eq!(v.violations[0].found_seq, None);
}

#[test]
fn in_flight_may_be_old_or_new() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    for seq in 0..4 {
        s.durable(seq);
    }
    s.begin(4); // in flight, not persisted: slot 0 holds the old seq 0
    let v = s.verify(Profile::Linux);
    assert!(v.passed, "{:?}", v.violations);
    assert_eq!(v.slots[0], SlotState::InFlightOld { found_seq: Some(0) });
    assert_eq!(v.counts.in_flight, 1);

    s.persist(4); // now the new version made it
    let v = s.verify(Profile::Linux);
    assert!(v.passed);
    assert_eq!(v.slots[0], SlotState::InFlightNew { seq: 4 });
}

#[test]
fn torn_in_flight_is_counted_not_a_violation() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    for seq in 0..4 {
        s.durable(seq);
    }
    s.begin(4); // seq 4 in flight over acked seq 0
    let new = Scenario::record(4);
    s.file[..SECTOR_SIZE_BYTES].copy_from_slice(&new[..SECTOR_SIZE_BYTES]); // first sector new, second old
    let v = s.verify(Profile::Linux);
    assert!(v.passed, "{:?}", v.violations);
    assert_eq!(v.slots[0], SlotState::Torn);
    assert_eq!(v.counts.torn, 1);
}

#[test]
fn torn_acked_record_is_lost() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    for seq in 0..5 {
        s.durable(seq); // seq 4 acked over seq 0 in slot 0
    }
    let old = Scenario::record(0);
    s.file[SECTOR_SIZE_BYTES..RS].copy_from_slice(&old[SECTOR_SIZE_BYTES..]); // second sector still old
    let v = s.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::AckedRecordLost]);
    assert!(v.violations[0].reason.contains("torn"), "{}", v.violations[0].reason);
}

#[test]
fn in_flight_record_may_mix_old_and_new_bytes_within_a_sector() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    for seq in 0..4 {
        s.durable(seq);
    }
    s.begin(4); // seq 4 in flight over acked seq 0
    let new = Scenario::record(4);
    // Every other 16-byte run new: no sector is one whole version.
    for i in (0..RS).step_by(32) {
        s.file[i..i + 16].copy_from_slice(&new[i..i + 16]);
    }
    let v = s.verify(Profile::Linux);
    assert!(v.passed, "{:?}", v.violations);
    assert_eq!(v.slots[0], SlotState::Torn);
}

#[test]
fn byte_mixes_stay_violations_in_acked_and_unwritten_slots() {
    // Acked slot: seq 4 acked over seq 0; a few bytes of seq 0 inside a
    // sector of seq 4 mean the acked record was partly lost.
    let mut s = Scenario::new(DurabilityMode::MsSync);
    for seq in 0..5 {
        s.durable(seq);
    }
    let old = Scenario::record(0);
    let at = (0..RS).find(|&i| old[i] != Scenario::record(4)[i] && i > 600).unwrap();
    s.file[at] = old[at];
    let v = s.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::AckedRecordLost], "{:?}", v.violations);
    assert_eq!(
        v.slots[0],
        SlotState::Lost {
            expected_seq: 4,
            found_seq: None
        }
    );

    // Never-begun slot: zeros with a few bytes of a record of this run that
    // belongs elsewhere are stale.
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.durable(0);
    let other = Scenario::record(0);
    s.file[3 * RS + 600..3 * RS + 610].copy_from_slice(&other[600..610]);
    let v = s.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::StaleBytes], "{:?}", v.violations);
    assert_eq!(v.violations[0].slot, Some(3));

    // In-flight slot: a byte that neither version holds is stale.
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.durable(0);
    s.begin(1);
    let new = Scenario::record(1);
    s.file[RS..2 * RS].copy_from_slice(&new);
    s.file[RS + 700] = new[700] ^ 0xff;
    assert_eq!(rules(&s.verify(Profile::Linux)), vec![Rule::StaleBytes]);
}

#[test]
fn stale_bytes_are_a_violation() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.durable(0);
    s.begin(1);
    s.file[RS + 600] = 0xAB; // bytes nobody wrote, in an in-flight slot
    let v = s.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::StaleBytes]);
    assert_eq!(v.violations[0].slot, Some(1));
    assert!(
        v.violations[0].hex_excerpt.as_deref().unwrap().starts_with("@0x250:"),
        "{:?}",
        v.violations[0]
    );
}

#[test]
fn stale_bytes_are_a_violation_even_without_a_promise() {
    let mut s = Scenario::new(DurabilityMode::None);
    s.file[3 * RS + 5] = 1;
    let v = s.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::StaleBytes]);
}

#[test]
fn wrong_seed_is_a_foreign_record() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.durable(0);
    let foreign = layout::encode_vec(&RecordHeader {
        record_size_bytes: RS as u32,
        seq: 0,
        slot: 0,
        seed: SEED + 1,
    });
    s.file[..RS].copy_from_slice(&foreign);
    let v = s.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::ForeignRecord]);
    assert!(v.violations[0].reason.contains("seed"));
}

#[test]
fn record_in_the_wrong_slot_is_foreign() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.durable(0);
    s.durable(1);
    let zero = Scenario::record(0);
    s.file[RS..2 * RS].copy_from_slice(&zero);
    let v = s.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::ForeignRecord]);
    assert_eq!(v.violations[0].slot, Some(1));
}

#[test]
fn record_never_begun_is_foreign() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.durable(0);
    s.persist(4); // slot 0 holds a seq the workload never started
    let v = s.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::ForeignRecord]);
}

#[test]
fn short_file_breaks_the_size_rule_under_every_mode_and_profile() {
    // The file was sized and fsynced before READY: its size is durable
    // whatever the mode promises for records and whatever the profile.
    for mode in [DurabilityMode::MsSync, DurabilityMode::MsAsync, DurabilityMode::None] {
        let mut s = Scenario::new(mode);
        s.durable(0);
        s.file.truncate(3 * RS); // still covers the acked record
        for profile in [Profile::Linux, Profile::Posix] {
            let v = s.verify(profile);
            assert_eq!(rules(&v), vec![Rule::SizeDurable], "{mode} {profile:?}");
            assert!(v.violations[0].reason.contains("synced before READY"));
            assert_eq!(v.slots[3], SlotState::Missing);
        }
    }
}

#[test]
fn before_ready_the_size_is_not_promised() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.log.events.clear();
    s.file.truncate(0);
    assert!(s.verify(Profile::Linux).passed);
}

#[test]
fn grown_file_is_a_violation() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.durable(0);
    s.file.extend_from_slice(&[0; 512]);
    assert_eq!(rules(&s.verify(Profile::Linux)), vec![Rule::SizeNotGrown]);
}

#[test]
fn no_promise_means_losses_are_observations() {
    for mode in [DurabilityMode::MsAsync, DurabilityMode::None] {
        let mut s = Scenario::new(mode);
        s.durable(0);
        s.begin(1);
        s.ack(1); // acked under a no-promise mode, never persisted
        let v = s.verify(Profile::Linux);
        assert!(v.passed, "{mode}: {:?}", v.violations);
        assert_eq!(v.counts.lost, 1);
        assert_eq!(v.observation_count, 1);
        assert_eq!(v.observations[0].rule, Rule::AckedRecordLost);
    }
}

#[test]
fn missing_file_after_ready() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.durable(0);
    s.file_present = false;
    assert_eq!(rules(&s.verify(Profile::Linux)), vec![Rule::FilePresent]);
    // The file and its directory were fsynced before READY: POSIX promises
    // that too.
    assert_eq!(rules(&s.verify(Profile::Posix)), vec![Rule::FilePresent]);
    // Before READY the file may not exist yet.
    s.log.events.clear();
    assert!(s.verify(Profile::Linux).passed);
}

#[test]
fn unreadable_file_is_a_violation_of_that_state() {
    let s = Scenario::new(DurabilityMode::MsAsync);
    let evidence = Evidence {
        params: &s.params,
        protocol: &s.log,
        seen: crate::Seen::All,
        recovered: Recovered {
            recovery_failure: None,
            mount_rc: 0,
            files: vec![FileFound::Unreadable {
                size_bytes: Some(s.params.file_size_bytes),
                reason: "dd exit status 1".into(),
            }],
            fsck: None,
        },
    };
    let v = verify(&evidence, Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::FileReadable]);
    assert!(v.violations[0].reason.contains("dd exit status 1"));
    // One that grew is unreadable too, and breaks the size rule.
    let grown = Evidence {
        recovered: Recovered {
            files: vec![FileFound::Unreadable {
                size_bytes: Some(s.params.file_size_bytes * 3),
                reason: "larger than the export disk".into(),
            }],
            ..evidence.recovered.clone()
        },
        ..evidence
    };
    assert_eq!(
        rules(&verify(&grown, Profile::Linux)),
        vec![Rule::SizeNotGrown, Rule::FileReadable]
    );
}

#[test]
fn failed_recovery_is_the_only_finding() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.durable(0);
    let evidence = Evidence {
        params: &s.params,
        protocol: &s.log,
        seen: crate::Seen::All,
        recovered: Recovered {
            recovery_failure: Some("the guest kernel panicked while mounting".into()),
            mount_rc: 0,
            files: vec![FileFound::Missing],
            fsck: None,
        },
    };
    let v = verify(&evidence, Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::RecoveryCompletes]);
    assert!(v.violations[0].reason.contains("panicked"));
}

#[test]
fn mount_failure_and_fsck_errors() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.durable(0);
    s.fsck = Some(("e2fsck".into(), 4));
    assert_eq!(rules(&s.verify(Profile::Linux)), vec![Rule::FsckClean]);
    s.mount_rc = 32;
    assert_eq!(rules(&s.verify(Profile::Linux)), vec![Rule::Mountable]);
}

#[test]
fn broken_protocol_is_reported_not_judged() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.begin(0);
    s.ack(1);
    let v = s.verify(Profile::Linux);
    assert_eq!(rules(&v), vec![Rule::ProtocolConsistent]);
    assert!(v.violations[0].reason.contains("never begun"));
}

#[test]
fn findings_are_capped_but_counted() {
    let mut s = Scenario::new(DurabilityMode::MsSync);
    s.params.file_size_bytes = RS as u64 * 200;
    s.params.records = 1000;
    s.file = vec![0; RS * 200];
    s.log.events = vec![Event::Ready { slots: 200 }];
    for seq in 0..200 {
        s.log.events.push(Event::Begin { seq, slot: seq });
        s.log.events.push(Event::Ack { seq, slot: seq });
    }
    let v = s.verify(Profile::Linux);
    assert_eq!(v.violation_count, 200);
    assert_eq!(v.violations.len(), FINDINGS_MAX);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// What the crash did to the record in flight, if there was one.
    #[derive(Clone, Copy, Debug)]
    enum InFlight {
        None,
        /// Begun, nothing of it on disk: the slot holds its old version.
        Old,
        /// Begun and fully written before the crash, not acked.
        New,
        /// Some sectors new, the rest old.
        Mixed(u8),
    }

    fn in_flight() -> impl Strategy<Value = InFlight> {
        prop_oneof![
            Just(InFlight::None),
            Just(InFlight::Old),
            Just(InFlight::New),
            any::<u8>().prop_map(InFlight::Mixed),
        ]
    }

    fn mode() -> impl Strategy<Value = DurabilityMode> {
        prop_oneof![
            Just(DurabilityMode::MsSync),
            Just(DurabilityMode::MsAsyncFsync),
            Just(DurabilityMode::MsAsyncFdatasync),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// A disk holding exactly what was acked (each slot its newest
        /// acked record, or zeros) plus the record in flight as old, new or
        /// mixed at sector granularity is never a violation.
        #[test]
        fn acked_and_synced_records_alone_never_fail(
            acked in 0u64..40,
            flight in in_flight(),
            mode in mode(),
        ) {
            let mut s = Scenario::new(mode);
            for seq in 0..acked {
                s.durable(seq);
            }
            let seq = acked;
            match flight {
                InFlight::None => {}
                InFlight::Old => s.begin(seq),
                InFlight::New => {
                    s.begin(seq);
                    s.persist(seq);
                }
                InFlight::Mixed(bits) => {
                    s.begin(seq);
                    let at = (seq % SLOTS) as usize * RS;
                    let new = Scenario::record(seq);
                    for (i, sector) in new.chunks(SECTOR_SIZE_BYTES).enumerate() {
                        if bits >> (i % 8) & 1 == 1 {
                            let from = at + i * SECTOR_SIZE_BYTES;
                            s.file[from..from + sector.len()].copy_from_slice(sector);
                        }
                    }
                }
            }
            let v = s.verify(Profile::Linux);
            prop_assert!(v.passed, "{:?}: {:?}", flight, v.violations);
        }

        /// And the converse: an acked record whose slot shows anything older
        /// (zeros or the previous record) is always a violation.
        #[test]
        fn an_acked_record_rolled_back_always_fails(acked in 1u64..40, zeros: bool) {
            let mut s = Scenario::new(DurabilityMode::MsSync);
            for seq in 0..acked {
                s.durable(seq);
            }
            let last = acked - 1;
            let at = (last % SLOTS) as usize * RS;
            match (zeros, last.checked_sub(SLOTS)) {
                (false, Some(older)) => s.file[at..at + RS].copy_from_slice(&Scenario::record(older)),
                _ => s.file[at..at + RS].fill(0),
            }
            let v = s.verify(Profile::Linux);
            prop_assert!(!v.passed);
            prop_assert_eq!(v.violations[0].rule, Rule::AckedRecordLost);
        }
    }
}

/// Results name rules in kebab-case (`acked-record-lost`); readers of
/// results (the report) read them back as `Rule`s, not as strings.
#[test]
fn rules_read_back_from_their_results_spelling() {
    for rule in [
        Rule::AckedRecordLost,
        Rule::AckedItemLost,
        Rule::RecoveryCompletes,
        Rule::FilePresent,
    ] {
        let text = serde_json::to_value(rule).unwrap();
        assert_eq!(serde_json::from_value::<Rule>(text.clone()).unwrap(), rule, "{text}");
    }
    assert_eq!(
        serde_json::to_value(Rule::AckedRecordLost).unwrap(),
        "acked-record-lost"
    );
    assert!(serde_json::from_value::<Rule>("acked-record-found".into()).is_err());
}
