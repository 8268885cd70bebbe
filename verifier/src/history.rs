//! What the workload said it did, rebuilt from its protocol log: a
//! [`Timeline`] of the whole run, built once, and the [`History`] the
//! application had seen at one crash, a [`Cut`] of that timeline.
//!
//! Why one timeline and cuts of it, not a history rebuilt per crash state:
//! a state's cost must not grow with the run's length (an exhaustive
//! exploration judges thousands of states of one run). A cut is a few
//! event indexes, and every question put to the history at a cut is a
//! lookup or a binary search.

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

/// Which of the protocol's events the application had seen at a crash.
///
/// For each writer process: everything before its first `ACK` not given
/// (its ack sector not logged before the crash). Lines of no one writer
/// (`MSYNC`, `GROW`, ...) while any writer is uncut; `DONE` while none
/// is. Nothing from the first `READY` on when the ready marker was not
/// logged before the crash.
///
/// Why a cut and not a filter: each writer is one sequential program, and
/// each of those lines is printed only after its marker's O_DIRECT write
/// completed, i.e. was logged. A marker logged at or after the crash
/// completed after it, so every line that writer printed after it (its
/// next records' `BEGIN`s among them) came after the crash too. The records
/// begun before the cut and not acked include every one in flight (and
/// perhaps one begun just after the crash, whose bytes cannot be in the
/// state: allowing it loosens nothing that matters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub ready_given: bool,
    /// Per writer (`seq % writers`): the protocol index of its first `ACK`
    /// not given; `None` when every one of its acks was.
    pub first_ack_not_given: Vec<Option<usize>>,
}

/// A cut as exclusive ends of event indexes: an event is seen when its
/// index lies below the end that applies to it.
#[derive(Clone, Debug)]
struct Ends {
    writer: Vec<usize>,
    /// Lines of no one writer.
    any: usize,
    /// `DONE`.
    all: usize,
}

impl Cut {
    /// Every event seen (a run judged as a whole).
    pub fn everything(writers: u32) -> Cut {
        assert!(writers > 0, "a run has at least one writer");
        Cut {
            ready_given: true,
            first_ack_not_given: vec![None; writers as usize],
        }
    }

    pub fn writers(&self) -> u32 {
        self.first_ack_not_given.len() as u32
    }

    fn ends(&self, first_ready: Option<usize>) -> Ends {
        let stop = match self.ready_given {
            true => usize::MAX,
            false => first_ready.unwrap_or(usize::MAX),
        };
        let writer: Vec<usize> = self
            .first_ack_not_given
            .iter()
            .map(|c| c.unwrap_or(usize::MAX).min(stop))
            .collect();
        Ends {
            any: writer.iter().copied().max().expect("at least one writer"),
            all: writer.iter().copied().min().expect("at least one writer"),
            writer,
        }
    }

    /// The cut as a mask over `log`'s events (`mask[i]`: event `i` seen).
    pub fn mask(&self, log: &ProtocolLog) -> Vec<bool> {
        let first_ready = log.events.iter().position(|e| matches!(e, Event::Ready { .. }));
        let ends = self.ends(first_ready);
        let writers = u64::from(self.writers());
        log.events
            .iter()
            .enumerate()
            .map(|(i, event)| match event {
                Event::Begin { seq, .. } | Event::Ack { seq, .. } => i < ends.writer[(seq % writers) as usize],
                Event::Done { .. } => i < ends.all,
                _ => i < ends.any,
            })
            .collect()
    }
}

/// Index kept where an event never happened.
const NEVER: usize = usize::MAX;

/// Per-record facts of a whole protocol log, each with its place among the
/// events. Sequence numbers are unique in a run; each slot's versions are
/// the records begun in it, in `BEGIN` order, all of one writer (whose
/// lines are in program order), so the versions seen at any cut are a
/// prefix of them.
#[derive(Clone, Debug)]
pub struct Timeline {
    writers: u32,
    first_ready: Option<usize>,
    // Indexed by slot, or by seq (both bounded and checked in `build`).
    versions: Vec<Vec<u64>>,
    slot_of: Vec<Option<u64>>,
    /// Index of each record's `BEGIN` and `ACK` among the events (`NEVER`).
    begin_at: Vec<usize>,
    ack_at: Vec<usize>,
    /// Per writer, the indexes of its `BEGIN`s and of its `ACK`s, ascending.
    begins_of_writer: Vec<Vec<usize>>,
    acks_of_writer: Vec<Vec<usize>>,
    /// Growth: (file, size) set with `GROW`, in order, and where.
    grown: Vec<(u32, u64)>,
    grown_at: Vec<usize>,
    msyncs: Vec<MsyncCall>,
}

/// The history the application had seen at one crash: a [`Timeline`] and
/// a [`Cut`] of it.
#[derive(Debug)]
pub struct History<'t> {
    timeline: &'t Timeline,
    ends: Ends,
    pub ready: bool,
    pub begun: u64,
    pub ack_count: u64,
    pub grown: &'t [(u32, u64)],
    pub msyncs: &'t [MsyncCall],
}

impl Timeline {
    /// Builds the timeline of `log`'s events (of those `kept` marks, when
    /// given), refusing logs that break the protocol's own rules (a record
    /// begun twice or before READY, an ack for a record never begun, a slot
    /// outside the geometry, not the one begun or not its writer's): such
    /// a log means the workload or the channel is broken, and no verdict on
    /// the disk could be trusted. Event indexes stay those of `log`.
    pub fn build(
        log: &ProtocolLog,
        kept: Option<&[bool]>,
        geometry: &Geometry,
        records_max: u64,
    ) -> Result<Timeline, String> {
        if let Some(kept) = kept {
            assert_eq!(kept.len(), log.events.len(), "one mask bit per event");
        }
        let total_slots = geometry.total_slots();
        assert!(total_slots > 0 && geometry.writers > 0);
        // The per-seq vectors grow with the highest seq begun (checked
        // against `records_max` first), so a short protocol costs little.
        let mut t = Timeline {
            writers: geometry.writers,
            first_ready: None,
            versions: vec![Vec::new(); total_slots as usize],
            slot_of: Vec::new(),
            begin_at: Vec::new(),
            ack_at: Vec::new(),
            begins_of_writer: vec![Vec::new(); geometry.writers as usize],
            acks_of_writer: vec![Vec::new(); geometry.writers as usize],
            grown: Vec::new(),
            grown_at: Vec::new(),
            msyncs: Vec::new(),
        };
        let events = log
            .events
            .iter()
            .enumerate()
            .filter(|(i, _)| kept.is_none_or(|k| k[*i]));
        for (index, event) in events {
            t.add(index, event, geometry, records_max)?;
        }
        Ok(t)
    }

    fn add(&mut self, index: usize, event: &Event, geometry: &Geometry, records_max: u64) -> Result<(), String> {
        let total_slots = geometry.total_slots();
        match event {
            Event::Ready { slots } => {
                if *slots != total_slots {
                    return Err(format!(
                        "READY reports {slots} slots, the parameters give {total_slots}"
                    ));
                }
                self.first_ready.get_or_insert(index);
            }
            Event::Begin { seq, slot } => self.begin(index, *seq, *slot, total_slots, records_max)?,
            Event::Ack { seq, slot } => self.ack(index, *seq, *slot)?,
            Event::Grow { file, size_bytes } => {
                if *file >= geometry.files {
                    return Err(format!("GROW of file {file}: the run has {} files", geometry.files));
                }
                self.grown.push((*file, *size_bytes));
                self.grown_at.push(index);
            }
            Event::Msync {
                file,
                offset_bytes,
                len_bytes,
                flags,
                errno,
            } => self.msyncs.push(MsyncCall {
                event_index: index,
                file: *file,
                offset_bytes: *offset_bytes,
                len_bytes: *len_bytes,
                flags: flags.clone(),
                errno: *errno,
            }),
            // Judged live, once per trial (`live_findings`), not per state;
            // reported for the io-errors table.
            Event::Error { .. }
            | Event::Done { .. }
            | Event::Incoherent { .. }
            | Event::Seen { .. }
            | Event::SeenBad { .. }
            | Event::Fsync { .. }
            | Event::Readback { .. } => {}
            // Kept in the log for the user; never judged.
            Event::Booted { .. } | Event::Hold { .. } | Event::Note { .. } | Event::Point { .. } => {}
            other => return Err(format!("unexpected line in a workload log: {other}")),
        }
        Ok(())
    }

    fn writer_of(&self, seq: u64) -> usize {
        (seq % u64::from(self.writers)) as usize
    }

    /// `BEGIN seq slot`: after READY, within the run and the geometry,
    /// once per seq, in a slot no other writer uses.
    fn begin(&mut self, index: usize, seq: u64, slot: u64, total_slots: u64, records_max: u64) -> Result<(), String> {
        if self.first_ready.is_none() {
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
            self.begin_at.resize(len, NEVER);
            self.ack_at.resize(len, NEVER);
        }
        if self.slot_of[seq_index].replace(slot).is_some() {
            return Err(format!("BEGIN {seq} twice"));
        }
        let writer = self.writer_of(seq);
        if let Some(&other) = self.versions[slot as usize].last() {
            if self.writer_of(other) != writer {
                return Err(format!(
                    "BEGIN {seq} of writer {writer} in slot {slot}, where writer {} began record {other}",
                    self.writer_of(other)
                ));
            }
        }
        self.begin_at[seq_index] = index;
        self.versions[slot as usize].push(seq);
        self.begins_of_writer[writer].push(index);
        Ok(())
    }

    /// `ACK seq slot`: of a record begun in that slot, once.
    fn ack(&mut self, index: usize, seq: u64, slot: u64) -> Result<(), String> {
        match self.slot_of.get(seq as usize).copied().flatten() {
            None => return Err(format!("ACK {seq} for a record never begun")),
            Some(begun_slot) if begun_slot != slot => {
                return Err(format!("ACK {seq} names slot {slot}, it was begun in {begun_slot}"))
            }
            Some(_) => {}
        }
        // Begun, so `seq` is in range.
        if std::mem::replace(&mut self.ack_at[seq as usize], index) != NEVER {
            return Err(format!("ACK {seq} twice"));
        }
        let writer = self.writer_of(seq);
        self.acks_of_writer[writer].push(index);
        Ok(())
    }

    /// The history seen at `cut`: O(writers + log events) work in binary
    /// searches, whatever the run's length.
    pub fn at(&self, cut: &Cut) -> History<'_> {
        assert_eq!(cut.writers(), self.writers, "a cut of this run's writers");
        let ends = cut.ends(self.first_ready);
        let below = |indexes: &[usize], end: usize| indexes.partition_point(|&i| i < end) as u64;
        let begun = (0..self.writers as usize)
            .map(|w| below(&self.begins_of_writer[w], ends.writer[w]))
            .sum();
        let ack_count = (0..self.writers as usize)
            .map(|w| below(&self.acks_of_writer[w], ends.writer[w]))
            .sum();
        let msyncs = &self.msyncs[..self.msyncs.partition_point(|m| m.event_index < ends.any)];
        let grown = &self.grown[..below(&self.grown_at, ends.any) as usize];
        History {
            timeline: self,
            ready: self.first_ready.is_some_and(|r| r < ends.any),
            begun,
            ack_count,
            grown,
            msyncs,
            ends,
        }
    }
}

impl History<'_> {
    fn end_of(&self, seq: u64) -> usize {
        self.ends.writer[self.timeline.writer_of(seq)]
    }

    fn seen(&self, seq: u64, at: &[usize]) -> Option<usize> {
        at.get(seq as usize).copied().filter(|&i| i < self.end_of(seq))
    }

    pub fn is_acked(&self, seq: u64) -> bool {
        self.seen(seq, &self.timeline.ack_at).is_some()
    }

    /// Records begun in `slot`, oldest first.
    pub fn versions_in(&self, slot: u64) -> &[u64] {
        let t = self.timeline;
        let all = t.versions.get(slot as usize).map_or(&[][..], Vec::as_slice);
        // One writer per slot: the versions seen are a prefix.
        &all[..all.partition_point(|&seq| t.begin_at[seq as usize] < self.end_of(seq))]
    }

    pub fn slot_of(&self, seq: u64) -> Option<u64> {
        self.seen(seq, &self.timeline.begin_at)?;
        self.timeline.slot_of[seq as usize]
    }

    /// Acked records, in seq order.
    pub fn acked_records(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.timeline.ack_at.len() as u64).filter(|&seq| self.is_acked(seq))
    }

    /// Index of `seq`'s ACK among the protocol's events.
    pub fn ack_event_of(&self, seq: u64) -> Option<usize> {
        self.seen(seq, &self.timeline.ack_at)
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

#[cfg(test)]
mod tests;
