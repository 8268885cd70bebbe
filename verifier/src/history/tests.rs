//! A cut of the whole run's timeline answers every question as the history
//! rebuilt from the events the cut keeps does, and the cut keeps exactly
//! the events the scan that defines it keeps.

use std::collections::BTreeSet;

use proptest::prelude::*;
use record::{Event, Geometry, ProtocolLog};

use super::{Cut, Timeline};

const SLOTS_PER_WRITER: u64 = 3;

fn geometry(writers: u32) -> Geometry {
    Geometry {
        files: 1,
        slots_per_file: SLOTS_PER_WRITER * u64::from(writers),
        writers,
        log_slots: 0,
        initial_size_bytes: 4096,
        growth_step_bytes: 0,
    }
}

/// A run of `writers` writer processes, `records[w]` records each, their
/// lines interleaved by `order` (a writer's next line, chosen in turn), one
/// msync per record (every fifth failing) and a GROW now and then.
fn run_log(writers: u32, records: &[u64], order: &[u8], slot_picks: &[u8]) -> ProtocolLog {
    let w = u64::from(writers);
    let slots = SLOTS_PER_WRITER * w;
    let mut lines = vec!["BOOTED workload".to_string(), format!("READY {slots}")];
    // Per writer: its lines in program order.
    let mut programs: Vec<Vec<String>> = (0..writers as u64)
        .map(|writer| {
            let mut out = Vec::new();
            for k in 0..records[writer as usize] {
                let seq = writer + k * w;
                let pick = u64::from(slot_picks[(seq as usize) % slot_picks.len()]);
                let slot = writer + (pick % SLOTS_PER_WRITER) * w;
                out.push(format!("BEGIN {seq} {slot}"));
                let errno = if seq % 5 == 4 { 5 } else { 0 };
                out.push(format!("MSYNC 0 {} 4096 MS_SYNC {errno}", slot * 4096));
                if seq % 7 == 3 {
                    out.push(format!("GROW 0 {}", 8192 + seq * 4096));
                }
                out.push(format!("ACK {seq} {slot}"));
            }
            out
        })
        .collect();
    let mut next = vec![0usize; writers as usize];
    let mut turn = 0;
    while programs.iter().zip(&next).any(|(p, &n)| n < p.len()) {
        let mut writer = order[turn % order.len()] as usize % writers as usize;
        turn += 1;
        while next[writer] == programs[writer].len() {
            writer = (writer + 1) % writers as usize;
        }
        lines.push(std::mem::take(&mut programs[writer][next[writer]]));
        next[writer] += 1;
    }
    lines.push(format!("DONE {}", records.iter().sum::<u64>()));
    record::protocol::parse_log(&(lines.join("\n") + "\n")).expect("a well-formed log")
}

/// The scan that defines a cut: events in order, nothing from READY on
/// when it was not given, each writer cut at its first ACK not given.
fn scanned_mask(log: &ProtocolLog, writers: u32, ready_given: bool, given: &BTreeSet<u64>) -> Vec<bool> {
    let writer_of = |seq: u64| (seq % u64::from(writers)) as usize;
    let mut cut = vec![false; writers as usize];
    let mut kept = vec![false; log.events.len()];
    for (i, event) in log.events.iter().enumerate() {
        kept[i] = match event {
            Event::Ready { .. } if !ready_given => break,
            Event::Begin { seq, .. } => !cut[writer_of(*seq)],
            Event::Ack { seq, .. } => {
                let w = writer_of(*seq);
                if !cut[w] && !given.contains(seq) {
                    cut[w] = true;
                }
                !cut[w]
            }
            Event::Done { .. } => !cut.iter().any(|&c| c),
            _ => !cut.iter().all(|&c| c),
        };
    }
    kept
}

fn cut_of(log: &ProtocolLog, writers: u32, ready_given: bool, given: &BTreeSet<u64>) -> Cut {
    let mut first = vec![None; writers as usize];
    for (i, event) in log.events.iter().enumerate() {
        if let Event::Ack { seq, .. } = event {
            let w = (seq % u64::from(writers)) as usize;
            if first[w].is_none() && !given.contains(seq) {
                first[w] = Some(i);
            }
        }
    }
    Cut {
        ready_given,
        first_ack_not_given: first,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn a_cut_of_the_timeline_is_the_history_of_the_events_it_keeps(
        writers in 1u32..=3,
        records in proptest::collection::vec(0u64..7, 3),
        order in proptest::collection::vec(any::<u8>(), 1..40),
        slot_picks in proptest::collection::vec(any::<u8>(), 1..8),
        ready_given in any::<bool>(),
        given_bits in any::<u32>(),
    ) {
        let log = run_log(writers, &records[..writers as usize], &order, &slot_picks);
        let given: BTreeSet<u64> = (0..32).filter(|s| given_bits >> s & 1 == 1).collect();
        let cut = cut_of(&log, writers, ready_given, &given);
        let mask = cut.mask(&log);
        prop_assert_eq!(&mask, &scanned_mask(&log, writers, ready_given, &given));

        let g = geometry(writers);
        let records_max = 64;
        let whole = Timeline::build(&log, None, &g, records_max).unwrap();
        let at_cut = whole.at(&cut);
        let rebuilt_timeline = Timeline::build(&log, Some(&mask), &g, records_max).unwrap();
        let rebuilt = rebuilt_timeline.at(&Cut::everything(writers));
        prop_assert_eq!(at_cut.ready, rebuilt.ready);
        prop_assert_eq!(at_cut.begun, rebuilt.begun);
        prop_assert_eq!(at_cut.ack_count, rebuilt.ack_count);
        prop_assert_eq!(at_cut.grown, rebuilt.grown);
        prop_assert_eq!(at_cut.msyncs, rebuilt.msyncs);
        prop_assert_eq!(at_cut.acked_records().collect::<Vec<_>>(), rebuilt.acked_records().collect::<Vec<_>>());
        for slot in 0..g.total_slots() + 1 {
            prop_assert_eq!(at_cut.versions_in(slot), rebuilt.versions_in(slot));
        }
        for seq in 0..records_max + 1 {
            prop_assert_eq!(at_cut.is_acked(seq), rebuilt.is_acked(seq));
            prop_assert_eq!(at_cut.slot_of(seq), rebuilt.slot_of(seq));
            prop_assert_eq!(at_cut.ack_event_of(seq), rebuilt.ack_event_of(seq));
            prop_assert_eq!(
                at_cut.covering_msync(seq, 0, 0, 4096 * 9),
                rebuilt.covering_msync(seq, 0, 0, 4096 * 9)
            );
        }
    }
}

#[test]
fn a_slot_shared_by_two_writers_breaks_the_protocol() {
    let log = record::protocol::parse_log("READY 6\nBEGIN 0 0\nBEGIN 1 0\n").unwrap();
    let err = Timeline::build(&log, None, &geometry(2), 10).unwrap_err();
    assert!(
        err.contains("BEGIN 1 of writer 1 in slot 0, where writer 0 began record 0"),
        "{err}"
    );
}
