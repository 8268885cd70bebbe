//! Workload parameters and their kernel-command-line form.
//!
//! The controller renders [`WorkloadParams`] as `crashlab.key=value` words on
//! the guest kernel command line; the workload parses them back from
//! `/proc/cmdline`. Both directions live here so they cannot drift apart.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::layout;
use crate::pattern::{self, Pattern};

/// How the workload makes a record durable before acknowledging it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DurabilityMode {
    /// `msync(MS_SYNC)` over the record's pages after each record.
    MsSync,
    /// N records, then one `msync(MS_SYNC)` over their range.
    Batch(u32),
    /// `msync(MS_ASYNC)` only: schedules writeback, promises nothing.
    MsAsync,
    /// `msync(MS_ASYNC)` then `fsync(fd)`.
    MsAsyncFsync,
    /// `msync(MS_ASYNC)` then `fdatasync(fd)`.
    MsAsyncFdatasync,
    /// No sync call at all: a control.
    None,
}

pub const BATCH_MAX_RECORDS: u32 = 4096;

impl DurabilityMode {
    /// Whether an acknowledgement under this mode promises durability.
    pub fn promises_durability(self) -> bool {
        match self {
            Self::MsSync | Self::Batch(_) | Self::MsAsyncFsync | Self::MsAsyncFdatasync => true,
            Self::MsAsync | Self::None => false,
        }
    }

    /// Records covered by one durability call.
    pub fn batch_records(self) -> u32 {
        match self {
            Self::Batch(n) => n,
            _ => 1,
        }
    }

    pub const ALL_NAMES: &'static str = "ms-sync, batch:N, ms-async, ms-async-fsync, ms-async-fdatasync, none";
}

impl fmt::Display for DurabilityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MsSync => write!(f, "ms-sync"),
            Self::Batch(n) => write!(f, "batch:{n}"),
            Self::MsAsync => write!(f, "ms-async"),
            Self::MsAsyncFsync => write!(f, "ms-async-fsync"),
            Self::MsAsyncFdatasync => write!(f, "ms-async-fdatasync"),
            Self::None => write!(f, "none"),
        }
    }
}

impl FromStr for DurabilityMode {
    type Err = ParamsError;
    fn from_str(s: &str) -> Result<Self, ParamsError> {
        let mode = match s {
            "ms-sync" => Self::MsSync,
            "ms-async" => Self::MsAsync,
            "ms-async-fsync" => Self::MsAsyncFsync,
            "ms-async-fdatasync" => Self::MsAsyncFdatasync,
            "none" => Self::None,
            _ => match s.strip_prefix("batch:").map(str::parse::<u32>) {
                Some(Ok(n)) if (1..=BATCH_MAX_RECORDS).contains(&n) => Self::Batch(n),
                Some(_) => {
                    return Err(ParamsError(format!(
                        "batch size in {s:?} must be a number from 1 to {BATCH_MAX_RECORDS}, e.g. batch:8"
                    )))
                }
                None => {
                    return Err(ParamsError(format!(
                        "unknown durability mode {s:?}: use one of {}",
                        Self::ALL_NAMES
                    )))
                }
            },
        };
        Ok(mode)
    }
}

impl From<DurabilityMode> for String {
    fn from(m: DurabilityMode) -> String {
        m.to_string()
    }
}

impl TryFrom<String> for DurabilityMode {
    type Error = ParamsError;
    fn try_from(s: String) -> Result<Self, ParamsError> {
        s.parse()
    }
}

/// Deliberate workload bugs: each acknowledges a record that is not
/// durable, so a tester worth its name must catch it. They exist to measure
/// the checks' sensitivity (`cargo xtask sensitivity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum PlantedBug {
    /// Acknowledge each record before its durability call, not after.
    AckBeforeSync,
    /// Skip the durability call of one batch in `every` (the first of each
    /// `every`), acknowledging it anyway.
    SkipSync { every: u32 },
    /// Sync the page before the record's page (the file's last page for
    /// the first one) instead of the record's own.
    SyncWrongRange,
    /// Use `MS_ASYNC` where `MS_SYNC` was promised, for one batch in
    /// `every` (the first of each `every`).
    AsyncInsteadOfSync { every: u32 },
    /// Wal pattern: write and msync the data page before its log record.
    DataBeforeLog,
}

/// Default N of "one in N" planted bugs.
pub const PLANTED_BUG_DEFAULT_EVERY: u32 = 4;
pub const PLANTED_BUG_EVERY_MAX: u32 = 1_000_000;

impl PlantedBug {
    pub const ALL_NAMES: &'static str =
        "ack-before-sync, skip-sync[:N], sync-wrong-range, async-instead-of-sync[:N], data-before-log (wal)";

    /// Whether the bug applies to durability call number `call` (from 0).
    pub fn hits(self, call: u64) -> bool {
        match self {
            Self::SkipSync { every } | Self::AsyncInsteadOfSync { every } => call.is_multiple_of(u64::from(every)),
            Self::AckBeforeSync | Self::SyncWrongRange | Self::DataBeforeLog => true,
        }
    }
}

impl fmt::Display for PlantedBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AckBeforeSync => write!(f, "ack-before-sync"),
            Self::SkipSync { every } => write!(f, "skip-sync:{every}"),
            Self::SyncWrongRange => write!(f, "sync-wrong-range"),
            Self::AsyncInsteadOfSync { every } => write!(f, "async-instead-of-sync:{every}"),
            Self::DataBeforeLog => write!(f, "data-before-log"),
        }
    }
}

impl FromStr for PlantedBug {
    type Err = ParamsError;
    fn from_str(s: &str) -> Result<Self, ParamsError> {
        let (name, every) = match s.split_once(':') {
            Some((name, n)) => match n.parse::<u32>() {
                Ok(n) if (1..=PLANTED_BUG_EVERY_MAX).contains(&n) => (name, Some(n)),
                _ => {
                    return Err(ParamsError(format!(
                        "planted bug {s:?}: N must be a number from 1 to {PLANTED_BUG_EVERY_MAX}"
                    )))
                }
            },
            None => (s, None),
        };
        let bug = match (name, every) {
            ("ack-before-sync", None) => Self::AckBeforeSync,
            ("sync-wrong-range", None) => Self::SyncWrongRange,
            ("data-before-log", None) => Self::DataBeforeLog,
            ("skip-sync", n) => Self::SkipSync {
                every: n.unwrap_or(PLANTED_BUG_DEFAULT_EVERY),
            },
            ("async-instead-of-sync", n) => Self::AsyncInsteadOfSync {
                every: n.unwrap_or(PLANTED_BUG_DEFAULT_EVERY),
            },
            ("ack-before-sync" | "sync-wrong-range" | "data-before-log", Some(_)) => {
                return Err(ParamsError(format!("planted bug {name} takes no :N")))
            }
            _ => {
                return Err(ParamsError(format!(
                    "unknown planted bug {s:?}: use one of {}",
                    Self::ALL_NAMES
                )))
            }
        };
        Ok(bug)
    }
}

impl From<PlantedBug> for String {
    fn from(bug: PlantedBug) -> String {
        bug.to_string()
    }
}

impl TryFrom<String> for PlantedBug {
    type Error = ParamsError;
    fn try_from(s: String) -> Result<Self, ParamsError> {
        s.parse()
    }
}

pub use crate::error::ParamsError;

/// Hard limit on one trial's record count: bounds the protocol log and the
/// verifier's memory.
pub const RECORDS_MAX: u64 = 1 << 24;
/// Hard limit on the data file: the guest has little RAM and the check boot
/// copies the file out through a second disk.
pub const FILE_SIZE_MAX_BYTES: u64 = 1 << 30;

/// Everything the guest workload needs to know; nothing else reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadParams {
    pub mode: DurabilityMode,
    pub record_size_bytes: u32,
    /// Multiple of the record size; records wrap around when it is full.
    pub file_size_bytes: u64,
    /// Records to write before saying `DONE`.
    pub records: u64,
    /// Seeds the payload; differs per trial so foreign records are caught.
    pub seed: u64,
    pub planted_bug: Option<PlantedBug>,
    /// Crash point hook: after this many acks, print `HOLD` and do nothing
    /// more, so the host kills the VM at an exact point of the protocol.
    pub hold_after_acks: Option<u64>,
    /// Crash point hook for a program (`--crash-at`): at this occurrence of
    /// its `POINT name`, print `HOLD` and stop it, as at an ack count.
    #[serde(default)]
    pub hold_at_point: Option<crate::items::NamedPoint>,
    /// Power-loss capture: byte offset on the test disk (`ACK_DEVICE`) of
    /// the reserved ack area, past the filesystem's end. Each ack is also
    /// written there, with O_DIRECT, as one sector (`layout::ack`).
    pub ack_area_offset_bytes: Option<u64>,
    /// How records are written, synced and acknowledged.
    #[serde(default)]
    pub pattern: Pattern,
    /// Write errors are injected (pattern records): a failed msync is
    /// reported with what follows it (`FSYNC`, `READBACK`), its records are
    /// not acked, and the run goes on, instead of ending at the first error.
    #[serde(default)]
    pub io_errors: bool,
}

/// The disk the test filesystem lives on, as the guest sees it.
pub const ACK_DEVICE: &str = "/dev/vda";

const PREFIX: &str = "crashlab.";

impl WorkloadParams {
    /// Slots per data file.
    pub fn slots(&self) -> u64 {
        self.file_size_bytes / u64::from(self.record_size_bytes)
    }

    pub fn geometry(&self) -> pattern::Geometry {
        pattern::Geometry::of(self.pattern, self.record_size_bytes, self.file_size_bytes)
    }

    /// Validates every field; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), ParamsError> {
        layout::check_record_size(self.record_size_bytes as usize).map_err(ParamsError)?;
        let rs = u64::from(self.record_size_bytes);
        if self.file_size_bytes == 0 || !self.file_size_bytes.is_multiple_of(rs) {
            return Err(ParamsError(format!(
                "file size {} bytes must be a non-zero multiple of the record size {rs}",
                self.file_size_bytes
            )));
        }
        if self.file_size_bytes > FILE_SIZE_MAX_BYTES {
            return Err(ParamsError(format!(
                "file size {} bytes exceeds the limit of {FILE_SIZE_MAX_BYTES}",
                self.file_size_bytes
            )));
        }
        if self.records == 0 || self.records > RECORDS_MAX {
            return Err(ParamsError(format!(
                "records per trial must be between 1 and {RECORDS_MAX}, got {}",
                self.records
            )));
        }
        if let DurabilityMode::Batch(n) = self.mode {
            if u64::from(n) > self.slots() {
                return Err(ParamsError(format!(
                    "batch:{n} spans more records than the file's {} slots: lower N or grow the file",
                    self.slots()
                )));
            }
        }
        if self
            .ack_area_offset_bytes
            .is_some_and(|o| o % crate::layout::SECTOR_SIZE_BYTES as u64 != 0)
        {
            return Err(ParamsError("the ack area must start on a 512-byte boundary".into()));
        }
        if self.hold_after_acks == Some(0) {
            return Err(ParamsError("hold_after_acks must be at least 1".into()));
        }
        if self.io_errors && self.pattern != Pattern::Records {
            return Err(ParamsError(
                "write errors are injected into --pattern records only".into(),
            ));
        }
        if self.planted_bug == Some(PlantedBug::DataBeforeLog) && self.pattern != Pattern::Wal {
            return Err(ParamsError(
                "--planted-bug data-before-log belongs to --pattern wal".into(),
            ));
        }
        self.validate_pattern()
    }

    /// Renders the parameters as kernel command-line words.
    pub fn to_kernel_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("{PREFIX}mode={}", self.mode),
            format!("{PREFIX}record_size={}", self.record_size_bytes),
            format!("{PREFIX}file_size={}", self.file_size_bytes),
            format!("{PREFIX}records={}", self.records),
            format!("{PREFIX}seed={}", self.seed),
            format!("{PREFIX}pattern={}", self.pattern),
        ];
        if self.io_errors {
            args.push(format!("{PREFIX}io_errors=1"));
        }
        if let Some(bug) = self.planted_bug {
            args.push(format!("{PREFIX}planted_bug={bug}"));
        }
        if let Some(n) = self.hold_after_acks {
            args.push(format!("{PREFIX}hold_after_acks={n}"));
        }
        if let Some(point) = &self.hold_at_point {
            args.push(format!("{PREFIX}hold_at_point={point}"));
        }
        if let Some(offset) = self.ack_area_offset_bytes {
            args.push(format!("{PREFIX}ack_offset={offset}"));
        }
        args
    }

    /// Parses the `crashlab.*` words of a kernel command line; other words are
    /// ignored, unknown `crashlab.` keys of the workload are an error.
    pub fn from_kernel_cmdline(cmdline: &str) -> Result<Self, ParamsError> {
        let mut mode = None;
        let mut record_size = None;
        let mut file_size = None;
        let mut records = None;
        let mut seed = None;
        let mut planted_bug = None;
        let mut hold_after_acks = None;
        let mut hold_at_point = None;
        let mut ack_area_offset_bytes = None;
        let mut pattern = Pattern::default();
        let mut io_errors = false;
        for word in cmdline.split_ascii_whitespace() {
            let Some(kv) = word.strip_prefix(PREFIX) else { continue };
            let (key, value) = kv
                .split_once('=')
                .ok_or_else(|| ParamsError(format!("{word:?} has no '=value'")))?;
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| ParamsError(format!("{PREFIX}{key}={v}: not a number")))
            };
            match key {
                "mode" => mode = Some(value.parse()?),
                "record_size" => record_size = Some(num(value)?),
                "file_size" => file_size = Some(num(value)?),
                "records" => records = Some(num(value)?),
                "seed" => seed = Some(num(value)?),
                "planted_bug" => planted_bug = Some(value.parse()?),
                "hold_after_acks" => hold_after_acks = Some(num(value)?),
                "hold_at_point" => hold_at_point = Some(value.parse().map_err(ParamsError)?),
                "ack_offset" => ack_area_offset_bytes = Some(num(value)?),
                "pattern" => pattern = value.parse()?,
                "io_errors" => io_errors = num(value)? == 1,
                // Keys read by the guest's init script, not by the workload.
                "role" | "fs" | "mount_opts" | "fsck" | "nonce" | "files" | "export_stride_mib" | "trace"
                | "program" => {}
                _ => return Err(ParamsError(format!("unknown parameter {PREFIX}{key}"))),
            }
        }
        let missing = |name: &str| ParamsError(format!("kernel command line lacks {PREFIX}{name}"));
        let record_size = record_size.ok_or_else(|| missing("record_size"))?;
        let params = WorkloadParams {
            mode: mode.ok_or_else(|| missing("mode"))?,
            record_size_bytes: u32::try_from(record_size)
                .map_err(|_| ParamsError(format!("record size {record_size} too large")))?,
            file_size_bytes: file_size.ok_or_else(|| missing("file_size"))?,
            records: records.ok_or_else(|| missing("records"))?,
            seed: seed.ok_or_else(|| missing("seed"))?,
            planted_bug,
            hold_after_acks,
            hold_at_point,
            ack_area_offset_bytes,
            pattern,
            io_errors,
        };
        params.validate()?;
        Ok(params)
    }
}

impl WorkloadParams {
    /// Checks a pattern's own requirements on the parameters.
    fn validate_pattern(&self) -> Result<(), ParamsError> {
        let (params, g) = (self, self.geometry());
        let record = u64::from(params.record_size_bytes);
        if params.pattern != Pattern::Records && params.mode != DurabilityMode::MsSync {
            return Err(ParamsError(format!(
                "--pattern {} makes its own durability calls (msync with MS_SYNC): leave --mode at ms-sync \
                 (--mode {} applies to --pattern records)",
                params.pattern, params.mode
            )));
        }
        match params.pattern {
            Pattern::PartialMsync if params.file_size_bytes < pattern::PARTIAL_MSYNC_MIN_FILE_BYTES => Err(ParamsError(format!(
                "--pattern partial-msync syncs part of a mapping of at least 1 MiB: raise --file-size to 1M or more \
                 (it is {} bytes)",
                params.file_size_bytes
            ))),
            Pattern::PartialMsync | Pattern::Growth | Pattern::Several
                if !params.file_size_bytes.is_multiple_of(pattern::PAGE_SIZE_BYTES) =>
            {
                Err(ParamsError(format!(
                    "--pattern {} needs a file size that is a multiple of the {}-byte page",
                    params.pattern,
                    pattern::PAGE_SIZE_BYTES
                )))
            }
            Pattern::Wal if g.slots_per_file < 2 => Err(ParamsError(
                "--pattern wal needs room for a log and data pages: at least 2 records in the file".into(),
            )),
            Pattern::Wal if record > pattern::PAGE_SIZE_BYTES || !pattern::PAGE_SIZE_BYTES.is_multiple_of(record) => Err(ParamsError(
                "--pattern wal needs records that divide a page (512 to 4096 bytes), so each record's msync covers it alone"
                    .into(),
            )),
            Pattern::Several if g.slots_per_file < 2 * u64::from(g.writers) => Err(ParamsError(
                "--pattern several needs at least 4 records per file (two writers, disjoint ranges)".into(),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WorkloadParams {
        WorkloadParams {
            mode: DurabilityMode::Batch(8),
            record_size_bytes: 4096,
            file_size_bytes: 4 << 20,
            records: 3000,
            seed: 0xDEAD_BEEF,
            planted_bug: Some(PlantedBug::AckBeforeSync),
            hold_after_acks: Some(17),
            hold_at_point: None,
            ack_area_offset_bytes: Some(60 << 20),
            pattern: Pattern::Records,
            io_errors: false,
        }
    }

    #[test]
    fn kernel_args_round_trip() {
        let p = WorkloadParams {
            pattern: Pattern::Several,
            planted_bug: None,
            mode: DurabilityMode::MsSync,
            ..sample()
        };
        let cmdline = format!("console=ttyS0 {} crashlab.role=workload", p.to_kernel_args().join(" "));
        assert_eq!(WorkloadParams::from_kernel_cmdline(&cmdline), Ok(p));
        let p = sample();
        let cmdline = format!(
            "console=ttyS0 quiet {} crashlab.role=workload",
            p.to_kernel_args().join(" ")
        );
        assert_eq!(WorkloadParams::from_kernel_cmdline(&cmdline), Ok(p));
    }

    #[test]
    fn modes_parse_and_print() {
        for name in [
            "ms-sync",
            "batch:1",
            "batch:64",
            "ms-async",
            "ms-async-fsync",
            "ms-async-fdatasync",
            "none",
        ] {
            assert_eq!(name.parse::<DurabilityMode>().unwrap().to_string(), name);
        }
        assert!("batch:0".parse::<DurabilityMode>().is_err());
        assert!("batch:x".parse::<DurabilityMode>().is_err());
        let err = "fsync".parse::<DurabilityMode>().unwrap_err();
        assert!(err.0.contains("ms-sync"), "error lists the valid modes: {err}");
    }

    #[test]
    fn validation_names_the_problem() {
        let bad = WorkloadParams {
            record_size_bytes: 0,
            ..sample()
        };
        assert!(bad.validate().unwrap_err().0.contains("record size 0"));
        let bad = WorkloadParams {
            file_size_bytes: 4097,
            ..sample()
        };
        assert!(bad.validate().unwrap_err().0.contains("multiple of the record size"));
        let bad = WorkloadParams {
            mode: DurabilityMode::Batch(4000),
            file_size_bytes: 4096 * 10,
            ..sample()
        };
        assert!(bad.validate().unwrap_err().0.contains("batch:4000"));
        assert!(WorkloadParams::from_kernel_cmdline("crashlab.mode=ms-sync").is_err());
        assert!(WorkloadParams::from_kernel_cmdline("crashlab.bogus=1")
            .unwrap_err()
            .0
            .contains("bogus"));
    }

    #[test]
    fn planted_bugs_parse_print_and_explain() {
        for name in [
            "ack-before-sync",
            "skip-sync:3",
            "sync-wrong-range",
            "async-instead-of-sync:1",
        ] {
            assert_eq!(name.parse::<PlantedBug>().unwrap().to_string(), name);
        }
        assert_eq!(
            "skip-sync".parse::<PlantedBug>().unwrap(),
            PlantedBug::SkipSync { every: 4 }
        );
        assert!("skip-sync:0".parse::<PlantedBug>().unwrap_err().0.contains("from 1"));
        assert!("ack-before-sync:2"
            .parse::<PlantedBug>()
            .unwrap_err()
            .0
            .contains("no :N"));
        assert!("lie".parse::<PlantedBug>().unwrap_err().0.contains("sync-wrong-range"));
        let bug = PlantedBug::SkipSync { every: 3 };
        assert_eq!((0..7).filter(|&c| bug.hits(c)).collect::<Vec<_>>(), vec![0, 3, 6]);
        let json = serde_json::to_string(&bug).unwrap();
        assert_eq!(json, "\"skip-sync:3\"");
    }

    #[test]
    fn durability_promises() {
        assert!(DurabilityMode::MsSync.promises_durability());
        assert!(DurabilityMode::Batch(4).promises_durability());
        assert!(DurabilityMode::MsAsyncFsync.promises_durability());
        assert!(DurabilityMode::MsAsyncFdatasync.promises_durability());
        assert!(!DurabilityMode::MsAsync.promises_durability());
        assert!(!DurabilityMode::None.promises_durability());
    }

    #[test]
    fn each_pattern_says_what_it_needs() {
        let params = |pattern: Pattern, file_size_bytes: u64| WorkloadParams {
            mode: DurabilityMode::MsSync,
            record_size_bytes: 4096,
            file_size_bytes,
            records: 100,
            seed: 1,
            planted_bug: None,
            hold_after_acks: None,
            hold_at_point: None,
            ack_area_offset_bytes: None,
            pattern,
            io_errors: false,
        };
        let batch = WorkloadParams {
            mode: DurabilityMode::Batch(4),
            ..params(Pattern::Wal, 64 << 10)
        };
        assert!(batch
            .validate_pattern()
            .unwrap_err()
            .0
            .contains("leave --mode at ms-sync"));
        let err = params(Pattern::PartialMsync, 512 << 10).validate_pattern().unwrap_err();
        assert!(err.0.contains("at least 1 MiB"), "{err}");
        assert!(params(Pattern::PartialMsync, 1 << 20).validate_pattern().is_ok());
        assert!(params(Pattern::Wal, 4096).validate_pattern().is_err());
        assert!(params(Pattern::Several, 8192).validate_pattern().is_err());
    }
}
