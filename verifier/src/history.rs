//! What the workload said it did, rebuilt from its protocol log.

use record::{Event, Geometry, ProtocolLog};

/// An msync call the workload reported (`MSYNC`), with its place among the
/// protocol's events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsyncCall {
    pub event_index: usize,
    pub file: u32,
    pub offset_bytes: u64,
    pub len_bytes: u64,
    pub flags: std::sync::Arc<str>,
    pub errno: i32,
}

impl MsyncCall {
    /// Whether the call's range, rounded out to whole pages as msync does,
    /// covers `[offset, offset + len)` of `file`.
    pub fn covers(&self, file: u32, offset_bytes: u64, len_bytes: u64) -> bool {
        let page = record::pattern::PAGE_SIZE_BYTES;
        let start = self.offset_bytes - self.offset_bytes % page;
        // Saturating: the numbers come from the guest.
        let end = self
            .offset_bytes
            .saturating_add(self.len_bytes)
            .div_ceil(page)
            .saturating_mul(page);
        self.file == file && start <= offset_bytes && offset_bytes.saturating_add(len_bytes) <= end
    }

    pub fn describe(&self) -> String {
        format!(
            "msync(file {}, offset {}, len {}, {}) = {}",
            self.file,
            self.offset_bytes,
            self.len_bytes,
            self.flags,
            match self.errno {
                0 => "0".to_string(),
                e => format!("-1 errno {e}"),
            }
        )
    }
}

/// Per-record facts from the protocol. Sequence numbers are unique in a
/// run; each slot's versions are the records begun in it, in `BEGIN`
/// order (a slot belongs to one writer, whose lines are in program order).
#[derive(Debug, Default)]
pub struct History {
    pub ready: bool,
    pub begun: u64,
    pub ack_count: u64,
    // Indexed by slot, or by seq (both bounded and checked in `rebuild`):
    // vectors, not maps, since a verdict rebuilds the history per state.
    versions: Vec<Vec<u64>>,
    slot_of: Vec<Option<u64>>,
    acked: Vec<bool>,
    /// Index of each record's `ACK` among the protocol's events.
    ack_event: Vec<Option<usize>>,
    /// Growth: (file, size) set with `GROW`, in order.
    pub grown: Vec<(u32, u64)>,
    pub msyncs: Vec<MsyncCall>,
    pub workload_error: Option<(String, i32)>,
    pub done: bool,
}

impl History {
    pub fn is_acked(&self, seq: u64) -> bool {
        self.acked.get(seq as usize).copied().unwrap_or(false)
    }

    /// Records begun in `slot`, oldest first.
    pub fn versions_in(&self, slot: u64) -> &[u64] {
        self.versions.get(slot as usize).map_or(&[], Vec::as_slice)
    }

    pub fn slot_of(&self, seq: u64) -> Option<u64> {
        self.slot_of.get(seq as usize).copied().flatten()
    }

    /// Acked records, in seq order.
    pub fn acked_records(&self) -> impl Iterator<Item = u64> + '_ {
        self.acked
            .iter()
            .enumerate()
            .filter(|(_, &a)| a)
            .map(|(seq, _)| seq as u64)
    }

    /// Index of `seq`'s ACK among the protocol's events.
    pub fn ack_event_of(&self, seq: u64) -> Option<usize> {
        self.ack_event.get(seq as usize).copied().flatten()
    }

    /// The last msync before `seq`'s ACK whose range covers the record: the
    /// call that made the promise.
    pub fn covering_msync(&self, seq: u64, file: u32, offset_bytes: u64, len_bytes: u64) -> Option<&MsyncCall> {
        let ack_at = self.ack_event_of(seq)?;
        self.msyncs
            .iter()
            .rev()
            .filter(|m| m.event_index < ack_at && m.errno == 0)
            .find(|m| m.covers(file, offset_bytes, len_bytes))
    }
}

impl History {
    /// `BEGIN seq slot`: after READY, within the run and the geometry,
    /// once per seq.
    fn begin(&mut self, seq: u64, slot: u64, total_slots: u64, records_max: u64) -> Result<(), String> {
        if !self.ready {
            return Err(format!("BEGIN {seq} before READY"));
        }
        if seq >= records_max {
            return Err(format!("BEGIN {seq} beyond the {records_max} records of the run"));
        }
        if slot >= total_slots {
            return Err(format!("BEGIN {seq} names slot {slot}, past the {total_slots} slots"));
        }
        let seq_index = seq as usize;
        if seq_index >= self.slot_of.len() {
            let len = (seq_index + 1).max(self.slot_of.len() * 2).min(records_max as usize);
            self.slot_of.resize(len, None);
            self.acked.resize(len, false);
            self.ack_event.resize(len, None);
        }
        if self.slot_of[seq_index].replace(slot).is_some() {
            return Err(format!("BEGIN {seq} twice"));
        }
        self.versions[slot as usize].push(seq);
        self.begun += 1;
        Ok(())
    }

    /// `ACK seq slot` (event `index`): of a record begun in that slot, once.
    fn ack(&mut self, seq: u64, slot: u64, index: usize) -> Result<(), String> {
        match self.slot_of(seq) {
            None => return Err(format!("ACK {seq} for a record never begun")),
            Some(begun_slot) if begun_slot != slot => {
                return Err(format!("ACK {seq} names slot {slot}, it was begun in {begun_slot}"))
            }
            Some(_) => {}
        }
        // Begun, so `seq` is in range.
        if std::mem::replace(&mut self.acked[seq as usize], true) {
            return Err(format!("ACK {seq} twice"));
        }
        self.ack_event[seq as usize] = Some(index);
        self.ack_count += 1;
        Ok(())
    }
}

/// Rebuilds the history, refusing logs that break the protocol's own rules
/// (a record begun twice or before READY, an ack for a record never begun,
/// a slot outside the geometry or not the one begun): such a log means the
/// workload or the channel is broken, and no verdict on the disk could be
/// trusted.
/// `kept`: the mask of events to use (see `Evidence::kept_events`); event
/// indexes stay those of `log`, which only ever order events.
pub fn rebuild(
    log: &ProtocolLog,
    kept: Option<&[bool]>,
    geometry: &Geometry,
    records_max: u64,
) -> Result<History, String> {
    if let Some(kept) = kept {
        assert_eq!(kept.len(), log.events.len(), "one mask bit per event");
    }
    let total_slots = geometry.total_slots();
    assert!(total_slots > 0);
    // The per-seq vectors grow with the highest seq begun (checked against
    // `records_max` first), so a short protocol costs little.
    let mut h = History {
        versions: vec![Vec::new(); total_slots as usize],
        ..History::default()
    };
    let events = log
        .events
        .iter()
        .enumerate()
        .filter(|(i, _)| kept.is_none_or(|k| k[*i]));
    for (index, event) in events {
        match event {
            Event::Ready { slots } => {
                if *slots != total_slots {
                    return Err(format!(
                        "READY reports {slots} slots, the parameters give {total_slots}"
                    ));
                }
                h.ready = true;
            }
            Event::Begin { seq, slot } => h.begin(*seq, *slot, total_slots, records_max)?,
            Event::Ack { seq, slot } => h.ack(*seq, *slot, index)?,
            Event::Grow { file, size_bytes } => {
                if *file >= geometry.files {
                    return Err(format!("GROW of file {file}: the run has {} files", geometry.files));
                }
                h.grown.push((*file, *size_bytes));
            }
            Event::Msync {
                file,
                offset_bytes,
                len_bytes,
                flags,
                errno,
            } => h.msyncs.push(MsyncCall {
                event_index: index,
                file: *file,
                offset_bytes: *offset_bytes,
                len_bytes: *len_bytes,
                flags: flags.clone(),
                errno: *errno,
            }),
            Event::Error { op, errno } => h.workload_error = Some((op.clone(), *errno)),
            Event::Done { .. } => h.done = true,
            // Judged live, once per trial (`live_findings`), not per state;
            // reported for the io-errors table.
            Event::Incoherent { .. }
            | Event::Seen { .. }
            | Event::SeenBad { .. }
            | Event::Fsync { .. }
            | Event::Readback { .. } => {}
            // Kept in the log for the user; never judged.
            Event::Booted { .. } | Event::Hold { .. } | Event::Note { .. } | Event::Point { .. } => {}
            other => return Err(format!("unexpected line in a workload log: {other}")),
        }
    }
    Ok(h)
}
