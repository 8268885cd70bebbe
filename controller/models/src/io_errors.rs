//! Injected write errors (fsyncgate for mappings). The workload's disk is
//! served by crashlab's NBD server, which fails the one write request that
//! carries a seeded record (once, with EIO or ENOSPC), whatever sector the
//! filesystem put it in: copy-on-write and log-structured filesystems move
//! data, so a fault planted at fixed sectors before boot (QEMU's
//! blkdebug) would miss them. The workload goes on after a failed sync
//! (`io_errors`), reporting what follows; the rules are the verifier's
//! (`no-ack-after-failed-sync`) and [`error_reported`].

use record::{Event, ProtocolLog};
use serde::Serialize;

use config::WriteError;

/// What a trial with an injected write error showed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IoErrorFacts {
    pub error: String,
    pub failing_record: u64,
    /// Writes the disk failed (0: the record was never written before the
    /// crash or the end).
    pub injected: u64,
    /// Every call that reported an error to the application, in order:
    /// "msync EIO", "fsync EIO".
    pub reported_by: Vec<String>,
    /// What the mapping showed for the failed batch's records afterwards.
    pub readback: Vec<String>,
    /// Records acked after the first failed call.
    pub acked_after_error: u64,
}

pub fn facts(error: WriteError, failing_record: u64, injected: u64, protocol: &ProtocolLog) -> IoErrorFacts {
    let mut facts = IoErrorFacts {
        error: crate::conformance::errno_name(error.nbd_errno() as i32),
        failing_record,
        injected,
        ..IoErrorFacts::default()
    };
    for event in &protocol.events {
        match event {
            Event::Msync { errno, .. } if *errno != 0 => facts
                .reported_by
                .push(format!("msync {}", crate::conformance::errno_name(*errno))),
            Event::Fsync { errno } if *errno != 0 => facts
                .reported_by
                .push(format!("fsync {}", crate::conformance::errno_name(*errno))),
            Event::Readback { seq, what } => facts.readback.push(format!("record {seq}: {what}")),
            Event::Ack { .. } if !facts.reported_by.is_empty() => facts.acked_after_error += 1,
            _ => {}
        }
    }
    facts
}

/// The rule that needs the host's knowledge: a write the disk failed must
/// reach the application, through msync or the fsync after it, at least
/// once.
pub fn error_reported(facts: &IoErrorFacts) -> Option<verifier::Finding> {
    (facts.injected > 0 && facts.reported_by.is_empty()).then(|| verifier::Finding {
        item: None,
        rule: verifier::Rule::WriteErrorReported,
        slot: None,
        expected_seq: Some(facts.failing_record),
        found_seq: None,
        reason: format!(
            "the disk failed the write of record {} with {}, and no msync or fsync reported an error",
            facts.failing_record, facts.error
        ),
        hex_excerpt: None,
        expected_hex: None,
        covered_by: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_reported_and_acks_after_them_are_counted() {
        let protocol = record::protocol::parse_log(
            "READY 4\nBEGIN 0 0\nMSYNC 0 0 4096 MS_SYNC 5\nFSYNC 0\nREADBACK 0 new\nBEGIN 1 1\nMSYNC 0 4096 4096 MS_SYNC 0\nACK 1 1\n",
        )
        .unwrap();
        let f = facts(WriteError::Eio, 0, 1, &protocol);
        assert_eq!(f.reported_by, vec!["msync EIO"]);
        assert_eq!(f.readback, vec!["record 0: new"]);
        assert_eq!(f.acked_after_error, 1);
        assert!(error_reported(&f).is_none());
        let silent = facts(
            WriteError::Eio,
            0,
            1,
            &record::protocol::parse_log("READY 4\n").unwrap(),
        );
        assert_eq!(
            error_reported(&silent).unwrap().rule,
            verifier::Rule::WriteErrorReported
        );
    }
}
