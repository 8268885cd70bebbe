//! The verifier: judges one recovered crash state.
//!
//! Input ([`Evidence`]): the workload's parameters, its protocol log, and what
//! the check boot found on the recovered disk (mount status, the data file's
//! bytes, the fsck outcome). Output ([`Verdict`]): a judgement per slot and
//! per trial, each violation with its rule and reason.
//!
//! This crate does no I/O: it can be run on evidence from any source (a real
//! VM, a crash state built from a block log, a test's crafted bytes).
//!
//! Rules (from POSIX msync and the seeds' usage patterns):
//! - [`Rule::AckedRecordLost`]: under a mode that promises durability, the
//!   newest acknowledged record of every slot is present and intact, as that
//!   version or a newer one;
//! - a record in flight (BEGIN without ACK) may be the old version, the new
//!   one, or torn at sector granularity: counted, not a violation;
//! - [`Rule::StaleBytes`] / [`Rule::ForeignRecord`]: bytes the workload never
//!   wrote to that place are a violation;
//! - under `ms-async` and `none` nothing is promised: losses are
//!   observations;
//! - [`Rule::FilePresent`] and [`Rule::SizeDurable`]: the workload creates
//!   the file, sizes it and fsyncs it and its directory before `READY`, so
//!   once `READY` was given the file exists with exactly that size, under
//!   every mode and both profiles;
//! - [`Rule::RecoveryCompletes`], [`Rule::Mountable`],
//!   [`Rule::FileReadable`]: the recovered filesystem mounts, and the file
//!   reads back in full, without a kernel panic or hang on the way.

mod hex;
mod history;
pub mod items;

use record::layout::{self, RecordHeader, SECTOR_SIZE_BYTES};
use record::{ProtocolLog, WorkloadParams};
use serde::Serialize;

pub use history::{Cut, History, MsyncCall, Timeline};

/// How strictly to read the standard.
///
/// The record workload makes its file's existence and size durable with
/// fsync before `READY`, so both profiles hold it to the same size and
/// presence rules; they differ for workloads that change metadata through
/// the mapping (a file grown while mapped), where Linux's msync, being
/// fdatasync over the range, also persists the size and POSIX does not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// What Linux promises: msync is fdatasync over the range.
    #[default]
    Linux,
    /// Only what POSIX promises for msync: the data of the synced pages.
    Posix,
}

/// What became of the data file after recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileFound<'a> {
    /// The file does not exist.
    Missing,
    /// Every byte of the file, read after recovery.
    Read(&'a [u8]),
    /// The file exists (with this size, when known) but could not be read
    /// in full: an I/O error on a damaged extent, or more bytes than can be
    /// exported.
    Unreadable { size_bytes: Option<u64>, reason: String },
}

/// What the check saw.
#[derive(Clone, Debug)]
pub struct Recovered<'a> {
    /// Set when recovery itself did not complete: the guest kernel panicked
    /// or hung while mounting or reading the state, or could not unmount it.
    /// Nothing else is judged.
    pub recovery_failure: Option<String>,
    /// Exit status of `mount` in the check boot (0: mounted).
    pub mount_rc: i32,
    /// Each data file of the run's geometry, in order.
    pub files: Vec<FileFound<'a>>,
    /// Read-only fsck after the kernel's recovery: (tool, exit status), or
    /// `None` if the filesystem has no fsck in the guest.
    pub fsck: Option<(String, i32)>,
}

pub struct Evidence<'a> {
    pub params: &'a WorkloadParams,
    pub protocol: &'a ProtocolLog,
    /// The events of `protocol` the application had seen at the crash.
    pub seen: Seen<'a>,
    pub recovered: Recovered<'a>,
}

/// Which of the protocol's events the application had seen at a crash.
#[derive(Clone, Copy, Debug)]
pub enum Seen<'a> {
    /// All of them.
    All,
    /// A mask over them (`mask[i]`: event `i` seen): the history is
    /// rebuilt from the events, O(run length).
    Mask(&'a [bool]),
    /// A cut of the timeline of the whole protocol, built once per run:
    /// O(writers + slots) per state, whatever the run's length.
    Cut(&'a Timeline, &'a Cut),
}

impl Seen<'_> {
    /// The events seen as a mask over `log` (`None`: all of them).
    pub fn mask(&self, log: &ProtocolLog) -> Option<std::borrow::Cow<'_, [bool]>> {
        match *self {
            Seen::All => None,
            Seen::Mask(mask) => Some(std::borrow::Cow::Borrowed(mask)),
            Seen::Cut(_, cut) => Some(std::borrow::Cow::Owned(cut.mask(log))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// The protocol log breaks its own rules; nothing else can be judged.
    ProtocolConsistent,
    /// Recovery finishes: no kernel panic or hang while mounting, reading
    /// or unmounting the crash state.
    RecoveryCompletes,
    /// The recovered filesystem must mount.
    Mountable,
    /// fsck finds no error after the kernel's own recovery.
    FsckClean,
    /// The data file exists once the workload reported READY.
    FilePresent,
    /// The data file reads back in full after recovery.
    FileReadable,
    /// Once READY was given, the file has exactly the size the workload
    /// gave it and synced.
    SizeDurable,
    /// The file is never longer than the workload made it.
    SizeNotGrown,
    /// The newest acked record of a slot is there, intact, or a newer one.
    AckedRecordLost,
    /// Bytes that no version of this slot ever held.
    StaleBytes,
    /// A well-formed record from another run or another slot.
    ForeignRecord,
    /// Wal: every data page is explained by a durable log record (its own,
    /// or a later one in the same log slot).
    WalOrder,
    /// Invalidate (live): a write through the mapping is visible to `read`,
    /// a `pwrite` is visible through the mapping.
    Coherent,
    /// Ipc (live): the consumer never reads a published record torn or
    /// foreign.
    ConsumerSeesCommitted,
    /// A record whose covering msync failed is never acknowledged (until
    /// a later msync covering it succeeded).
    NoAckAfterFailedSync,
    /// Injected write errors (judged by the controller, which knows the
    /// disk failed a write): the error reaches the application.
    WriteErrorReported,
    /// A program under test (`items`): an item acknowledged before the
    /// crash is found, with its digest.
    AckedItemLost,
    /// An item found with a digest it was never begun with.
    ItemCorrupt,
    /// An item found that was never begun before the crash.
    ForeignItem,
    /// The program's checker reported damage.
    CheckerFoundCorruption,
    /// The program's checker could examine the recovered data.
    ItemStoreReadable,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: Rule,
    /// The record workload's slot the finding is about.
    pub slot: Option<u64>,
    /// A program's item the finding is about (its id): a program has items,
    /// not slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u64>,
    pub expected_seq: Option<u64>,
    pub found_seq: Option<u64>,
    pub reason: String,
    /// Hex of the found bytes where they first differ from the expected.
    pub hex_excerpt: Option<String>,
    /// Hex of the expected bytes at the same offset, where the verifier
    /// knows them (a lost or torn acked record, stale bytes): with
    /// `hex_excerpt`, the diff a report shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_hex: Option<String>,
    /// For a lost acked record: the msync call that had promised it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub covered_by: Option<String>,
}

/// What one slot of the file was found to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum SlotState {
    /// Never written, and zeros found.
    Unwritten,
    /// The newest acked version.
    Intact { seq: u64 },
    /// An in-flight record found as its new version.
    InFlightNew { seq: u64 },
    /// An in-flight record's slot found with an older version (or zeros).
    InFlightOld { found_seq: Option<u64> },
    /// Sectors of different allowed versions.
    Torn,
    /// The newest acked record is not there (a violation or an
    /// observation, depending on the mode's promise).
    Lost { expected_seq: u64, found_seq: Option<u64> },
    /// Holds bytes that do not belong there; see the violations.
    Bad,
    /// Past the end of the recovered file.
    Missing,
}

impl SlotState {
    /// The record the slot holds whole, if it holds one of this run.
    pub fn found_seq(&self) -> Option<u64> {
        match *self {
            SlotState::Intact { seq } | SlotState::InFlightNew { seq } => Some(seq),
            SlotState::InFlightOld { found_seq } | SlotState::Lost { found_seq, .. } => found_seq,
            SlotState::Unwritten | SlotState::Torn | SlotState::Bad | SlotState::Missing => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    pub begun: u64,
    pub acked: u64,
    /// Begun but never acknowledged.
    pub in_flight: u64,
    /// Slots whose newest acked record is not there (violations under a mode
    /// that promises durability, observations otherwise).
    pub lost: u64,
    pub torn: u64,
    pub in_flight_new: u64,
    pub in_flight_old: u64,
    pub intact: u64,
}

/// Lists are capped so that one broken disk cannot produce gigabytes of
/// report; the counts stay exact.
pub const FINDINGS_MAX: usize = 64;

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub counts: Counts,
    pub violation_count: u64,
    pub violations: Vec<Finding>,
    pub observation_count: u64,
    pub observations: Vec<Finding>,
    /// When something failed: the last msync calls before the crash, newest
    /// last.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub last_msyncs: Vec<String>,
    #[serde(skip)]
    pub slots: Vec<SlotState>,
}

impl Verdict {
    fn new() -> Verdict {
        Verdict {
            passed: true,
            counts: Counts::default(),
            violation_count: 0,
            violations: Vec::new(),
            observation_count: 0,
            observations: Vec::new(),
            last_msyncs: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// Adds a violation found outside this verdict's evidence (the
    /// workload's live findings of the whole run).
    pub fn add_violation(&mut self, finding: Finding) {
        self.violation(finding)
    }

    fn violation(&mut self, finding: Finding) {
        self.passed = false;
        self.violation_count += 1;
        if self.violations.len() < FINDINGS_MAX {
            self.violations.push(finding);
        }
    }

    fn observation(&mut self, finding: Finding) {
        self.observation_count += 1;
        if self.observations.len() < FINDINGS_MAX {
            self.observations.push(finding);
        }
    }

    /// A broken promise is a violation; where nothing was promised it is an
    /// observation.
    fn judge(&mut self, promised: bool, finding: Finding) {
        if promised {
            self.violation(finding)
        } else {
            self.observation(finding)
        }
    }
}

fn finding(rule: Rule, reason: String) -> Finding {
    Finding {
        item: None,
        rule,
        slot: None,
        expected_seq: None,
        found_seq: None,
        reason,
        hex_excerpt: None,
        expected_hex: None,
        covered_by: None,
    }
}

/// The rules every workload shares about the recovery itself:
/// `recovery-completes`, `mountable`, `fsck-clean`. Returns whether the
/// recovered files can be judged at all (recovery completed and the
/// filesystem mounted).
fn judge_recovery(
    verdict: &mut Verdict,
    recovery_failure: &Option<String>,
    mount_rc: i32,
    fsck: &Option<(String, i32)>,
) -> bool {
    if let Some(reason) = recovery_failure {
        verdict.violation(finding(Rule::RecoveryCompletes, reason.clone()));
        return false;
    }
    if mount_rc != 0 {
        verdict.violation(finding(
            Rule::Mountable,
            format!("the recovered filesystem did not mount (mount exit status {mount_rc})"),
        ));
        return false;
    }
    if let Some((tool, rc)) = fsck {
        if *rc != 0 {
            verdict.violation(finding(
                Rule::FsckClean,
                format!("{tool} -n found errors after the kernel's recovery (exit status {rc})"),
            ));
        }
    }
    true
}

/// The msync calls a verdict shows when something failed.
const LAST_MSYNCS_SHOWN: usize = 8;

pub fn verify(evidence: &Evidence, profile: Profile) -> Verdict {
    let params = evidence.params;
    assert!(params.validate().is_ok(), "the verifier is given validated parameters");
    let geometry = params.geometry();
    let total_slots = geometry.total_slots() as usize;
    let mut verdict = Verdict::new();
    let (timeline, cut) = match timeline_of(evidence, &geometry) {
        Ok(seen) => seen,
        Err(reason) => {
            verdict.violation(finding(Rule::ProtocolConsistent, reason));
            return verdict;
        }
    };
    let history = timeline.at(&cut);
    verdict.counts.begun = history.begun;
    verdict.counts.acked = history.ack_count;
    verdict.counts.in_flight = history.begun - history.ack_count;

    let recovered = &evidence.recovered;
    if !judge_recovery(
        &mut verdict,
        &recovered.recovery_failure,
        recovered.mount_rc,
        &recovered.fsck,
    ) {
        if recovered.recovery_failure.is_some() {
            verdict.slots = vec![SlotState::Missing; total_slots];
        }
        return verdict;
    }
    assert_eq!(
        recovered.files.len(),
        geometry.files as usize,
        "one recovered file per data file of the geometry"
    );
    let promised = params.mode.promises_durability();
    let sizes = SizeRules::new(params, &geometry, &history, profile);
    let mut ctx = SlotContext::new(params, &history);
    for (file_index, found) in recovered.files.iter().enumerate() {
        let file_index = file_index as u32;
        let bytes = judge_file(&mut verdict, &sizes, &history, file_index, found);
        let first = u64::from(file_index) * geometry.slots_per_file;
        for slot in first..first + geometry.slots_per_file {
            let state = match bytes {
                Some(bytes) => {
                    let (_, offset) = geometry.locate(slot, params.record_size_bytes);
                    ctx.judge_slot(slot, bytes, offset as usize, promised, &mut verdict)
                }
                None => SlotState::Missing,
            };
            verdict.slots.push(state);
        }
    }
    if geometry.log_slots > 0 {
        check_wal_order(&mut verdict, &geometry, &history, params);
    }
    check_no_ack_after_failed_sync(&mut verdict, &geometry, &history, params);
    if !verdict.passed {
        let shown = history.msyncs.len().saturating_sub(LAST_MSYNCS_SHOWN);
        verdict.last_msyncs = history.msyncs[shown..]
            .iter()
            .map(history::MsyncCall::describe)
            .collect();
    }
    verdict
}

/// The timeline the evidence's history is a cut of, and the cut: the
/// caller's (built once per run), or built here from the events seen.
fn timeline_of<'a>(
    evidence: &Evidence<'a>,
    geometry: &record::Geometry,
) -> Result<(std::borrow::Cow<'a, Timeline>, Cut), String> {
    let mask = match evidence.seen {
        Seen::Cut(timeline, cut) => return Ok((std::borrow::Cow::Borrowed(timeline), cut.clone())),
        Seen::Mask(mask) => Some(mask),
        Seen::All => None,
    };
    let built = Timeline::build(evidence.protocol, mask, geometry, evidence.params.records)?;
    Ok((std::borrow::Cow::Owned(built), Cut::everything(geometry.writers)))
}

/// The rules on one data file as a whole: `file-present`, `file-readable`
/// and its size (`size-durable`, `size-not-grown`). Its bytes when it was
/// read in full, for the rules on its slots.
fn judge_file<'b>(
    verdict: &mut Verdict,
    sizes: &SizeRules,
    history: &History,
    file_index: u32,
    found: &FileFound<'b>,
) -> Option<&'b [u8]> {
    let name = record::pattern::DATA_FILE_NAMES[file_index as usize];
    match found {
        FileFound::Read(bytes) => {
            sizes.check(verdict, file_index, bytes.len() as u64);
            Some(bytes)
        }
        FileFound::Missing => {
            if history.ready {
                verdict.violation(finding(
                    Rule::FilePresent,
                    format!("data file {name} is missing although it was created and synced before READY"),
                ));
            }
            None
        }
        FileFound::Unreadable { size_bytes, reason } => {
            if let Some(size_bytes) = size_bytes {
                sizes.check(verdict, file_index, *size_bytes);
            }
            let size = size_bytes.map_or("of unknown size".to_string(), |n| format!("{n} bytes"));
            verdict.violation(finding(
                Rule::FileReadable,
                format!("the recovered data file {name} ({size}) could not be read: {reason}"),
            ));
            None
        }
    }
}

/// Findings the workload reported live, over the whole run: they do not
/// depend on a crash state, so a power-loss trial judges them once.
pub fn live_findings(protocol: &ProtocolLog) -> Vec<Finding> {
    let mut findings = Vec::new();
    for event in &protocol.events {
        let found = match event {
            record::Event::Incoherent {
                file,
                offset_bytes,
                how,
            } => finding(
                Rule::Coherent,
                format!("file {file} at byte {offset_bytes}: {how}: the mapping and read()/write() disagreed"),
            ),
            record::Event::SeenBad { seq, slot, why } => Finding {
                slot: Some(*slot),
                found_seq: Some(*seq),
                ..finding(
                    Rule::ConsumerSeesCommitted,
                    format!("the consumer read published record {seq} in slot {slot}: {why}"),
                )
            },
            _ => continue,
        };
        if findings.len() < FINDINGS_MAX {
            findings.push(found);
        }
    }
    findings
}

/// What a data file's size may be and must be.
struct SizeRules {
    /// Largest size each file was ever given.
    max_bytes: Vec<u64>,
    /// Smallest size each file may have: its synced initial size once READY
    /// was given, and (growth, `linux`) the size every acked record needs.
    min_bytes: Vec<u64>,
    /// What `min_bytes` rests on, for the finding.
    min_reason: Vec<String>,
}

impl SizeRules {
    fn new(params: &WorkloadParams, geometry: &record::Geometry, history: &History, profile: Profile) -> SizeRules {
        let files = geometry.files as usize;
        let mut max_bytes = vec![geometry.initial_size_bytes; files];
        for &(file, size) in history.grown {
            let max = &mut max_bytes[file as usize];
            *max = (*max).max(size);
        }
        let ready_min = if history.ready { geometry.initial_size_bytes } else { 0 };
        let mut min_bytes = vec![ready_min; files];
        let mut min_reason = vec!["it was sized and synced before READY".to_string(); files];
        // Growth: Linux's msync is fdatasync over the range, so the size
        // that makes the synced data readable is durable too; POSIX
        // promises only the data.
        if geometry.growth_step_bytes > 0 && profile == Profile::Linux {
            for seq in history.acked_records() {
                let slot = history.slot_of(seq).expect("acked records were begun");
                let (file, offset) = geometry.locate(slot, params.record_size_bytes);
                let end = offset + u64::from(params.record_size_bytes);
                if end > min_bytes[file as usize] {
                    min_bytes[file as usize] = end;
                    min_reason[file as usize] =
                        format!("acked record {seq} ends there, and Linux's msync persists the size");
                }
            }
        }
        SizeRules {
            max_bytes,
            min_bytes,
            min_reason,
        }
    }

    fn check(&self, verdict: &mut Verdict, file: u32, found_bytes: u64) {
        let (max, min) = (self.max_bytes[file as usize], self.min_bytes[file as usize]);
        if found_bytes > max {
            verdict.violation(finding(
                Rule::SizeNotGrown,
                format!("file {file} is {found_bytes} bytes, the workload never made it larger than {max}"),
            ));
        }
        if found_bytes < min {
            verdict.violation(finding(
                Rule::SizeDurable,
                format!(
                    "file {file} is {found_bytes} bytes, but it must be at least {min}: {}",
                    self.min_reason[file as usize]
                ),
            ));
        }
    }
}

/// An ACK whose last covering msync before it failed: the application was
/// told the record is durable when the call that was to make it so
/// returned an error.
fn check_no_ack_after_failed_sync(
    verdict: &mut Verdict,
    geometry: &record::Geometry,
    history: &History,
    params: &WorkloadParams,
) {
    if history.msyncs.iter().all(|m| m.errno == 0) {
        return;
    }
    let mut acked: Vec<u64> = history.acked_records().collect();
    acked.sort_unstable();
    for seq in acked {
        let slot = history.slot_of(seq).expect("acked records were begun");
        let (file, offset) = geometry.locate(slot, params.record_size_bytes);
        let len = u64::from(params.record_size_bytes);
        let Some(ack_at) = history.ack_event_of(seq) else {
            continue;
        };
        let last = history
            .msyncs
            .iter()
            .rev()
            .filter(|m| m.event_index < ack_at)
            .find(|m| m.covers(file, offset, len));
        if let Some(call) = last.filter(|m| m.errno != 0) {
            verdict.violation(Finding {
                slot: Some(slot),
                expected_seq: Some(seq),
                covered_by: Some(call.describe()),
                ..finding(
                    Rule::NoAckAfterFailedSync,
                    format!("record {seq} was acked although the msync that covered it failed"),
                )
            });
        }
    }
}

/// Wal: a data page holding transaction `t`'s record (seq `2t + 1`) must
/// find in its log slot (`t % log_slots`) the log record `2t` or a later
/// one: the log was durable before the data page changed. A log slot that
/// a later transaction has begun to reuse may hold anything its own rules
/// allow (torn between versions, say): that transaction began only after
/// `t` was complete, data page included. A torn data page is not judged
/// here (which of its versions reached the disk is not known).
fn check_wal_order(verdict: &mut Verdict, geometry: &record::Geometry, history: &History, params: &WorkloadParams) {
    let record = u64::from(params.record_size_bytes);
    let slots = verdict.slots.clone();
    for (slot, state) in slots.iter().enumerate().skip(geometry.log_slots as usize) {
        let Some(data_seq) = state.found_seq() else { continue };
        let t = data_seq / 2;
        let (log_slot, log_seq) = (t % geometry.log_slots, 2 * t);
        let log_state = slots[log_slot as usize];
        let reused = history.versions_in(log_slot).iter().any(|&seq| seq > log_seq);
        let explained = reused || log_state.found_seq().is_some_and(|found| found >= log_seq);
        if !explained {
            let found = match log_state.found_seq() {
                Some(seq) => format!("log record {seq}"),
                None => format!("{log_state:?}"),
            };
            verdict.violation(Finding {
                slot: Some(slot as u64),
                expected_seq: Some(log_seq),
                found_seq: Some(data_seq),
                ..finding(
                    Rule::WalOrder,
                    format!(
                        "data page slot {slot} holds transaction {t} (record {data_seq}), but its log slot \
                         {log_slot} (byte {}) holds {found}, not log record {log_seq} or a later one: the data \
                         reached the disk before its log",
                        log_slot * record
                    ),
                )
            });
        }
    }
}

/// Whether `bytes` are all zeros, 64 at a time (a byte loop with an early
/// exit does not vectorise, and most slots of a short run are zeros).
fn is_zeros(bytes: &[u8]) -> bool {
    bytes
        .chunks(64)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// A version a slot may hold: zeros (never written) or a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Zeros,
    Seq(u64),
}

struct SlotContext<'a> {
    params: &'a WorkloadParams,
    geometry: record::Geometry,
    history: &'a History<'a>,
    record_size: usize,
    scratch: Vec<u8>,
}

impl<'a> SlotContext<'a> {
    fn new(params: &'a WorkloadParams, history: &'a History) -> Self {
        let record_size = params.record_size_bytes as usize;
        SlotContext {
            params,
            geometry: params.geometry(),
            history,
            record_size,
            scratch: vec![0; record_size],
        }
    }

    fn expected_bytes(&mut self, version: Version) -> &[u8] {
        match version {
            Version::Zeros => self.scratch.fill(0),
            Version::Seq(seq) => {
                let header = RecordHeader {
                    record_size_bytes: self.params.record_size_bytes,
                    seq,
                    slot: self.history.slot_of(seq).expect("only begun records are expected"),
                    seed: self.params.seed,
                };
                layout::encode(&header, &mut self.scratch);
            }
        }
        &self.scratch
    }

    /// The msync that had promised acked record `seq` of `slot`, or that
    /// none did (when the workload reported its msync calls at all).
    fn covering(&self, seq: u64, slot: u64) -> Option<String> {
        let (file, offset) = self.geometry.locate(slot, self.params.record_size_bytes);
        match self
            .history
            .covering_msync(seq, file, offset, u64::from(self.params.record_size_bytes))
        {
            Some(call) => Some(call.describe()),
            None if self.history.msyncs.is_empty() => None,
            None => Some("none: no successful msync before its ACK covered the record".into()),
        }
    }

    /// Judges one slot, found at byte `start` of its file. `promised`: the
    /// mode promises durability. A slot past the file's end is counted
    /// lost but left to the size rule.
    fn judge_slot(&mut self, slot: u64, file: &[u8], start: usize, promised: bool, verdict: &mut Verdict) -> SlotState {
        let begun = self.history.versions_in(slot).to_vec();
        // The floor: the newest acked version, the oldest the slot may still
        // show. Falling below it is a violation where durability was promised
        // and an observation where it was not.
        let floor_at = begun.iter().rposition(|&seq| self.history.is_acked(seq));
        let floor = floor_at.map(|i| begun[i]);
        let allowed: Vec<Version> = match floor_at {
            Some(i) => begun[i..].iter().copied().map(Version::Seq).collect(),
            None => std::iter::once(Version::Zeros)
                .chain(begun.iter().copied().map(Version::Seq))
                .collect(),
        };
        let Some(found) = file.get(start..start + self.record_size) else {
            if let Some(seq) = floor {
                verdict.counts.lost += 1;
                let reason = "the slot lies past the end of the recovered file (see the size rule)".to_string();
                verdict.observation(Finding {
                    covered_by: self.covering(seq, slot),
                    hex_excerpt: None,
                    expected_hex: None,
                    ..lost_finding(slot, seq, None, reason, String::new())
                });
            }
            return SlotState::Missing;
        };

        let state = match self.identify(slot, found) {
            Ok(version) if allowed.contains(&version) => self.classify(version, begun.last().copied()),
            Ok(version) => self.below_floor(slot, found, version, floor, promised, verdict),
            Err(Identify::Foreign(header)) => {
                verdict.violation(Finding {
                    item: None,
                    rule: Rule::ForeignRecord,
                    slot: Some(slot),
                    expected_seq: floor,
                    found_seq: Some(header.seq),
                    reason: format!(
                        "a well-formed record (seed {:#x}, seq {}, slot {}) that this run never wrote here",
                        header.seed, header.seq, header.slot
                    ),
                    hex_excerpt: Some(hex::excerpt(found, 0, 40)),
                    expected_hex: None,
                    covered_by: None,
                });
                SlotState::Bad
            }
            Err(Identify::Unreadable) => self.judge_torn(slot, found, &allowed, floor, &begun, promised, verdict),
        };
        match state {
            SlotState::Intact { .. } => verdict.counts.intact += 1,
            SlotState::InFlightNew { .. } => verdict.counts.in_flight_new += 1,
            SlotState::InFlightOld { .. } => verdict.counts.in_flight_old += 1,
            SlotState::Torn => verdict.counts.torn += 1,
            SlotState::Lost { .. } => verdict.counts.lost += 1,
            _ => {}
        }
        state
    }

    /// Which version the bytes are, if any: zeros, or the exact bytes of a
    /// record of this run that belongs in this slot and was begun.
    fn identify(&mut self, slot: u64, found: &[u8]) -> Result<Version, Identify> {
        if is_zeros(found) {
            return Ok(Version::Zeros);
        }
        // The common case first: the record this slot began that the bytes
        // name, byte for byte (its crc among them, so no decode needed).
        let claimed = layout::claimed_seq(found).filter(|&seq| self.history.slot_of(seq) == Some(slot));
        if let Some(seq) = claimed {
            if self.expected_bytes(Version::Seq(seq)) == found {
                return Ok(Version::Seq(seq));
            }
        }
        let header = layout::decode(found).map_err(|_| Identify::Unreadable)?;
        let p = self.params;
        let belongs = header.seed == p.seed
            && header.record_size_bytes == p.record_size_bytes
            && header.slot == slot
            && self.history.slot_of(header.seq) == Some(slot);
        if !belongs || self.expected_bytes(Version::Seq(header.seq)) != found {
            return Err(Identify::Foreign(header));
        }
        Ok(Version::Seq(header.seq))
    }

    /// Names an allowed version (at or above the floor). With a newer
    /// record in flight, the floor version is that record's "old".
    fn classify(&self, version: Version, newest_begun: Option<u64>) -> SlotState {
        let Some(newest) = newest_begun else {
            return SlotState::Unwritten;
        };
        let newest_in_flight = !self.history.is_acked(newest);
        match version {
            Version::Seq(seq) if seq == newest && newest_in_flight => SlotState::InFlightNew { seq },
            Version::Seq(seq) if seq == newest => SlotState::Intact { seq },
            Version::Seq(seq) if newest_in_flight => SlotState::InFlightOld { found_seq: Some(seq) },
            Version::Seq(seq) => SlotState::Intact { seq },
            Version::Zeros => SlotState::InFlightOld { found_seq: None },
        }
    }

    /// A whole version of this slot (or zeros) older than the newest acked.
    fn below_floor(
        &mut self,
        slot: u64,
        found: &[u8],
        version: Version,
        floor: Option<u64>,
        promised: bool,
        verdict: &mut Verdict,
    ) -> SlotState {
        let expected = floor.expect("a version is only disallowed below an acked floor");
        let found_seq = match version {
            Version::Seq(s) => Some(s),
            Version::Zeros => None,
        };
        let diff_at = first_difference(self.expected_bytes(Version::Seq(expected)), found);
        let reason = match found_seq {
            Some(s) => format!("acked record {expected} was lost: the slot holds the older record {s}"),
            None => format!("acked record {expected} was lost: the slot holds zeros"),
        };
        let excerpt = hex::excerpt(found, diff_at & !15, 32);
        let expected_hex = hex::excerpt(self.expected_bytes(Version::Seq(expected)), diff_at & !15, 32);
        let lost = Finding {
            covered_by: self.covering(expected, slot),
            expected_hex: Some(expected_hex),
            ..lost_finding(slot, expected, found_seq, reason, excerpt)
        };
        verdict.judge(promised, lost);
        SlotState::Lost {
            expected_seq: expected,
            found_seq,
        }
    }

    /// Bytes that are not one whole version, judged byte by byte. A slot
    /// with a record in flight (more than one allowed version) may mix the
    /// allowed versions at any granularity: pages of a shared mapping are
    /// not held stable during writeback, so a sector written while the
    /// application changed it can hold old and new bytes. An acked or
    /// never-begun slot has one allowed version, so every byte must be that
    /// version's. Bytes of an older version of the slot mean the acked
    /// record was partly lost; bytes of no version are stale.
    #[allow(clippy::too_many_arguments)]
    fn judge_torn(
        &mut self,
        slot: u64,
        found: &[u8],
        allowed: &[Version],
        floor: Option<u64>,
        begun: &[u64],
        promised: bool,
        verdict: &mut Verdict,
    ) -> SlotState {
        let candidates: Vec<(bool, Vec<u8>)> = std::iter::once(Version::Zeros)
            .chain(begun.iter().copied().map(Version::Seq))
            .map(|v| (allowed.contains(&v), self.expected_bytes(v).to_vec()))
            .collect();
        let mut older_at = None;
        for (i, &byte) in found.iter().enumerate() {
            let held_by = |want_allowed: bool| {
                candidates
                    .iter()
                    .any(|(ok, bytes)| *ok == want_allowed && bytes[i] == byte)
            };
            if held_by(true) {
                continue;
            }
            if held_by(false) {
                older_at = older_at.or(Some(i));
                continue;
            }
            verdict.violation(Finding {
                item: None,
                rule: Rule::StaleBytes,
                slot: Some(slot),
                expected_seq: floor,
                found_seq: None,
                reason: format!(
                    "byte {i} (sector {}) of the slot holds a value that no version of this slot ever had there",
                    i / SECTOR_SIZE_BYTES
                ),
                hex_excerpt: Some(hex::excerpt(found, i & !15, 32)),
                expected_hex: None,
                covered_by: None,
            });
            return SlotState::Bad;
        }
        if let Some(at) = older_at {
            let expected = floor.expect("older bytes are only disallowed below an acked floor");
            let reason = format!(
                "acked record {expected} is torn: byte {at} (sector {}) holds an older version",
                at / SECTOR_SIZE_BYTES
            );
            let excerpt = hex::excerpt(found, at & !15, 32);
            let expected_hex = hex::excerpt(self.expected_bytes(Version::Seq(expected)), at & !15, 32);
            let lost = Finding {
                covered_by: self.covering(expected, slot),
                expected_hex: Some(expected_hex),
                ..lost_finding(slot, expected, None, reason, excerpt)
            };
            verdict.judge(promised, lost);
            return SlotState::Lost {
                expected_seq: expected,
                found_seq: None,
            };
        }
        SlotState::Torn
    }
}

fn lost_finding(slot: u64, expected: u64, found_seq: Option<u64>, reason: String, hex_excerpt: String) -> Finding {
    Finding {
        item: None,
        rule: Rule::AckedRecordLost,
        slot: Some(slot),
        expected_seq: Some(expected),
        found_seq,
        reason,
        hex_excerpt: Some(hex_excerpt),
        expected_hex: None,
        covered_by: None,
    }
}

enum Identify {
    Unreadable,
    Foreign(RecordHeader),
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pattern_tests;
