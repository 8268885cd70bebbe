//! What the workload said it did, rebuilt from its protocol log.

use record::{Event, ProtocolLog};

/// Per-sequence-number facts from the protocol. The workload writes records
/// in order, so the begun records are exactly `0..begun`.
#[derive(Debug)]
pub struct History {
    pub ready: bool,
    pub begun: u64,
    pub acked: Vec<bool>,
    pub ack_count: u64,
    pub workload_error: Option<(String, i32)>,
    pub done: bool,
}

impl History {
    pub fn is_acked(&self, seq: u64) -> bool {
        self.acked.get(seq as usize).copied().unwrap_or(false)
    }
}

/// Rebuilds the history, refusing logs that break the protocol's own rules
/// (a record begun out of order, an ack for a record never begun, a slot that
/// is not `seq % slots`): such a log means the workload or the channel is
/// broken, and no verdict on the disk could be trusted.
pub fn rebuild(log: &ProtocolLog, slots: u64, records_max: u64) -> Result<History, String> {
    assert!(slots > 0);
    let mut h = History {
        ready: false,
        begun: 0,
        acked: Vec::new(),
        ack_count: 0,
        workload_error: None,
        done: false,
    };
    for event in &log.events {
        match event {
            Event::Ready { slots: s } => {
                if *s != slots {
                    return Err(format!("READY reports {s} slots, the parameters give {slots}"));
                }
                h.ready = true;
            }
            Event::Begin { seq, slot } => {
                if !h.ready {
                    return Err(format!("BEGIN {seq} before READY"));
                }
                if *seq != h.begun {
                    return Err(format!("BEGIN {seq} out of order: expected {}", h.begun));
                }
                if *slot != seq % slots {
                    return Err(format!("BEGIN {seq} names slot {slot}, expected {}", seq % slots));
                }
                if *seq >= records_max {
                    return Err(format!("BEGIN {seq} beyond the {records_max} records of the run"));
                }
                h.begun += 1;
                h.acked.push(false);
            }
            Event::Ack { seq, slot } => {
                if *seq >= h.begun {
                    return Err(format!("ACK {seq} for a record never begun"));
                }
                if *slot != seq % slots {
                    return Err(format!("ACK {seq} names slot {slot}, expected {}", seq % slots));
                }
                if std::mem::replace(&mut h.acked[*seq as usize], true) {
                    return Err(format!("ACK {seq} twice"));
                }
                h.ack_count += 1;
            }
            Event::Error { op, errno } => h.workload_error = Some((op.clone(), *errno)),
            Event::Done { .. } => h.done = true,
            Event::Booted { .. } | Event::Hold { .. } => {}
            other => return Err(format!("unexpected line in a workload log: {other}")),
        }
    }
    Ok(h)
}
