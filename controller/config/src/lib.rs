//! A campaign's resolved configuration: plain data, validated once, written
//! verbatim into `campaign.json`, and renderable back into the command line
//! that reruns any one of its trials.

pub mod campaign_file;

use std::path::PathBuf;

use record::{DurabilityMode, Pattern, PlantedBug, WorkloadParams};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Filesystem {
    Ext4,
    Xfs,
    Btrfs,
    F2fs,
}

impl Filesystem {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
            Self::Btrfs => "btrfs",
            Self::F2fs => "f2fs",
        }
    }

    /// The mount options a run uses unless told otherwise.
    pub fn default_mount_opts(self) -> &'static str {
        match self {
            Self::Ext4 => "data=ordered",
            Self::Xfs | Self::Btrfs | Self::F2fs => "defaults",
        }
    }

    /// The mkfs options a run uses unless told otherwise. ext4: mke2fs
    /// picks its `small` profile (1 KiB blocks) for disks under 512 MiB,
    /// unlike any real disk; `-T default` gives what a real disk gets (4 KiB
    /// blocks, 256-byte inodes). `--mkfs-opts "-T small"` keeps 1 KiB.
    pub fn default_mkfs_opts(self) -> &'static str {
        match self {
            Self::Ext4 => "-T default",
            Self::Xfs | Self::Btrfs | Self::F2fs => "",
        }
    }

    /// The mkfs tool and the options crashlab always gives it (before the
    /// user's): no questions, quiet, and for ext4 no lazy initialisation, so
    /// that no background metadata writes run during the workload.
    pub fn mkfs_command(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::Ext4 => (
                "mkfs.ext4",
                &["-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
            ),
            Self::Xfs => ("mkfs.xfs", &["-f", "-q"]),
            Self::Btrfs => ("mkfs.btrfs", &["-f", "-q"]),
            Self::F2fs => ("mkfs.f2fs", &["-f", "-q"]),
        }
    }

    /// The disk size a run uses unless told otherwise: 64 MiB, or the
    /// filesystem's minimum if larger.
    pub fn default_disk_size_bytes(self) -> u64 {
        self.min_disk_size_bytes().max(64 << 20)
    }

    /// Smallest disk mkfs accepts for this filesystem, with room for the file.
    pub fn min_disk_size_bytes(self) -> u64 {
        match self {
            Self::Ext4 => 16 << 20,
            Self::Xfs => 300 << 20,
            Self::Btrfs => 128 << 20,
            Self::F2fs => 64 << 20,
        }
    }
}

/// Which kind of crash point a trial draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CrashPointKind {
    /// Right after a random number of acks (exact: the workload holds there).
    Acks,
    /// At a random delay after the workload reported READY.
    Delay,
    /// Each trial draws one of the two.
    Mixed,
    /// No kill: the workload runs to the end (under power loss, states are
    /// drawn from the whole log).
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Accel {
    /// Try KVM with a short sanity boot, fall back to TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CrashModel {
    /// SIGKILL of QEMU: the guest kernel's page cache is lost, every block
    /// write QEMU already handed to the host survives.
    KernelCrash,
    /// Writes not covered by a completed flush may be lost, reordered or
    /// torn: crash states built from a block-write log.
    PowerLoss,
}

/// Who recovers and reads a power-loss crash state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Checker {
    /// A long-lived checker VM: the guest kernel's own recovery.
    Kernel,
    /// ext4 only, on the host: e2fsck replays the journal, debugfs reads.
    Host,
    /// Both, comparing their verdicts state by state.
    Both,
    /// ext4 only: the host checker on every state, the kernel checker on a
    /// seeded sample (1 in TIER_KERNEL_EVERY) and on every state the host
    /// failed or handed to e2fsprogs; verdicts compared where both ran.
    Tiered,
}

impl Checker {
    /// As on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Checker::Kernel => "kernel",
            Checker::Host => "host",
            Checker::Both => "both",
            Checker::Tiered => "tiered",
        }
    }
}

/// `--checker tiered`: one state in this many (seeded) is also checked by
/// the kernel, whatever the host said.
pub const TIER_KERNEL_EVERY: u64 = 16;

/// Power loss, torn writes: the device's atomic write unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TearUnit {
    /// 512-byte sectors: a write may keep any of its sectors.
    #[default]
    Sector,
    /// 4 KiB pages, device-aligned (a 4Kn or 512e device): a write tears
    /// only between pages.
    Page,
    /// Either, chosen per state (each torn state records its unit).
    Both,
}

impl From<TearUnit> for blocklog::TearUnit {
    fn from(unit: TearUnit) -> blocklog::TearUnit {
        match unit {
            TearUnit::Sector => blocklog::TearUnit::Sector,
            TearUnit::Page => blocklog::TearUnit::Page,
            TearUnit::Both => blocklog::TearUnit::Both,
        }
    }
}

/// Power loss: which of a trial's crash states are checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Explore {
    /// A seeded sample of up to --state-budget states.
    #[default]
    Sample,
    /// Every distinct state of the model (each epoch's subsets up to 2^12
    /// per crash point, sampled above; torn variants with --torn-writes);
    /// --state-budget does not apply.
    Exhaustive,
}

/// How a checker VM hands the recovered data files to the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FileRead {
    /// The guest reports each file's extents (FIEMAP) and the host reads
    /// them from the recovered disk; a file that cannot be mapped is copied,
    /// and a seeded sample of states is read both ways and compared.
    #[default]
    Extents,
    /// The guest copies each file out through a second disk.
    Copy,
    /// Both, compared on every state (slow; for testing the extents path).
    Both,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignConfig {
    pub fs: Filesystem,
    pub mount_opts: String,
    /// Options given to mkfs after crashlab's own (`Filesystem::mkfs_command`),
    /// split at whitespace, as xfstests' MKFS_OPTIONS. Empty: the tool's
    /// defaults for the disk's size (campaigns from before the option).
    #[serde(default)]
    pub mkfs_opts: String,
    /// How records are written, synced and acknowledged.
    #[serde(default)]
    pub pattern: Pattern,
    pub mode: DurabilityMode,
    pub record_size_bytes: u32,
    pub file_size_bytes: u64,
    pub records_per_trial: u64,
    pub trials: u64,
    pub seed: u64,
    pub crash_model: CrashModel,
    pub crash_points: CrashPointKind,
    pub crash_delay_max_ms: u64,
    pub planted_bug: Option<PlantedBug>,
    /// Power loss: a planted device bug (states as a disk that breaks the
    /// flush contract would leave them).
    #[serde(default)]
    pub device_bug: Option<blocklog::DeviceBug>,
    pub profile: verifier::Profile,
    pub disk_size_bytes: u64,
    pub guest_memory_mib: u32,
    pub accel: Accel,
    pub boot_timeout_ms: u64,
    pub stall_timeout_ms: u64,
    pub trial_timeout_ms: u64,
    pub images_dir: PathBuf,
    /// The kernel built from source that the campaign runs on (the first
    /// digits of its build key, `cargo xtask kernel`): the images directory
    /// must hold exactly that build, so a rerun never runs another kernel
    /// under the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_build: Option<String>,
    pub keep_images: bool,
    /// Power loss: crash states to verify over the whole campaign.
    pub state_budget: u64,
    pub checker: Checker,
    /// Power loss, kernel checker: how the recovered files reach the host.
    #[serde(default)]
    pub read_files: FileRead,
    /// Power loss: also tear one write per state at 512-byte granularity.
    pub torn_writes: bool,
    /// Power loss, with torn writes: the device's atomic unit the tears
    /// respect (results schema 1.5; absent: sectors).
    #[serde(default)]
    pub tear_unit: TearUnit,
    /// Power loss: a sample of states, or all of them.
    #[serde(default)]
    pub explore: Explore,
    /// Power loss: run fsck after every state's recovery (slower).
    pub fsck_states: bool,
    /// Power loss: states checked in parallel (checker VMs and/or host
    /// scratch images). Under TCG one checker VM keeps one core busy.
    pub check_workers: u32,
    /// Record every msync in the guest with the kernel's tracepoints.
    #[serde(default = "yes")]
    pub trace_msync: bool,
    /// Kernel crash: fail the disk write that carries one seeded record
    /// (once), with this error.
    #[serde(default)]
    pub inject_write_error: Option<WriteError>,
    /// A program crashlab did not write runs instead of the record
    /// workload (docs/workload-protocol.md); `records_per_trial` is how
    /// many items it writes.
    #[serde(default)]
    pub program: Option<ProgramSpec>,
    /// A program's own crash point (`--crash-at name[:n]`): every trial
    /// crashes the n-th time the program prints `POINT name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_at: Option<record::items::NamedPoint>,
    /// Run only this shard's trials (`--shard I/N`); `crashlab merge`
    /// puts the shards together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

/// The program and its checker, as `crashlab run --workload PATH
/// --checker-cmd PATH` gave them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramSpec {
    pub workload: PathBuf,
    pub checker: PathBuf,
    #[serde(default)]
    pub workload_args: Vec<String>,
    #[serde(default)]
    pub checker_args: Vec<String>,
}

/// Arguments per program, at most, and their length.
const ARGS_MAX: usize = 64;
const ARG_MAX_BYTES: usize = 256;

impl ProgramSpec {
    /// What can be checked without reading the binaries.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, args) in [
            ("--workload-arg", &self.workload_args),
            ("--checker-arg", &self.checker_args),
        ] {
            if args.len() > ARGS_MAX {
                return Err(format!("at most {ARGS_MAX} {flag} values"));
            }
            if let Some(bad) = args.iter().find(|a| {
                a.is_empty() || a.len() > ARG_MAX_BYTES || a.contains(|c: char| c.is_whitespace() || c.is_control())
            }) {
                return Err(format!(
                    "{flag} {bad:?}: each argument is one word of at most {ARG_MAX_BYTES} bytes, without spaces"
                ));
            }
        }
        Ok(())
    }
}

/// Shard `index` of `count` (from 0): a share of a campaign's trials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// The hex digits of a kernel build key a campaign records
/// (`images::short`).
pub const KERNEL_BUILD_KEY_CHARS: usize = 12;

/// Upper bound on shards of one campaign.
pub const SHARDS_MAX: u32 = 4096;

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Shard, String> {
        let bad = || format!("--shard {text:?}: give I/N, shard I (from 0) of N, e.g. 0/4");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let shard = Shard {
            index: i.trim().parse().map_err(|_| bad())?,
            count: n.trim().parse().map_err(|_| bad())?,
        };
        match (shard.count, shard.index) {
            (0, _) => Err(format!("--shard {text}: N must be at least 1")),
            (n, _) if n > SHARDS_MAX => Err(format!("--shard {text}: at most {SHARDS_MAX} shards")),
            (n, i) if i >= n => Err(format!("--shard {text}: I counts from 0, so it must be below N ({n})")),
            _ => Ok(shard),
        }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The trials of `shard`, ascending. The campaign's trials in an order
/// drawn from the seed, dealt round-robin: shards differ by at most one
/// trial, the N shards hold every trial exactly once, and the same seed
/// deals the same way on any machine. A power-loss trial's states stay in
/// its shard: they come from that trial's one workload boot, which another
/// machine would not log bit for bit.
pub fn shard_trials(seed: u64, trials: u64, shard: Shard) -> Vec<u64> {
    let mut order: Vec<(u64, u64)> = (0..trials).map(|t| (splitmix64(seed ^ splitmix64(t)), t)).collect();
    order.sort_unstable();
    let mut mine: Vec<u64> = order
        .iter()
        .enumerate()
        .filter(|(position, _)| *position as u64 % u64::from(shard.count) == u64::from(shard.index))
        .map(|(_, &(_, t))| t)
        .collect();
    mine.sort_unstable();
    mine
}

/// An error a disk write can fail with, as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WriteError {
    Eio,
    Enospc,
}

impl WriteError {
    /// The NBD error code (the errno values of Linux).
    pub fn nbd_errno(self) -> u32 {
        match self {
            WriteError::Eio => 5,
            WriteError::Enospc => 28,
        }
    }
}

fn yes() -> bool {
    true
}

pub const CHECK_WORKERS_MAX: u32 = 16;

/// Upper bound on `--mkfs-opts`: a command line, not a file.
const MKFS_OPTS_MAX_BYTES: usize = 1024;

/// Upper bound on a campaign's power-loss states.
pub const STATE_BUDGET_MAX: u64 = 10_000_000;

/// Upper bound on trials in one campaign: results stay a size one can open.
pub const TRIALS_MAX: u64 = 1_000_000;
/// The largest disk a campaign makes (sparse, but the power-loss model's
/// base image and the checker's view are this size).
pub const DISK_SIZE_MAX_BYTES: u64 = 1 << 40;
/// Disks are whole 4 KiB blocks (and the ack area after the filesystem
/// starts on a sector).
const DISK_SIZE_ALIGN_BYTES: u64 = 4096;
/// Block-write log entries per record, an upper bound: ext4 gives 3 to 5
/// (a data write, journal blocks, a flush, the ack sector).
const LOG_ENTRIES_PER_RECORD_MAX: u64 = 8;

impl CampaignConfig {
    /// The workload parameters of one trial (each trial has its own seed so
    /// that a record from another trial is recognisably foreign).
    pub fn workload_params(
        &self,
        workload_seed: u64,
        hold_after_acks: Option<u64>,
        ack_area_offset_bytes: Option<u64>,
    ) -> WorkloadParams {
        WorkloadParams {
            mode: self.mode,
            record_size_bytes: self.record_size_bytes,
            file_size_bytes: self.file_size_bytes,
            records: self.records_per_trial,
            seed: workload_seed,
            planted_bug: self.planted_bug,
            hold_after_acks,
            hold_at_point: self.crash_at.clone(),
            ack_area_offset_bytes,
            pattern: self.pattern,
            io_errors: self.inject_write_error.is_some(),
        }
    }

    /// The data files, slots and writers of the campaign's pattern.
    pub fn geometry(&self) -> record::Geometry {
        self.workload_params(0, None, None).geometry()
    }

    /// The data files a check reads back: the pattern's, or none for a
    /// program under test (its checker reads its own files in the guest).
    pub fn data_files(&self) -> u32 {
        match self.program {
            Some(_) => 0,
            None => self.geometry().files,
        }
    }

    /// Checks everything that can be checked before a VM starts. The message
    /// names the problem and the flag that fixes it.
    pub fn validate(&self) -> Result<(), String> {
        self.workload_params(0, None, None)
            .validate()
            .map_err(|e| e.to_string())?;
        if self.trials == 0 || self.trials > TRIALS_MAX {
            return Err(format!("--trials must be between 1 and {TRIALS_MAX}"));
        }
        if let Some(key) = &self.kernel_build {
            if key.len() != KERNEL_BUILD_KEY_CHARS || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "--kernel-build {key:?}: give the first {KERNEL_BUILD_KEY_CHARS} hex digits of the build key, \
                     as campaign.json's config.kernel_build records it"
                ));
            }
        }
        self.validate_disk()?;
        if !(128..=16384).contains(&self.guest_memory_mib) {
            return Err("--guest-memory-mib must be between 128 and 16384".into());
        }
        if self.crash_model == CrashModel::PowerLoss {
            self.validate_power_loss()?;
        }
        self.validate_combinations()
    }

    /// The disk, the file on it, and the words given to mount and mkfs.
    fn validate_disk(&self) -> Result<(), String> {
        if self.disk_size_bytes > DISK_SIZE_MAX_BYTES {
            return Err(format!(
                "--disk-size {} is above the limit of {} GiB",
                self.disk_size_bytes,
                DISK_SIZE_MAX_BYTES >> 30
            ));
        }
        if !self.disk_size_bytes.is_multiple_of(DISK_SIZE_ALIGN_BYTES) {
            return Err(format!(
                "--disk-size {} is not a multiple of 4 KiB (the disk is made of whole blocks), e.g. 64M",
                self.disk_size_bytes
            ));
        }
        let min_disk = self.fs.min_disk_size_bytes();
        if self.disk_size_bytes < min_disk {
            return Err(format!(
                "--disk-size {} is too small for {}: use at least {} MiB",
                self.disk_size_bytes,
                self.fs.name(),
                min_disk >> 20
            ));
        }
        // Filesystem metadata and the journal need room beside the file.
        let usable_bytes = self.disk_size_bytes / 10 * 7;
        if self.file_size_bytes > usable_bytes {
            return Err(format!(
                "the data file ({} bytes) does not fit on the {} byte disk beside the filesystem's \
                 metadata: raise --disk-size to at least {} or lower --file-size",
                self.file_size_bytes,
                self.disk_size_bytes,
                self.file_size_bytes / 7 * 10 + (1 << 20)
            ));
        }
        if self.mount_opts.contains(char::is_whitespace) || self.mount_opts.is_empty() {
            return Err(format!(
                "--mount-opts {:?} must be one comma-separated word, e.g. data=ordered",
                self.mount_opts
            ));
        }
        if self.mkfs_opts.len() > MKFS_OPTS_MAX_BYTES || self.mkfs_opts.contains(['\n', '\0']) {
            return Err(format!(
                "--mkfs-opts must be one line of at most {MKFS_OPTS_MAX_BYTES} bytes, e.g. \"-b 1024 -J size=8\""
            ));
        }
        if let Some(word) = self.mkfs_words().iter().find(|w| w.starts_with('/')) {
            return Err(format!(
                "--mkfs-opts {:?} names a path ({word}): crashlab gives mkfs the disk itself; pass only options",
                self.mkfs_opts
            ));
        }
        Ok(())
    }

    /// Power loss's own limits: the state budget, the log, the checkers.
    fn validate_power_loss(&self) -> Result<(), String> {
        if self.state_budget == 0 || self.state_budget > STATE_BUDGET_MAX {
            return Err(format!("--state-budget must be between 1 and {STATE_BUDGET_MAX}"));
        }
        let records_max = blocklog::DEFAULT_MAX_ENTRIES / LOG_ENTRIES_PER_RECORD_MAX;
        if self.records_per_trial > records_max {
            return Err(format!(
                "--records {} is too many for --crash-model power-loss: its block-write log holds at \
                 most {} entries, about {LOG_ENTRIES_PER_RECORD_MAX} per record at worst; use at most \
                 {records_max} records per trial (or --crash-model kernel-crash)",
                self.records_per_trial,
                blocklog::DEFAULT_MAX_ENTRIES
            ));
        }
        if !(1..=CHECK_WORKERS_MAX).contains(&self.check_workers) {
            return Err(format!("--check-workers must be between 1 and {CHECK_WORKERS_MAX}"));
        }
        if self.checker != Checker::Kernel && self.fs != Filesystem::Ext4 {
            return Err(format!(
                "--checker {} needs ext4 (its host path is crashlab's ext4 reader, e2fsck and debugfs); use \
                 --checker kernel for {}",
                self.checker.name(),
                self.fs.name()
            ));
        }
        Ok(())
    }

    /// Flags that need another model, pattern or workload, and timeouts.
    fn validate_combinations(&self) -> Result<(), String> {
        if self.tear_unit != TearUnit::Sector && !self.torn_writes {
            return Err("--tear-unit chooses how torn writes tear: add --torn-writes".into());
        }
        if self.inject_write_error.is_some() && self.crash_model != CrashModel::KernelCrash {
            return Err(
                "--inject-write-error runs under --crash-model kernel-crash (the disk the guest writes \
                 is served by crashlab's NBD server, not logged)"
                    .into(),
            );
        }
        if self.inject_write_error.is_some() && self.pattern != Pattern::Records {
            return Err("--inject-write-error needs --pattern records".into());
        }
        if self.device_bug.is_some() && self.crash_model != CrashModel::PowerLoss {
            return Err(
                "--planted-device-bug needs --crash-model power-loss: a guest kernel crash keeps every \
                 write the disk received, so a disk's flush bugs cannot show"
                    .into(),
            );
        }
        if self.boot_timeout_ms == 0 || self.stall_timeout_ms == 0 || self.trial_timeout_ms == 0 {
            return Err("timeouts must be positive".into());
        }
        if self.crash_at.is_some() && self.program.is_none() {
            return Err(
                "--crash-at names a point a program prints (POINT name): it needs --workload; \
                        crashlab's record workload crashes with --crash-points"
                    .into(),
            );
        }
        if let Some(program) = &self.program {
            program.validate()?;
            let conflicts = [
                (self.pattern != Pattern::Records, "--pattern"),
                (self.mode != DurabilityMode::MsSync, "--mode"),
                (self.record_size_bytes != RECORD_SIZE_DEFAULT_BYTES, "--record-size"),
                (self.file_size_bytes != FILE_SIZE_DEFAULT_BYTES, "--file-size"),
                (self.planted_bug.is_some(), "--planted-bug"),
                (self.inject_write_error.is_some(), "--inject-write-error"),
                (
                    self.crash_model == CrashModel::PowerLoss && self.checker != Checker::Kernel,
                    "--checker host or both",
                ),
            ];
            if let Some((_, flag)) = conflicts.iter().find(|(set, _)| *set) {
                return Err(format!(
                    "{flag} applies to crashlab's record workload, not to a program given with --workload \
                     (its checker runs in the guest: use --checker kernel)"
                ));
            }
        }
        Ok(())
    }

    /// The user's mkfs options as words.
    pub fn mkfs_words(&self) -> Vec<String> {
        self.mkfs_opts.split_whitespace().map(String::from).collect()
    }

    /// Power loss: the ack area follows the filesystem on the same disk, so
    /// ack writes are logged in order with the filesystem's writes.
    pub fn ack_area_offset_bytes(&self) -> u64 {
        self.disk_size_bytes
    }

    /// Power loss: one sector for the ready marker and one per possible ack,
    /// rounded up to a MiB.
    pub fn ack_area_size_bytes(&self) -> u64 {
        let sectors = self.records_per_trial + 1;
        (sectors * record::layout::ack::ACK_SIZE_BYTES as u64).div_ceil(1 << 20) << 20
    }

    /// Power loss: each trial's share of the campaign's state budget.
    pub fn state_budget_per_trial(&self) -> usize {
        (self.state_budget / self.trials.max(1)).max(1) as usize
    }

    /// The flags that mean something under power loss only (a kernel-crash
    /// campaign neither takes nor renders them).
    fn power_loss_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--state-budget={}", self.state_budget),
            format!("--checker={}", kebab(&self.checker)),
        ];
        if self.read_files != FileRead::Extents {
            args.push(format!("--read-files={}", kebab(&self.read_files)));
        }
        if self.torn_writes {
            args.push("--torn-writes".into());
        }
        if self.tear_unit != TearUnit::Sector {
            args.push(format!("--tear-unit={}", kebab(&self.tear_unit)));
        }
        if self.explore == Explore::Exhaustive {
            args.push("--explore=exhaustive".into());
        }
        if self.fsck_states {
            args.push("--fsck-states".into());
        }
        args
    }

    /// The `crashlab run` arguments that reproduce this configuration. A
    /// program's run carries no record-workload flags (pattern, mode, sizes:
    /// they are refused with `--workload`, so their defaults hold).
    pub fn to_cli_args(&self) -> Vec<String> {
        let mut args = vec![
            "run".to_string(),
            format!("--fs={}", self.fs.name()),
            format!("--mount-opts={}", self.mount_opts),
            format!("--mkfs-opts={}", self.mkfs_opts),
        ];
        if self.program.is_none() {
            args.extend([
                format!("--pattern={}", self.pattern),
                format!("--mode={}", self.mode),
                format!("--record-size={}", self.record_size_bytes),
                format!("--file-size={}", self.file_size_bytes),
            ]);
        }
        args.extend([
            format!("--records={}", self.records_per_trial),
            format!("--trials={}", self.trials),
            format!("--seed={}", self.seed),
            format!("--crash-points={}", kebab(&self.crash_points)),
            format!("--crash-delay-max-ms={}", self.crash_delay_max_ms),
            format!("--profile={}", kebab(&self.profile)),
            format!("--disk-size={}", self.disk_size_bytes),
            format!("--crash-model={}", kebab(&self.crash_model)),
        ]);
        if self.crash_model == CrashModel::PowerLoss {
            args.extend(self.power_loss_args());
        }
        if let Some(bug) = self.planted_bug {
            args.push(format!("--planted-bug={bug}"));
        }
        if let Some(bug) = self.device_bug {
            args.push(format!("--planted-device-bug={bug}"));
        }
        if !self.trace_msync {
            args.push("--no-msync-trace".into());
        }
        if let Some(error) = self.inject_write_error {
            args.push(format!("--inject-write-error={}", kebab(&error)));
        }
        if let Some(shard) = self.shard {
            args.push(format!("--shard={shard}"));
        }
        if let Some(build) = &self.kernel_build {
            // A built kernel lives where the user put it: the rerun says where.
            args.push(format!("--images-dir={}", self.images_dir.display()));
            args.push(format!("--kernel-build={build}"));
        }
        if let Some(program) = &self.program {
            args.push(format!("--workload={}", program.workload.display()));
            args.push(format!("--checker-cmd={}", program.checker.display()));
            args.extend(program.workload_args.iter().map(|a| format!("--workload-arg={a}")));
            args.extend(program.checker_args.iter().map(|a| format!("--checker-arg={a}")));
        }
        if let Some(point) = &self.crash_at {
            args.push(format!("--crash-at={point}"));
        }
        args
    }
}

/// Arguments as one shell command line: a word with characters a shell
/// treats specially is single-quoted (`--mkfs-opts=-b 1024` stays one word).
pub fn shell_join(args: &[String]) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_=.,:/+@%".contains(c);
    args.iter()
        .map(|a| match !a.is_empty() && a.chars().all(plain) {
            true => a.clone(),
            false => format!("'{}'", a.replace('\'', r"'\''")),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl CampaignConfig {
    /// The whole configuration as a campaign file (`campaign.toml` in the
    /// results): every `run` flag that shapes the campaign, explicit, so
    /// that `crashlab run --config campaign.toml` runs it again exactly.
    pub fn to_toml(&self, campaign_id: &str) -> String {
        crate::campaign_file::render(
            &self.full_run_args(),
            &format!(
                "crashlab campaign {campaign_id}: its resolved configuration.\n\
                 Run it again with: crashlab run --config campaign.toml (flags given beside it win)."
            ),
        )
    }

    /// Every `run` flag of this configuration, explicit (without `run`):
    /// the campaign file, and the command line of each `--jobs` shard.
    pub fn full_run_args(&self) -> Vec<String> {
        let mut args: Vec<String> = self.to_cli_args().into_iter().skip(1).collect();
        if self.kernel_build.is_none() {
            args.push(format!("--images-dir={}", self.images_dir.display()));
        }
        args.extend([
            format!("--guest-memory-mib={}", self.guest_memory_mib),
            format!("--accel={}", kebab(&self.accel)),
            format!("--boot-timeout-ms={}", self.boot_timeout_ms),
            format!("--stall-timeout-ms={}", self.stall_timeout_ms),
            format!("--trial-timeout-ms={}", self.trial_timeout_ms),
        ]);
        if self.crash_model == CrashModel::PowerLoss {
            args.push(format!("--check-workers={}", self.check_workers));
        }
        if self.keep_images {
            args.push("--keep-images".into());
        }
        args
    }
}

fn kebab<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// Parses sizes such as `4096`, `64K`, `4M`, `1G` (binary units).
pub fn parse_size_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size: use e.g. 4096, 64K, 4M, 1G"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// The record workload's defaults (`crashlab run --record-size`,
/// `--file-size`): also what a program's configuration holds.
pub const RECORD_SIZE_DEFAULT_BYTES: u32 = 4096;
pub const FILE_SIZE_DEFAULT_BYTES: u64 = 4 << 20;

/// What the run is called in ids and summaries: the record workload's mode,
/// or the program's file name.
impl CampaignConfig {
    pub fn workload_name(&self) -> String {
        match &self.program {
            None => self.mode.to_string(),
            Some(program) => program.workload.file_name().map_or("program".into(), |n| {
                n.to_string_lossy().replace(
                    |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_' && c != '.',
                    "_",
                )
            }),
        }
    }
}

/// A complete, valid configuration (ext4 `data=ordered`, `ms-sync`, the
/// defaults of `crashlab run`): the fixture of the layers' unit tests.
pub fn sample_config() -> CampaignConfig {
    CampaignConfig {
        fs: Filesystem::Ext4,
        mount_opts: "data=ordered".into(),
        mkfs_opts: "-T default".into(),
        shard: None,
        pattern: Pattern::Records,
        mode: DurabilityMode::MsSync,
        record_size_bytes: 4096,
        file_size_bytes: 4 << 20,
        records_per_trial: 2000,
        trials: 10,
        seed: 1,
        crash_model: CrashModel::KernelCrash,
        crash_points: CrashPointKind::Mixed,
        crash_delay_max_ms: 3000,
        planted_bug: None,
        device_bug: None,
        profile: verifier::Profile::Linux,
        disk_size_bytes: 64 << 20,
        guest_memory_mib: 512,
        accel: Accel::Auto,
        boot_timeout_ms: 60_000,
        stall_timeout_ms: 30_000,
        trial_timeout_ms: 300_000,
        images_dir: "vm-images/cache".into(),
        kernel_build: None,
        keep_images: false,
        state_budget: 1000,
        checker: Checker::Kernel,
        read_files: FileRead::Extents,
        torn_writes: false,
        tear_unit: TearUnit::Sector,
        explore: Explore::Sample,
        fsck_states: false,
        check_workers: 2,
        trace_msync: true,
        inject_write_error: None,
        program: None,
        crash_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_bytes("4096"), Ok(4096));
        assert_eq!(parse_size_bytes("64K"), Ok(65536));
        assert_eq!(parse_size_bytes("4M"), Ok(4 << 20));
        assert!(parse_size_bytes("four").is_err());
        assert!(parse_size_bytes("99999999999G").is_err());
    }

    /// Found by the campaign_json fuzz target: a configuration the checks
    /// passed whose power-loss workload parameters were invalid (an ack
    /// area off a sector boundary).
    #[test]
    fn a_valid_configuration_gives_valid_workload_parameters() {
        let unaligned = CampaignConfig {
            crash_model: CrashModel::PowerLoss,
            disk_size_bytes: (64 << 20) + 1,
            ..sample_config()
        };
        let err = unaligned.validate().unwrap_err();
        assert!(err.contains("multiple of 4 KiB"), "{err}");
        let aligned = CampaignConfig {
            disk_size_bytes: 64 << 20,
            ..unaligned
        };
        aligned.validate().unwrap();
        let params = aligned.workload_params(0, None, Some(aligned.ack_area_offset_bytes()));
        assert!(params.validate().is_ok());
    }

    #[test]
    fn file_larger_than_disk_names_the_fix() {
        let c = CampaignConfig {
            file_size_bytes: 60 << 20,
            ..sample_config()
        };
        let err = c.validate().unwrap_err();
        assert!(err.contains("--disk-size"), "{err}");
    }

    #[test]
    fn zero_record_size_is_rejected() {
        let c = CampaignConfig {
            record_size_bytes: 0,
            ..sample_config()
        };
        assert!(c.validate().unwrap_err().contains("record size 0"));
    }

    #[test]
    fn ack_area_holds_the_ready_marker_and_every_ack() {
        for records in [1, 2000, 2047, 2048, 2049, 100_000] {
            let c = CampaignConfig {
                records_per_trial: records,
                ..sample_config()
            };
            assert!(c.ack_area_size_bytes() >= (records + 1) * 512, "{records} records");
            assert_eq!(c.ack_area_size_bytes() % (1 << 20), 0);
        }
        let c = CampaignConfig {
            records_per_trial: 2048,
            ..sample_config()
        };
        assert_eq!(c.ack_area_size_bytes(), 2 << 20, "2,049 sectors need a second MiB");
    }

    #[test]
    fn host_checker_needs_ext4() {
        let c = CampaignConfig {
            crash_model: CrashModel::PowerLoss,
            checker: Checker::Host,
            fs: Filesystem::Xfs,
            disk_size_bytes: 300 << 20,
            ..sample_config()
        };
        assert!(c.validate().unwrap_err().contains("--checker kernel"));
    }

    #[test]
    fn a_program_refuses_the_record_workloads_flags_and_renders_its_own() {
        let program = CampaignConfig {
            program: Some(ProgramSpec {
                workload: "/opt/lmdb".into(),
                checker: "/opt/lmdb".into(),
                workload_args: vec!["workload".into(), "--nosync".into()],
                checker_args: vec!["check".into()],
            }),
            ..sample_config()
        };
        program.validate().unwrap();
        assert_eq!(program.data_files(), 0);
        let args = program.to_cli_args();
        for want in [
            "--workload=/opt/lmdb",
            "--checker-cmd=/opt/lmdb",
            "--workload-arg=--nosync",
            "--checker-arg=check",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
        }
        for record_flag in ["--pattern", "--mode", "--record-size", "--file-size"] {
            assert!(
                !args.iter().any(|a| a.starts_with(record_flag)),
                "a program's rerun carries no {record_flag}: {args:?}"
            );
        }
        assert_eq!(program.workload_name(), "lmdb");
        for (bad, flag) in [
            (
                CampaignConfig {
                    pattern: Pattern::Wal,
                    ..program.clone()
                },
                "--pattern",
            ),
            (
                CampaignConfig {
                    crash_model: CrashModel::PowerLoss,
                    checker: Checker::Host,
                    ..program.clone()
                },
                "--checker host",
            ),
            (
                CampaignConfig {
                    planted_bug: Some(PlantedBug::AckBeforeSync),
                    ..program.clone()
                },
                "--planted-bug",
            ),
            (
                CampaignConfig {
                    mode: DurabilityMode::MsAsync,
                    ..program.clone()
                },
                "--mode",
            ),
            (
                CampaignConfig {
                    file_size_bytes: 1 << 20,
                    ..program.clone()
                },
                "--file-size",
            ),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(err.starts_with(flag) && err.contains("--workload"), "{err}");
        }
    }

    #[test]
    fn mkfs_options_are_checked_and_rerun_as_one_word() {
        let c = CampaignConfig {
            mkfs_opts: "-b 1024 -O ^metadata_csum".into(),
            ..sample_config()
        };
        c.validate().unwrap();
        assert_eq!(c.mkfs_words(), ["-b", "1024", "-O", "^metadata_csum"]);
        let line = shell_join(&c.to_cli_args());
        assert!(line.contains("'--mkfs-opts=-b 1024 -O ^metadata_csum'"), "{line}");
        assert!(line.contains(" --fs=ext4 "), "{line}");
        assert_eq!(shell_join(&["it's".into(), String::new()]), r"'it'\''s' ''");
        for bad in ["-d /etc", "-b 1024\n-q", &"-b 1024 ".repeat(200)] {
            let c = CampaignConfig {
                mkfs_opts: bad.into(),
                ..sample_config()
            };
            assert!(c.validate().unwrap_err().starts_with("--mkfs-opts"), "{bad:?}");
        }
    }

    #[test]
    fn a_built_kernel_is_named_in_the_rerun_with_where_its_images_are() {
        let distro = sample_config();
        assert!(!distro
            .to_cli_args()
            .iter()
            .any(|a| a.starts_with("--kernel-build") || a.starts_with("--images-dir")));
        let built = CampaignConfig {
            kernel_build: Some("0123456789ab".into()),
            images_dir: "/images/fix".into(),
            ..sample_config()
        };
        built.validate().unwrap();
        let args = built.to_cli_args();
        assert!(args.contains(&"--kernel-build=0123456789ab".to_string()), "{args:?}");
        assert!(args.contains(&"--images-dir=/images/fix".to_string()), "{args:?}");
        let full = built.full_run_args();
        assert_eq!(
            full.iter().filter(|a| a.starts_with("--images-dir")).count(),
            1,
            "{full:?}"
        );
        for bad in ["0123", "0123456789ag", "blake3:0123456789ab"] {
            let c = CampaignConfig {
                kernel_build: Some(bad.into()),
                ..sample_config()
            };
            assert!(c.validate().unwrap_err().starts_with("--kernel-build"), "{bad}");
        }
    }

    #[test]
    fn shards_partition_the_trials_exactly_and_evenly() {
        for seed in [0u64, 1, 7, u64::MAX] {
            for trials in [1u64, 2, 3, 10, 97, 1000] {
                for count in [1u32, 2, 3, 7, 16] {
                    let mut all: Vec<u64> = (0..count)
                        .flat_map(|index| shard_trials(seed, trials, Shard { index, count }))
                        .collect();
                    let sizes: Vec<usize> = (0..count)
                        .map(|index| shard_trials(seed, trials, Shard { index, count }).len())
                        .collect();
                    all.sort_unstable();
                    assert_eq!(
                        all,
                        (0..trials).collect::<Vec<_>>(),
                        "seed {seed} trials {trials} N {count}"
                    );
                    assert!(
                        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                        "{sizes:?}"
                    );
                }
            }
        }
        // Deterministic, and the seed matters.
        let a = |seed| shard_trials(seed, 20, Shard { index: 0, count: 4 });
        assert_eq!(a(5), a(5));
        assert_ne!(a(5), a(6));
    }

    #[test]
    fn shard_flags_name_what_is_wrong() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        assert!("3/3".parse::<Shard>().unwrap_err().contains("below N"));
        assert!("0/0".parse::<Shard>().unwrap_err().contains("at least 1"));
        assert!("a/b".parse::<Shard>().unwrap_err().contains("I/N"));
        assert!("0/5000".parse::<Shard>().unwrap_err().contains("at most"));
    }

    #[test]
    fn default_is_valid() {
        sample_config().validate().unwrap();
    }
}
