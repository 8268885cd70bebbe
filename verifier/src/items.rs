//! The verdict on a program crashlab did not write (docs/workload-protocol.md):
//! the items it began and acknowledged, against the items its checker found
//! after recovery. The rules are the record workload's, with an item in
//! place of a slot's newest record:
//! - [`Rule::AckedItemLost`]: every item acknowledged by the crash is found,
//!   with the digest it was begun with; an item with a key (protocol 1.1)
//!   is replaced by the later items of its key, so only the newest acked
//!   item of each key is promised, and a later item of the key found in
//!   its place keeps that promise (as a slot's newer record does);
//! - an item in flight (begun, not acknowledged) may be found or not:
//!   counted, not judged;
//! - [`Rule::ItemCorrupt`]: an item found with another digest than its own
//!   (neither the old state nor the new);
//! - [`Rule::ForeignItem`]: an item found that was never begun by the crash;
//! - [`Rule::CheckerFoundCorruption`]: damage the checker reported;
//! - [`Rule::ItemStoreReadable`]: the checker examined the recovered data
//!   (exit 0, a complete report) once the program had said `READY`;
//! - recovery, mount and fsck as for every workload.

use std::collections::HashMap;

use record::items::{CheckerReport, Digest};
use record::{Event, ProtocolLog};

use crate::{finding, Finding, Rule, Verdict};

/// What a check of one crash state found, for a program under test.
pub struct ItemEvidence<'a> {
    pub protocol: &'a ProtocolLog,
    /// The events seen at the crash (a mask: see `Seen`).
    pub kept_events: Option<&'a [bool]>,
    /// Items the run may begin, at most (the protocol is refused past it).
    pub items_max: u64,
    pub recovery_failure: Option<String>,
    pub mount_rc: i32,
    pub fsck: Option<(String, i32)>,
    /// The checker's report; `None` when it did not run (no mount).
    pub checker: Option<&'a CheckerReport>,
}

/// One item the program began.
struct Begun<'a> {
    id: u64,
    digest: &'a Digest,
    key: Option<u64>,
    acked: bool,
}

/// The items as of the crash: in `seq` order.
struct ItemHistory<'a> {
    ready: bool,
    items: Vec<Begun<'a>>,
}

fn rebuild<'a>(protocol: &'a ProtocolLog, kept: Option<&[bool]>, items_max: u64) -> Result<ItemHistory<'a>, String> {
    if let Some(kept) = kept {
        assert_eq!(kept.len(), protocol.events.len(), "one mask bit per event");
    }
    let mut h = ItemHistory {
        ready: false,
        items: Vec::new(),
    };
    let mut seq_of_id: HashMap<u64, u64> = HashMap::new();
    let events = protocol
        .events
        .iter()
        .enumerate()
        .filter(|(i, _)| kept.is_none_or(|k| k[*i]))
        .map(|(_, e)| e);
    for event in events {
        match event {
            Event::Ready { .. } => h.ready = true,
            Event::Item { seq, id, digest, key } => {
                if !h.ready {
                    return Err(format!("item {id} begun before READY"));
                }
                if *seq != h.items.len() as u64 {
                    return Err(format!("ITEM {seq} out of order (expected {})", h.items.len()));
                }
                if *seq >= items_max {
                    return Err(format!("item {id} is past the run's {items_max} items"));
                }
                if seq_of_id.insert(*id, *seq).is_some() {
                    return Err(format!("item {id} begun twice"));
                }
                h.items.push(Begun {
                    id: *id,
                    digest,
                    key: *key,
                    acked: false,
                });
            }
            Event::Ack { seq, slot } => {
                let Some(item) = h.items.get_mut(*seq as usize).filter(|_| seq == slot) else {
                    return Err(format!("ACK {seq} {slot} for an item never begun"));
                };
                if std::mem::replace(&mut item.acked, true) {
                    return Err(format!("item {} acknowledged twice", item.id));
                }
            }
            Event::Booted { .. }
            | Event::Hold { .. }
            | Event::Error { .. }
            | Event::Done { .. }
            | Event::Note { .. }
            | Event::Point { .. } => {}
            other => return Err(format!("unexpected line in a program's log: {other}")),
        }
    }
    Ok(h)
}

fn item_finding(rule: Rule, id: u64, reason: String) -> Finding {
    Finding {
        item: Some(id),
        ..finding(rule, reason)
    }
}

pub fn verify_items(evidence: &ItemEvidence) -> Verdict {
    let mut verdict = Verdict::new();
    let history = match rebuild(evidence.protocol, evidence.kept_events, evidence.items_max) {
        Ok(h) => h,
        Err(reason) => {
            verdict.violation(finding(Rule::ProtocolConsistent, reason));
            return verdict;
        }
    };
    let acked = history.items.iter().filter(|i| i.acked).count() as u64;
    verdict.counts.begun = history.items.len() as u64;
    verdict.counts.acked = acked;
    verdict.counts.in_flight = verdict.counts.begun - acked;
    if !crate::judge_recovery(
        &mut verdict,
        &evidence.recovery_failure,
        evidence.mount_rc,
        &evidence.fsck,
    ) {
        return verdict;
    }
    let Some(report) = evidence.checker else {
        if history.ready {
            verdict.violation(finding(
                Rule::ItemStoreReadable,
                "the program's checker did not run on the recovered filesystem".into(),
            ));
        }
        return verdict;
    };
    if judge_report(&mut verdict, &history, report) {
        judge_found_items(&mut verdict, &history, report);
    }
    verdict
}

/// The checker's report as a whole: well-formed, complete (exit 0, its
/// END counting its items), and what damage it found. False when the
/// items cannot be judged.
fn judge_report(verdict: &mut Verdict, history: &ItemHistory, report: &CheckerReport) -> bool {
    if let Some((line, why)) = &report.bad_line {
        verdict.violation(finding(
            Rule::ProtocolConsistent,
            format!("the checker's report breaks the protocol ({why}): {line:?}"),
        ));
        return false;
    }
    let complete = report.exit_code == 0 && report.end_items == Some(report.items.len() as u64);
    if !complete {
        let why = match (report.exit_code, report.end_items) {
            (0, None) => "its report has no END line".to_string(),
            (0, Some(n)) => format!("its END line counts {n} items, it reported {}", report.items.len()),
            (rc, _) => format!("it exited with status {rc}"),
        };
        // A checker killed by a signal crashed, or hung and was killed at
        // its time limit: no state excuses that, not even a half-made store.
        let crashed_or_hung = report.exit_code >= 128;
        let f = finding(
            Rule::ItemStoreReadable,
            format!(
                "the checker could not examine the recovered data: {why}{}",
                match (crashed_or_hung, history.ready) {
                    (true, false) =>
                        " (a signal: it crashed or hung on a state from before READY, where a store \
                                      may be absent or half made; its library must say so, not crash)",
                    _ => "",
                }
            ),
        );
        // Before READY the program promised nothing, not even a store.
        match history.ready || crashed_or_hung {
            true => verdict.violation(f),
            false => verdict.observation(f),
        }
        return false;
    }
    for what in &report.corrupt {
        verdict.violation(finding(
            Rule::CheckerFoundCorruption,
            format!("the checker found damage: {what}"),
        ));
    }
    true
}

/// The items the checker found, by id. An item found twice with two
/// digests is corrupt (the later digest is kept).
fn found_items<'r>(verdict: &mut Verdict, report: &'r CheckerReport) -> HashMap<u64, &'r Digest> {
    let mut found: HashMap<u64, &Digest> = HashMap::with_capacity(report.items.len());
    for (id, digest) in &report.items {
        if let Some(other) = found.insert(*id, digest) {
            if other != digest {
                verdict.violation(item_finding(
                    Rule::ItemCorrupt,
                    *id,
                    format!("item {id} found twice, with digests {other} and {digest}"),
                ));
            }
        }
    }
    found
}

/// Each item begun against what the checker found: acked and there,
/// in flight either way, corrupt, lost, replaced by a newer item of its
/// key, or found but never begun.
fn judge_found_items(verdict: &mut Verdict, history: &ItemHistory, report: &CheckerReport) {
    let mut found = found_items(verdict, report);
    // Per key: the newest acked item (the promise) and the newest item
    // found (in seq order: items are indexed by seq).
    let mut newest_acked: HashMap<u64, usize> = HashMap::new();
    let mut newest_found: HashMap<u64, usize> = HashMap::new();
    for (seq, item) in history.items.iter().enumerate() {
        if let Some(key) = item.key {
            if item.acked {
                newest_acked.insert(key, seq);
            }
            if found.contains_key(&item.id) {
                newest_found.insert(key, seq);
            }
        }
    }
    for (seq, item) in history.items.iter().enumerate() {
        // A keyed item replaced by a newer acked one promises nothing more,
        // nor does the newest acked one once a later item of its key is
        // found in its place: either may be found or not.
        let replaced = item.key.is_some_and(|key| {
            let newest = newest_acked.get(&key).copied();
            newest.is_some_and(|n| n > seq) || (newest == Some(seq) && newest_found.get(&key).is_some_and(|&f| f > seq))
        });
        let found_here = found.remove(&item.id);
        if let Some(digest) = found_here.filter(|d| *d != item.digest) {
            verdict.violation(item_finding(
                Rule::ItemCorrupt,
                item.id,
                format!(
                    "item {} found with digest {digest}, begun with {}: neither the old state nor the new",
                    item.id, item.digest
                ),
            ));
            continue;
        }
        if replaced {
            continue;
        }
        match (found_here.is_some(), item.acked) {
            (true, true) => verdict.counts.intact += 1,
            (true, false) => verdict.counts.in_flight_new += 1,
            (false, true) => {
                verdict.counts.lost += 1;
                verdict.violation(item_finding(
                    Rule::AckedItemLost,
                    item.id,
                    format!("item {} was acknowledged before the crash and is not there", item.id),
                ));
            }
            (false, false) => verdict.counts.in_flight_old += 1,
        }
    }
    let mut foreign: Vec<u64> = found.into_keys().collect();
    foreign.sort_unstable();
    for id in foreign {
        verdict.violation(item_finding(
            Rule::ForeignItem,
            id,
            format!("item {id} was found but never begun before the crash"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use record::protocol::parse_log;

    const LOG: &str = "BOOTED workload\nREADY 0\nITEM 0 100 aa\nACK 0 0\nITEM 1 101 bb\nACK 1 1\nITEM 2 102 cc\n";

    fn judge(log: &str, checker: &str, rc: i32) -> Verdict {
        let protocol = parse_log(log).unwrap();
        let report = CheckerReport::from_output(checker, rc);
        verify_items(&ItemEvidence {
            protocol: &protocol,
            kept_events: None,
            items_max: 100,
            recovery_failure: None,
            mount_rc: 0,
            fsck: None,
            checker: Some(&report),
        })
    }

    fn rules(v: &Verdict) -> Vec<Rule> {
        v.violations.iter().map(|f| f.rule).collect()
    }

    #[test]
    fn acked_items_found_and_the_one_in_flight_either_way_pass() {
        for checker in [
            "ITEM 100 aa\nITEM 101 bb\nEND 2\n",
            "ITEM 100 aa\nITEM 101 bb\nITEM 102 cc\nEND 3\n",
        ] {
            let v = judge(LOG, checker, 0);
            assert!(v.passed, "{checker}: {:?}", v.violations);
            assert_eq!((v.counts.acked, v.counts.in_flight, v.counts.intact), (2, 1, 2));
        }
    }

    #[test]
    fn each_broken_promise_is_its_rule() {
        let lost = judge(LOG, "ITEM 100 aa\nEND 1\n", 0);
        assert_eq!(rules(&lost), [Rule::AckedItemLost]);
        assert_eq!(lost.violations[0].item, Some(101));
        assert_eq!(lost.counts.lost, 1);
        let corrupt = judge(LOG, "ITEM 100 aa\nITEM 101 bb\nITEM 102 dd\nEND 3\n", 0);
        assert_eq!(rules(&corrupt), [Rule::ItemCorrupt]);
        let foreign = judge(LOG, "ITEM 100 aa\nITEM 101 bb\nITEM 999 aa\nEND 3\n", 0);
        assert_eq!(rules(&foreign), [Rule::ForeignItem]);
        let damaged = judge(LOG, "ITEM 100 aa\nITEM 101 bb\nCORRUPT page 3 checksum\nEND 2\n", 0);
        assert_eq!(rules(&damaged), [Rule::CheckerFoundCorruption]);
        for (checker, rc) in [
            ("ITEM 100 aa\nITEM 101 bb\n", 0),
            ("END 0\n", 1),
            ("ITEM 100 aa\nEND 5\n", 0),
        ] {
            assert_eq!(rules(&judge(LOG, checker, rc)), [Rule::ItemStoreReadable], "{checker}");
        }
        assert_eq!(rules(&judge(LOG, "ITEM x aa\nEND 1\n", 0)), [Rule::ProtocolConsistent]);
    }

    #[test]
    fn items_begun_after_the_crash_are_not_promised_and_found_ones_are_foreign() {
        let protocol = parse_log(LOG).unwrap();
        // The crash came after the first ACK: item 101 was in flight.
        let kept: Vec<bool> = (0..protocol.events.len()).map(|i| i < 5).collect();
        let report = CheckerReport::from_output("ITEM 100 aa\nITEM 101 bb\nITEM 102 cc\nEND 3\n", 0);
        let v = verify_items(&ItemEvidence {
            protocol: &protocol,
            kept_events: Some(&kept),
            items_max: 100,
            recovery_failure: None,
            mount_rc: 0,
            fsck: None,
            checker: Some(&report),
        });
        assert_eq!(rules(&v), [Rule::ForeignItem]);
        assert_eq!(v.violations[0].item, Some(102));
        assert_eq!((v.counts.intact, v.counts.in_flight_new), (1, 1));
    }

    #[test]
    fn a_keyed_item_is_promised_until_a_newer_one_of_its_key_is_acked_or_found() {
        // Key 7: item 100 acked, then 101 acked, then 102 in flight; key 8: 103 acked.
        let log =
            "READY 0\nITEM 0 100 aa 7\nACK 0 0\nITEM 1 101 bb 7\nACK 1 1\nITEM 2 102 cc 7\nITEM 3 103 dd 8\nACK 3 3\n";
        for checker in [
            "ITEM 101 bb\nITEM 103 dd\nEND 2\n",
            "ITEM 102 cc\nITEM 103 dd\nEND 2\n",
            "ITEM 100 aa\nITEM 101 bb\nITEM 103 dd\nEND 3\n",
        ] {
            let v = judge(log, checker, 0);
            assert!(v.passed, "{checker}: {:?}", v.violations);
        }
        // Only the replaced one, or nothing of key 7: the newest acked is lost.
        for checker in ["ITEM 100 aa\nITEM 103 dd\nEND 2\n", "ITEM 103 dd\nEND 1\n"] {
            let v = judge(log, checker, 0);
            assert_eq!(rules(&v), [Rule::AckedItemLost], "{checker}");
            assert_eq!(v.violations[0].item, Some(101));
        }
        let corrupt = judge(log, "ITEM 100 ab\nITEM 101 bb\nITEM 103 dd\nEND 3\n", 0);
        assert_eq!(rules(&corrupt), [Rule::ItemCorrupt]);
    }

    #[test]
    fn a_log_that_breaks_its_own_rules_is_not_judged_further() {
        for log in [
            "ITEM 0 100 aa\n",
            "READY 0\nITEM 1 100 aa\n",
            "READY 0\nITEM 0 100 aa\nITEM 1 100 bb\n",
            "READY 0\nACK 0 0\n",
            "READY 0\nITEM 0 100 aa\nACK 0 0\nACK 0 0\n",
        ] {
            assert_eq!(rules(&judge(log, "END 0\n", 0)), [Rule::ProtocolConsistent], "{log}");
        }
    }

    #[test]
    fn before_ready_an_absent_store_is_no_violation() {
        let v = judge("BOOTED workload\n", "NOTE no environment yet\n", 2);
        assert!(v.passed);
        assert_eq!(v.observation_count, 1);
    }

    /// Before READY nothing is promised, but a checker that crashes (a
    /// signal) or hangs (killed at its limit: 137) on a half-made store is
    /// reported: the program's library must say "not there", not crash.
    #[test]
    fn before_ready_a_checker_that_crashes_or_hangs_is_a_violation() {
        for rc in [134, 137, 139] {
            let v = judge("BOOTED workload\n", "", rc);
            assert_eq!(rules(&v), [Rule::ItemStoreReadable], "exit {rc}");
            assert!(v.violations[0].reason.contains("before READY"), "{:?}", v.violations[0]);
        }
    }
}
