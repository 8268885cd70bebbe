//! The command line's definition (clap) and what it means: a `run`
//! command line to a validated [`CampaignConfig`], and the flags a
//! campaign file may set (read from this definition).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use record::{DurabilityMode, PlantedBug};

use config::{self, Accel, CampaignConfig, Checker, CrashModel, CrashPointKind, Filesystem};

#[derive(Parser)]
#[command(
    name = "crashlab",
    version,
    about = "Crash-consistency testing of mmap + msync in a QEMU guest"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a crash campaign and write its results.
    Run(RunArgs),
    /// Rebuild one power-loss crash state exactly from a campaign's kept
    /// evidence, write it as a disk image and judge it again.
    ReplayState(ReplayArgs),
    /// Write (and with --submit, submit) a Slurm job array running the
    /// campaign as N shards, and a job after it that merges them and writes
    /// the report. Takes run's flags; --resume DIR resubmits the unfinished
    /// shards of DIR.
    Slurm(SlurmArgs),
    /// Put the shards of one campaign (run with --shard I/N) together into
    /// the campaign directory an unsharded run would have written.
    Merge {
        /// The merged campaign's directory (new).
        out: PathBuf,
        /// Every shard's campaign directory.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
    },
    /// Shrink a violating power-loss state's lost writes to the few that
    /// matter (delta debugging, each candidate checked and judged like any
    /// state), name what each holds, and save the state for replay-state.
    Minimise(MinimiseArgs),
    /// Plan, build, check and judge a power-loss trial's states again from
    /// its kept capture (no workload boot), with another checker, budget or
    /// number of workers.
    Recheck(RecheckArgs),
    /// The same crash states judged on two kernels: a kept power-loss
    /// capture's states recovered by kernel A (the campaign's) and by kernel
    /// B (--images-dir), or with --recapture (always under kernel crash)
    /// the campaign run again on B with the same seeds. Prints the states
    /// whose verdicts differ (fixed, regression, another rule); exit 1 when
    /// B fails what A passes.
    Compare(CompareArgs),
    /// For comparison (`cargo xtask bench`): check a kept ext4 trial's log
    /// the way a shell loop around xfstests' replay-log would (replay to a
    /// flush, cp --sparse, e2fsck -fy, debugfs dump), and print the time.
    ReplayLoop(ReplayLoopArgs),
    /// What the power-loss capture costs the workload: the same run on a
    /// plain disk, with the ack area, and logged, side by side in rounds;
    /// prints the rates and the median slowdowns as JSON.
    WorkloadRate(WorkloadRateArgs),
    /// msync's interface on the running kernel (no crash): each call of
    /// the seeds, its result beside what POSIX requires and Linux documents.
    Conformance(ConformanceArgs),
    /// Filesystem configurations × workload patterns, one campaign per
    /// cell, and the table (states checked / violations / observations).
    Matrix(MatrixArgs),
    /// Injected write errors (EIO, ENOSPC) per filesystem, without and with
    /// a kernel crash: what the application is told, and the table.
    IoErrors(IoErrorsArgs),
    /// Check that a campaign can run here: QEMU, KVM or TCG (one boot), the
    /// guest kernel, the mkfs tools, free space. Prints what to install or
    /// change; exit 0 only when a campaign would run.
    Doctor(DoctorArgs),
    /// Write report.html for a campaign's or a sweep's results: summary,
    /// matrix, each violation with its replay command and the bytes
    /// expected and found, plots (one self-contained page).
    Report {
        /// A campaign directory, or a sweep's (matrix, campaign file).
        dir: PathBuf,
        /// Also write JUnit XML of its campaigns here.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Check a results directory (a campaign's or a sweep's) against its
    /// seals: every sealed file's digest, each trial line's seal, the state
    /// lines and the summary against the trial lines. Each problem named;
    /// exit 0 only when everything holds, 1 when something does not.
    Verify {
        /// A campaign directory, or a sweep's.
        dir: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (roff): crashlab.1 and one per subcommand, as
    /// `cargo xtask man` does.
    #[command(hide = true)]
    ManPages {
        /// Directory to write them into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
pub struct DoctorArgs {
    /// Guest kernel and initramfs, as built by `cargo xtask images` (default:
    /// the per-user cache it links, ~/.cache/crashlab/images, else
    /// vm-images/cache here).
    #[arg(long, env = "CRASHLAB_IMAGES_DIR", default_value_os_t = machine::images::default_images_dir().0)]
    pub images_dir: PathBuf,
    /// Where campaigns would write their results.
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Skip the guest boot (quicker; then nothing proves QEMU, the kernel
    /// and the initramfs work together).
    #[arg(long)]
    pub no_boot: bool,
}

#[derive(Args)]
pub struct MatrixArgs {
    /// Filesystem configurations, each FS or FS:MOUNT-OPTS.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ext4:data=ordered,ext4:data=journal,ext4:data=writeback,xfs,btrfs,f2fs"
    )]
    pub configs: Vec<String>,
    /// Workload patterns (columns).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "records,partial-msync,invalidate,ipc,wal,growth,several"
    )]
    pub patterns: Vec<record::Pattern>,
    /// One table per crash model.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "power-loss")]
    pub crash_models: Vec<CrashModel>,
    #[command(flatten)]
    pub sweep: SweepArgs,
}

#[derive(Args)]
pub struct IoErrorsArgs {
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ext4,xfs,btrfs,f2fs")]
    pub fs: Vec<Filesystem>,
    #[command(flatten)]
    pub sweep: SweepArgs,
}

/// What every sweep takes.
#[derive(Args)]
pub struct SweepArgs {
    /// Where the cells' campaigns and the table go.
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Also write JUnit XML here: one test case per cell, a failure
    /// carrying the first violation and its replay command.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Name of the sweep's directory (default: timestamp).
    #[arg(long)]
    pub id: Option<String>,
    /// Further `crashlab run` flags for every cell, after `--`
    /// (e.g. -- --trials=1 --state-budget=200 --records=300).
    #[arg(last = true)]
    pub run_flags: Vec<String>,
}

#[derive(Args)]
pub struct ConformanceArgs {
    /// Filesystems to run the suite on (one guest boot each).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ext4,xfs,btrfs,f2fs")]
    pub fs: Vec<Filesystem>,
    /// Guest kernel and initramfs, as built by `cargo xtask images` (default:
    /// the per-user cache it links, ~/.cache/crashlab/images, else
    /// vm-images/cache here).
    #[arg(long, env = "CRASHLAB_IMAGES_DIR", default_value_os_t = machine::images::default_images_dir().0)]
    pub images_dir: PathBuf,
    /// Where the table goes (conformance.txt, conformance.json).
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Name of the output directory (default: timestamp).
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    #[arg(long, default_value_t = 60_000)]
    pub boot_timeout_ms: u64,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// The campaign directory (results/<campaign-id>).
    #[arg(long)]
    pub campaign: PathBuf,
    #[arg(long)]
    pub trial: u64,
    #[arg(long, required_unless_present = "state_file")]
    pub state: Option<u64>,
    /// A state file `crashlab minimise` wrote, instead of --state.
    #[arg(long, conflicts_with = "state")]
    pub state_file: Option<PathBuf>,
    /// Where to write the state's disk image (default: in the trial's directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Who recovers the state: kernel (a checker VM), host (ext4), or both.
    #[arg(long, value_enum, default_value = "kernel")]
    pub checker: Checker,
    /// Overrides the campaign's guest images directory.
    #[arg(long)]
    pub images_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct SlurmArgs {
    /// Shards: tasks of the job array.
    #[arg(long, required_unless_present = "resume")]
    pub shards: Option<u32>,
    /// An option for sbatch, written into both scripts (repeat for more),
    /// e.g. --sbatch-arg=--partition=long --sbatch-arg=--time=12:00:00.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// Run sbatch now (else the commands are printed).
    #[arg(long)]
    pub submit: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args)]
pub struct MinimiseArgs {
    /// The campaign directory (results/<campaign-id>).
    #[arg(long)]
    pub campaign: PathBuf,
    #[arg(long)]
    pub trial: u64,
    /// A failing state of the trial (states.jsonl names them).
    #[arg(long)]
    pub state: u64,
    /// Who checks each candidate: kernel (a checker VM) or host (ext4).
    /// Default: the campaign's checker.
    #[arg(long, value_enum)]
    pub checker: Option<Checker>,
    /// Overrides the campaign's guest images directory.
    #[arg(long)]
    pub images_dir: Option<PathBuf>,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct WorkloadRateArgs {
    /// Rounds of the three runs.
    #[arg(long, default_value_t = 5)]
    pub pairs: u32,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args)]
pub struct ReplayLoopArgs {
    #[arg(long)]
    pub campaign: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub trial: u64,
    /// Flushes to replay to, evenly spaced over the log.
    #[arg(long, default_value_t = 200)]
    pub states: u64,
}

#[derive(Args)]
pub struct RecheckArgs {
    /// The campaign directory (results/<campaign-id>), run with
    /// --keep-images or with a failed state in this trial.
    #[arg(long)]
    pub campaign: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub trial: u64,
    /// States to check in this trial (default: the campaign's).
    #[arg(long)]
    pub state_budget: Option<u64>,
    #[arg(long, value_enum)]
    pub checker: Option<Checker>,
    #[arg(long)]
    pub check_workers: Option<u32>,
    #[arg(long, value_enum)]
    pub read_files: Option<config::FileRead>,
    /// Write one line per state here (as states.jsonl).
    #[arg(long)]
    pub states_out: Option<PathBuf>,
    /// Print the trial's whole record as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Overrides the campaign's guest images directory.
    #[arg(long)]
    pub images_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct CompareArgs {
    /// The campaign directory (results/<campaign-id>). Recovery mode needs
    /// its captures kept (--keep-images, or a failed state).
    #[arg(long)]
    pub campaign: PathBuf,
    /// Kernel B's guest images (`cargo xtask kernel --out DIR`, or `cargo
    /// xtask images --kernel ... --out DIR`).
    #[arg(long)]
    pub images_dir: PathBuf,
    /// Kernel A's guest images (default: the campaign's own).
    #[arg(long)]
    pub baseline_images_dir: Option<PathBuf>,
    /// Only these trials (repeatable; default: every kept trial, or every
    /// finished one with --recapture).
    #[arg(long)]
    pub trial: Vec<u64>,
    /// States per trial (default: the campaign's), the same for A and B.
    #[arg(long)]
    pub state_budget: Option<u64>,
    #[arg(long)]
    pub check_workers: Option<u32>,
    /// Run the campaign's configuration again on B (same seeds) and compare
    /// trials: bugs in the write path too, but not the same bytes.
    #[arg(long)]
    pub recapture: bool,
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// A campaign file (TOML): the flags of `run` as keys, and a [sweep]
    /// of lists that expands into a matrix (examples/ has some). Flags
    /// given here override the file.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Filesystem under test.
    #[arg(long, value_enum, default_value = "ext4")]
    pub fs: Filesystem,
    /// Mount options (one comma-separated word; "defaults" for none).
    /// Default: data=ordered for ext4, defaults for the others.
    #[arg(long)]
    pub mount_opts: Option<String>,
    /// Options given to mkfs, split at spaces (as xfstests' MKFS_OPTIONS):
    /// features, block size, journal size. Default: "-T default" for ext4
    /// (4 KiB blocks as on a real disk; "-T small" gives 1 KiB), none for
    /// the others.
    #[arg(long, allow_hyphen_values = true)]
    pub mkfs_opts: Option<String>,
    /// Workload pattern: records, partial-msync, invalidate, ipc, wal, growth, several.
    #[arg(long, default_value = "records")]
    pub pattern: record::Pattern,
    /// Durability mode (pattern records): ms-sync, batch:N, ms-async, ms-async-fsync, ms-async-fdatasync, none.
    #[arg(long, default_value = "ms-sync")]
    pub mode: DurabilityMode,
    /// Record size (512 to 64K, a multiple of 512).
    #[arg(long, default_value = "4096", value_parser = config::parse_size_bytes)]
    pub record_size: u64,
    /// Data file size; records wrap around when it is full.
    #[arg(long, default_value = "4M", value_parser = config::parse_size_bytes)]
    pub file_size: u64,
    /// Records the workload writes per trial (if no crash comes first).
    #[arg(long, default_value_t = 2000)]
    pub records: u64,
    /// Number of trials.
    #[arg(long, default_value_t = 10)]
    pub trials: u64,
    /// Campaign seed: the same seed gives the same crash points.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Crash model.
    #[arg(long, value_enum, default_value = "kernel-crash")]
    pub crash_model: CrashModel,
    /// Which crash points trials draw.
    #[arg(long, value_enum, default_value = "mixed")]
    pub crash_points: CrashPointKind,
    /// A program's own crash point: crash every trial the N-th time the
    /// program prints `POINT NAME` (protocol 1.2; N defaults to 1). Under
    /// power loss the run stops there and its log ends at that point.
    #[arg(long, value_name = "NAME[:N]", requires = "workload")]
    pub crash_at: Option<record::items::NamedPoint>,
    /// Upper bound of delay-based crash points, after READY.
    #[arg(long, default_value_t = 3000)]
    pub crash_delay_max_ms: u64,
    /// A deliberate workload bug, to measure that the checks catch it:
    /// ack-before-sync, skip-sync[:N], sync-wrong-range, async-instead-of-sync[:N].
    #[arg(long)]
    pub planted_bug: Option<PlantedBug>,
    /// Power loss: a deliberate disk bug, to measure that the checks catch
    /// it: drop-flush:N (one flush in N ignored), reorder-across-flush:N (a
    /// write held past one flush in N).
    #[arg(long, value_parser = parse_device_bug)]
    pub planted_device_bug: Option<blocklog::DeviceBug>,
    /// How strictly to read msync's promise.
    #[arg(long, value_enum, default_value = "linux")]
    pub profile: ProfileArg,
    /// Guest disk size. Default: 64M, or the filesystem's minimum (xfs 300M,
    /// btrfs 128M).
    #[arg(long, value_parser = config::parse_size_bytes)]
    pub disk_size: Option<u64>,
    #[arg(long, default_value_t = 512)]
    pub guest_memory_mib: u32,
    /// KVM or TCG; auto proves KVM with a sanity boot.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    #[arg(long, default_value_t = 60_000)]
    pub boot_timeout_ms: u64,
    #[arg(long, default_value_t = 30_000)]
    pub stall_timeout_ms: u64,
    #[arg(long, default_value_t = 300_000)]
    pub trial_timeout_ms: u64,
    /// Guest kernel and initramfs, as built by `cargo xtask images` (or
    /// `cargo xtask kernel --out DIR`, a kernel built from source). Default:
    /// the per-user cache `cargo xtask images` links
    /// (~/.cache/crashlab/images), else vm-images/cache here.
    #[arg(long, env = "CRASHLAB_IMAGES_DIR", default_value_os_t = machine::images::default_images_dir().0)]
    pub images_dir: PathBuf,
    /// The kernel build (the first digits of its build key, as campaign.json
    /// records it) that --images-dir must hold; a campaign on a built kernel
    /// records it in its rerun command. Default: whatever the images hold.
    #[arg(long, value_name = "KEY")]
    pub kernel_build: Option<String>,
    /// Where campaign directories are created.
    #[arg(long, default_value = "results")]
    pub results_dir: PathBuf,
    /// Also write JUnit XML here: the campaign as one test case, a failure
    /// carrying its first violation and the command that replays it.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Name of the campaign directory (default: timestamp, fs, mode, seed).
    #[arg(long)]
    pub campaign_id: Option<String>,
    /// Run only this trial of the campaign (its crash point is the same as
    /// in the full campaign).
    #[arg(long)]
    pub only_trial: Option<u64>,
    /// Continue the interrupted campaign in this directory (Ctrl-C, a kill,
    /// a reboot), with the configuration it recorded: finished trials are
    /// kept, the others run. The other flags, except --quiet and
    /// --images-dir, are not used.
    #[arg(long, value_name = "CAMPAIGN_DIR", conflicts_with_all = ["only_trial", "campaign_id"])]
    pub resume: Option<PathBuf>,
    /// Run only shard I of N (from 0): a share of the trials dealt by the
    /// seed; `crashlab merge` puts the N shards together.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<config::Shard>,
    /// Run the campaign as K shards at once on this machine (each its own
    /// QEMU and results), then merge them.
    #[arg(long, value_name = "K", conflicts_with_all = ["shard", "only_trial", "resume"])]
    pub jobs: Option<u32>,
    /// Power loss: after the campaign, minimise its first failing state
    /// (as `crashlab minimise` does) and keep the result as minimised.json.
    #[arg(long)]
    pub minimise: bool,
    /// Keep every crashed disk image, not only those that broke a rule.
    #[arg(long)]
    pub keep_images: bool,
    /// Power loss: crash states verified over the whole campaign.
    #[arg(long, default_value_t = 1000)]
    pub state_budget: u64,
    /// Power loss: who recovers each state (kernel: a checker VM; host: ext4 via e2fsck/debugfs; both: compare).
    #[arg(long, value_enum, default_value = "kernel")]
    pub checker: Checker,
    /// Power loss, kernel checker: how the recovered files reach the host
    /// (extents: the guest maps them and the host reads the recovered disk,
    /// cross-checked against a copy on a sample of states; copy; both: every state).
    #[arg(long, value_enum, default_value = "extents")]
    pub read_files: config::FileRead,
    /// Power loss: also tear one write per state at 512-byte granularity.
    #[arg(long)]
    pub torn_writes: bool,
    /// Power loss, with --torn-writes: the device's atomic unit the tears
    /// respect (sector: any 512-byte sector may be lost; page: 4 KiB,
    /// device-aligned; both: chosen per state, recorded in it).
    #[arg(long, value_enum, default_value = "sector")]
    pub tear_unit: config::TearUnit,
    /// Power loss: check a seeded sample of up to --state-budget states, or
    /// every distinct state of the model (exhaustive: coverage figures say
    /// which epochs were too large and were sampled).
    #[arg(long, value_enum, default_value = "sample")]
    pub explore: config::Explore,
    /// Power loss: run the read-only fsck after every state's recovery.
    #[arg(long)]
    pub fsck_states: bool,
    /// Power loss: states checked in parallel (default: the number of cores,
    /// at most 4; under TCG each checker VM keeps one core busy).
    #[arg(long)]
    pub check_workers: Option<u32>,
    /// Kernel crash: fail the disk write that carries one seeded record
    /// (once) with this error, and see what the application is told.
    #[arg(long, value_enum)]
    pub inject_write_error: Option<config::WriteError>,
    /// Do not record the guest's msync calls with the kernel's tracepoints
    /// (trials keep workload.trace.log otherwise).
    #[arg(long)]
    pub no_msync_trace: bool,
    /// Test a program of your own instead of crashlab's record workload: a
    /// static x86-64 binary speaking the workload protocol
    /// (docs/workload-protocol.md); --records is how many items it writes.
    #[arg(long, requires = "checker_cmd")]
    pub workload: Option<PathBuf>,
    /// The program's checker, run after recovery in the guest (a static binary).
    #[arg(long, requires = "workload")]
    pub checker_cmd: Option<PathBuf>,
    /// An argument for the program (repeat for more; one word each).
    #[arg(long = "workload-arg", requires = "workload", allow_hyphen_values = true)]
    pub workload_args: Vec<String>,
    /// An argument for the checker (repeat for more; one word each).
    #[arg(long = "checker-arg", requires = "workload", allow_hyphen_values = true)]
    pub checker_args: Vec<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn parse_device_bug(text: &str) -> Result<blocklog::DeviceBug, String> {
    text.parse()
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ProfileArg {
    Linux,
    Posix,
}

/// A cell's configuration, from `crashlab run` flags: the same defaults and
/// validation as `run`.
pub fn cell_config(flags: &[String]) -> Result<CampaignConfig, String> {
    let argv = std::iter::once("crashlab".to_string()).chain(flags.iter().cloned());
    let cli = Cli::try_parse_from(argv).map_err(|e| format!("{}: {e}", flags.join(" ")))?;
    match cli.command {
        Command::Run(args) => config_from(&args),
        _ => unreachable!("cell flags start with run"),
    }
}

/// A path as given, made absolute (a campaign records it for its rerun).
pub fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The campaign configuration a `run` command line describes, validated.
pub fn config_from(args: &RunArgs) -> Result<CampaignConfig, String> {
    let record_size_bytes = u32::try_from(args.record_size)
        .map_err(|_| format!("--record-size {} is too large: at most 64K", args.record_size))?;
    let config = CampaignConfig {
        fs: args.fs,
        mount_opts: args
            .mount_opts
            .clone()
            .unwrap_or_else(|| args.fs.default_mount_opts().to_string()),
        mkfs_opts: args
            .mkfs_opts
            .clone()
            .unwrap_or_else(|| args.fs.default_mkfs_opts().to_string()),
        shard: args.shard,
        pattern: args.pattern,
        mode: args.mode,
        record_size_bytes,
        file_size_bytes: args.file_size,
        records_per_trial: args.records,
        trials: args.trials,
        seed: args.seed,
        crash_model: args.crash_model,
        crash_points: args.crash_points,
        crash_delay_max_ms: args.crash_delay_max_ms,
        planted_bug: args.planted_bug,
        device_bug: args.planted_device_bug,
        profile: match args.profile {
            ProfileArg::Linux => verifier::Profile::Linux,
            ProfileArg::Posix => verifier::Profile::Posix,
        },
        disk_size_bytes: args.disk_size.unwrap_or_else(|| args.fs.default_disk_size_bytes()),
        guest_memory_mib: args.guest_memory_mib,
        accel: args.accel,
        boot_timeout_ms: args.boot_timeout_ms,
        stall_timeout_ms: args.stall_timeout_ms,
        trial_timeout_ms: args.trial_timeout_ms,
        images_dir: args.images_dir.clone(),
        kernel_build: args.kernel_build.clone(),
        keep_images: args.keep_images,
        state_budget: args.state_budget,
        checker: args.checker,
        read_files: args.read_files,
        torn_writes: args.torn_writes,
        tear_unit: args.tear_unit,
        explore: args.explore,
        fsck_states: args.fsck_states,
        trace_msync: !args.no_msync_trace,
        inject_write_error: args.inject_write_error,
        program: match (&args.workload, &args.checker_cmd) {
            (Some(workload), Some(checker)) => Some(machine::program::ProgramSpec {
                workload: absolute(workload),
                checker: absolute(checker),
                workload_args: args.workload_args.clone(),
                checker_args: args.checker_args.clone(),
            }),
            _ => None,
        },
        crash_at: args.crash_at.clone(),
        check_workers: args.check_workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
                .min(4)
        }),
    };
    config.validate()?;
    Ok(config)
}

/// The `run` flags (without dashes) and how each takes its value, from
/// the command line's own definition: a campaign file takes exactly these.
pub fn run_flag_kinds() -> std::collections::BTreeMap<String, config::campaign_file::FlagKind> {
    use clap::CommandFactory;
    use config::campaign_file::FlagKind;
    const PATHS: [&str; 5] = ["images-dir", "results-dir", "workload", "checker-cmd", "junit"];
    let cli = Cli::command();
    let run = cli.find_subcommand("run").expect("run is a subcommand");
    run.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let kind = match a.get_action() {
                clap::ArgAction::SetTrue => FlagKind::Switch,
                clap::ArgAction::Append => FlagKind::Many,
                _ if PATHS.contains(&long) => FlagKind::Path,
                _ => FlagKind::Value,
            };
            Some((long.to_string(), kind))
        })
        .filter(|(long, _)| long != "help")
        .collect()
}

/// Parses `run` arguments as the command line does; the error is clap's,
/// without its usage hint.
pub fn parse_run_args(args: &[String]) -> Result<RunArgs, String> {
    let argv = ["crashlab", "run"]
        .into_iter()
        .map(String::from)
        .chain(args.iter().cloned());
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Run(run),
        }) => Ok(run),
        Ok(_) => unreachable!("the arguments start with run"),
        Err(e) => {
            let text = e.to_string();
            let text = text.split("\n\nFor more information").next().unwrap_or(&text);
            let text = text.split("\n\nUsage:").next().unwrap_or(text);
            Err(text
                .trim_start_matches("error: ")
                .replace('\n', " ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "))
        }
    }
}

/// The arguments given after `run` on this command line, without
/// `--config FILE`: what overrides the file.
/// Each as `--name=value` (or `--name` for a switch), as the file's own.
pub fn overrides_of_command_line() -> Vec<String> {
    let kinds = run_flag_kinds();
    let mut raw = std::env::args().skip_while(|a| a != "run").skip(1);
    let mut overrides = Vec::new();
    while let Some(arg) = raw.next() {
        let joined = match arg.strip_prefix("--") {
            Some(name)
                if !name.contains('=')
                    && kinds
                        .get(name)
                        .is_some_and(|k| *k != config::campaign_file::FlagKind::Switch) =>
            {
                format!("{arg}={}", raw.next().unwrap_or_default())
            }
            _ => arg,
        };
        if !(joined == "--config" || joined.starts_with("--config=")) {
            overrides.push(joined);
        }
    }
    overrides
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Values for the `run` flags that are not value enums (clap lists
    /// those itself).
    const VALUES: &[(&str, &[&str])] = &[
        ("mount-opts", &["defaults", "data=journal", "noatime,data=ordered"]),
        ("mkfs-opts", &["-T small", "-b 4096", "-O fast_commit -b 4096"]),
        (
            "pattern",
            &[
                "records",
                "partial-msync",
                "invalidate",
                "ipc",
                "wal",
                "growth",
                "several",
            ],
        ),
        (
            "mode",
            &[
                "ms-sync",
                "batch:8",
                "ms-async",
                "ms-async-fsync",
                "ms-async-fdatasync",
                "none",
            ],
        ),
        ("record-size", &["512", "4096", "64K"]),
        ("file-size", &["1M", "4M", "16M"]),
        ("records", &["1", "100", "2000"]),
        ("trials", &["1", "10", "1000"]),
        ("seed", &["0", "7", "18446744073709551615"]),
        ("crash-delay-max-ms", &["0", "3000"]),
        (
            "planted-bug",
            &[
                "ack-before-sync",
                "skip-sync:3",
                "async-instead-of-sync",
                "data-before-log",
            ],
        ),
        ("disk-size", &["64M", "1G"]),
        ("guest-memory-mib", &["256", "1024"]),
        ("boot-timeout-ms", &["1000", "60000"]),
        ("state-budget", &["1", "400"]),
        ("check-workers", &["1", "3"]),
    ];
    /// Flags that mean something only under power loss: a user gives them
    /// there (a kernel-crash campaign ignores them, and does not render them).
    const POWER_LOSS_ONLY: &[&str] = &[
        "state-budget",
        "explore",
        "checker",
        "read-files",
        "torn-writes",
        "fsck-states",
        "check-workers",
    ];
    const SWITCHES: &[&str] = &["keep-images", "torn-writes", "fsck-states", "no-msync-trace"];

    /// A seeded random `run` command line: each flag present or not, with
    /// one of its values.
    fn random_flags(rng: &mut impl Rng) -> Vec<String> {
        let run = Cli::command();
        let run = run.find_subcommand("run").unwrap();
        let power_loss = rng.random_bool(0.5);
        let mut flags = vec![format!(
            "--crash-model={}",
            if power_loss { "power-loss" } else { "kernel-crash" }
        )];
        let skip = |name: &str| name == "crash-model" || (!power_loss && POWER_LOSS_ONLY.contains(&name));
        for arg in run.get_arguments() {
            let Some(name) = arg.get_long() else { continue };
            if skip(name) || !rng.random_bool(0.3) {
                continue;
            }
            let values: Vec<String> = match VALUES.iter().find(|(n, _)| *n == name) {
                Some((_, values)) => values.iter().map(|v| v.to_string()).collect(),
                None => arg
                    .get_possible_values()
                    .iter()
                    .map(|v| v.get_name().to_string())
                    .collect(),
            };
            if SWITCHES.contains(&name) {
                flags.push(format!("--{name}"));
            } else if !values.is_empty() {
                flags.push(format!("--{name}={}", values[rng.random_range(0..values.len())]));
            }
        }
        flags
    }

    /// flags -> config -> flags -> config: the second configuration is the
    /// first. The rendering (`full_run_args`, what reruns, shards and
    /// Slurm tasks are started with) loses nothing a campaign uses.
    #[test]
    fn a_run_command_line_round_trips_through_its_configuration() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(24);
        let (mut valid, cases) = (0, 2000);
        for _ in 0..cases {
            let flags = random_flags(&mut rng);
            let Ok(config) = parse_run_args(&flags).and_then(|args| config_from(&args)) else {
                continue;
            };
            valid += 1;
            let rendered = config.full_run_args();
            let again = parse_run_args(&rendered)
                .and_then(|args| config_from(&args))
                .unwrap_or_else(|e| panic!("{flags:?} rendered as {rendered:?}, which does not parse: {e}"));
            assert_eq!(again, config, "{flags:?} rendered as {rendered:?}");
        }
        // Enough of the random lines are campaigns for the test to mean something.
        assert!(
            valid > cases / 10,
            "only {valid} of {cases} random command lines were valid"
        );
    }
}
