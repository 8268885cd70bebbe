//! `crashlab`: the command line over the controller library.
//!
//! Exit codes: 0 no violation, 1 at least one violation, 2 usage or setup
//! error, 130 interrupted (finished trials are kept).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use controller::campaign::{self, CampaignRequest};
use controller::config::{self, Accel, CampaignConfig, Checker, CrashModel, CrashPointKind, Filesystem};
use record::{DurabilityMode, PlantedBug};

/// stdout, ignoring a closed pipe (`crashlab ... | head`): the output is
/// a courtesy, the results are on disk, and a panic would be a lie.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "crashlab",
    version,
    about = "Crash-consistency testing of mmap + msync in a QEMU guest"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
struct DoctorArgs {
    /// Guest kernel and initramfs, as built by `cargo xtask images`.
    #[arg(long, env = "CRASHLAB_IMAGES_DIR", default_value = "vm-images/cache")]
    images_dir: PathBuf,
    /// Where campaigns would write their results.
    #[arg(long, default_value = "results")]
    results_dir: PathBuf,
    /// Skip the guest boot (quicker; then nothing proves QEMU, the kernel
    /// and the initramfs work together).
    #[arg(long)]
    no_boot: bool,
}

#[derive(Args)]
struct MatrixArgs {
    /// Filesystem configurations, each FS or FS:MOUNT-OPTS.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ext4:data=ordered,ext4:data=journal,ext4:data=writeback,xfs,btrfs,f2fs"
    )]
    configs: Vec<String>,
    /// Workload patterns (columns).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "records,partial-msync,invalidate,ipc,wal,growth,several"
    )]
    patterns: Vec<record::Pattern>,
    /// One table per crash model.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "power-loss")]
    crash_models: Vec<CrashModel>,
    #[command(flatten)]
    sweep: SweepArgs,
}

#[derive(Args)]
struct IoErrorsArgs {
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ext4,xfs,btrfs,f2fs")]
    fs: Vec<Filesystem>,
    #[command(flatten)]
    sweep: SweepArgs,
}

/// What every sweep takes.
#[derive(Args)]
struct SweepArgs {
    /// Where the cells' campaigns and the table go.
    #[arg(long, default_value = "results")]
    results_dir: PathBuf,
    /// Also write JUnit XML here: one test case per cell, a failure
    /// carrying the first violation and its replay command.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Name of the sweep's directory (default: timestamp).
    #[arg(long)]
    id: Option<String>,
    /// Further `crashlab run` flags for every cell, after `--`
    /// (e.g. -- --trials=1 --state-budget=200 --records=300).
    #[arg(last = true)]
    run_flags: Vec<String>,
}

#[derive(Args)]
struct ConformanceArgs {
    /// Filesystems to run the suite on (one guest boot each).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ext4,xfs,btrfs,f2fs")]
    fs: Vec<Filesystem>,
    /// Guest kernel and initramfs, as built by `cargo xtask images`.
    #[arg(long, env = "CRASHLAB_IMAGES_DIR", default_value = "vm-images/cache")]
    images_dir: PathBuf,
    /// Where the table goes (conformance.txt, conformance.json).
    #[arg(long, default_value = "results")]
    results_dir: PathBuf,
    /// Name of the output directory (default: timestamp).
    #[arg(long)]
    id: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    accel: Accel,
    #[arg(long, default_value_t = 60_000)]
    boot_timeout_ms: u64,
}

#[derive(Args)]
struct ReplayArgs {
    /// The campaign directory (results/<campaign-id>).
    #[arg(long)]
    campaign: PathBuf,
    #[arg(long)]
    trial: u64,
    #[arg(long, required_unless_present = "state_file")]
    state: Option<u64>,
    /// A state file `crashlab minimise` wrote, instead of --state.
    #[arg(long, conflicts_with = "state")]
    state_file: Option<PathBuf>,
    /// Where to write the state's disk image (default: in the trial's directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Who recovers the state: kernel (a checker VM), host (ext4), or both.
    #[arg(long, value_enum, default_value = "kernel")]
    checker: Checker,
    /// Overrides the campaign's guest images directory.
    #[arg(long)]
    images_dir: Option<PathBuf>,
}

#[derive(Args)]
struct SlurmArgs {
    /// Shards: tasks of the job array.
    #[arg(long, required_unless_present = "resume")]
    shards: Option<u32>,
    /// An option for sbatch, written into both scripts (repeat for more),
    /// e.g. --sbatch-arg=--partition=long --sbatch-arg=--time=12:00:00.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    sbatch_args: Vec<String>,
    /// Run sbatch now (else the commands are printed).
    #[arg(long)]
    submit: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct MinimiseArgs {
    /// The campaign directory (results/<campaign-id>).
    #[arg(long)]
    campaign: PathBuf,
    #[arg(long)]
    trial: u64,
    /// A failing state of the trial (states.jsonl names them).
    #[arg(long)]
    state: u64,
    /// Who checks each candidate: kernel (a checker VM) or host (ext4).
    /// Default: the campaign's checker.
    #[arg(long, value_enum)]
    checker: Option<Checker>,
    /// Overrides the campaign's guest images directory.
    #[arg(long)]
    images_dir: Option<PathBuf>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct WorkloadRateArgs {
    /// Rounds of the three runs.
    #[arg(long, default_value_t = 5)]
    pairs: u32,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct ReplayLoopArgs {
    #[arg(long)]
    campaign: PathBuf,
    #[arg(long, default_value_t = 0)]
    trial: u64,
    /// Flushes to replay to, evenly spaced over the log.
    #[arg(long, default_value_t = 200)]
    states: u64,
}

#[derive(Args)]
struct RecheckArgs {
    /// The campaign directory (results/<campaign-id>), run with
    /// --keep-images or with a failed state in this trial.
    #[arg(long)]
    campaign: PathBuf,
    #[arg(long, default_value_t = 0)]
    trial: u64,
    /// States to check in this trial (default: the campaign's).
    #[arg(long)]
    state_budget: Option<u64>,
    #[arg(long, value_enum)]
    checker: Option<Checker>,
    #[arg(long)]
    check_workers: Option<u32>,
    #[arg(long, value_enum)]
    read_files: Option<config::FileRead>,
    /// Write one line per state here (as states.jsonl).
    #[arg(long)]
    states_out: Option<PathBuf>,
    /// Print the trial's whole record as JSON instead of a summary.
    #[arg(long)]
    json: bool,
    /// Overrides the campaign's guest images directory.
    #[arg(long)]
    images_dir: Option<PathBuf>,
}

#[derive(Args)]
struct CompareArgs {
    /// The campaign directory (results/<campaign-id>). Recovery mode needs
    /// its captures kept (--keep-images, or a failed state).
    #[arg(long)]
    campaign: PathBuf,
    /// Kernel B's guest images (`cargo xtask kernel --out DIR`, or `cargo
    /// xtask images --kernel ... --out DIR`).
    #[arg(long)]
    images_dir: PathBuf,
    /// Kernel A's guest images (default: the campaign's own).
    #[arg(long)]
    baseline_images_dir: Option<PathBuf>,
    /// Only these trials (repeatable; default: every kept trial, or every
    /// finished one with --recapture).
    #[arg(long)]
    trial: Vec<u64>,
    /// States per trial (default: the campaign's), the same for A and B.
    #[arg(long)]
    state_budget: Option<u64>,
    #[arg(long)]
    check_workers: Option<u32>,
    /// Run the campaign's configuration again on B (same seeds) and compare
    /// trials: bugs in the write path too, but not the same bytes.
    #[arg(long)]
    recapture: bool,
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct RunArgs {
    /// A campaign file (TOML): the flags of `run` as keys, and a [sweep]
    /// of lists that expands into a matrix (examples/ has some). Flags
    /// given here override the file.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    config: Option<PathBuf>,
    /// Filesystem under test.
    #[arg(long, value_enum, default_value = "ext4")]
    fs: Filesystem,
    /// Mount options (one comma-separated word; "defaults" for none).
    /// Default: data=ordered for ext4, defaults for the others.
    #[arg(long)]
    mount_opts: Option<String>,
    /// Options given to mkfs, split at spaces (as xfstests' MKFS_OPTIONS):
    /// features, block size, journal size. Default: "-T default" for ext4
    /// (4 KiB blocks as on a real disk; "-T small" gives 1 KiB), none for
    /// the others.
    #[arg(long, allow_hyphen_values = true)]
    mkfs_opts: Option<String>,
    /// Workload pattern: records, partial-msync, invalidate, ipc, wal, growth, several.
    #[arg(long, default_value = "records")]
    pattern: record::Pattern,
    /// Durability mode (pattern records): ms-sync, batch:N, ms-async, ms-async-fsync, ms-async-fdatasync, none.
    #[arg(long, default_value = "ms-sync")]
    mode: DurabilityMode,
    /// Record size (512 to 64K, a multiple of 512).
    #[arg(long, default_value = "4096", value_parser = config::parse_size_bytes)]
    record_size: u64,
    /// Data file size; records wrap around when it is full.
    #[arg(long, default_value = "4M", value_parser = config::parse_size_bytes)]
    file_size: u64,
    /// Records the workload writes per trial (if no crash comes first).
    #[arg(long, default_value_t = 2000)]
    records: u64,
    /// Number of trials.
    #[arg(long, default_value_t = 10)]
    trials: u64,
    /// Campaign seed: the same seed gives the same crash points.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Crash model.
    #[arg(long, value_enum, default_value = "kernel-crash")]
    crash_model: CrashModel,
    /// Which crash points trials draw.
    #[arg(long, value_enum, default_value = "mixed")]
    crash_points: CrashPointKind,
    /// Upper bound of delay-based crash points, after READY.
    #[arg(long, default_value_t = 3000)]
    crash_delay_max_ms: u64,
    /// A deliberate workload bug, to measure that the checks catch it:
    /// ack-before-sync, skip-sync[:N], sync-wrong-range, async-instead-of-sync[:N].
    #[arg(long)]
    planted_bug: Option<PlantedBug>,
    /// Power loss: a deliberate disk bug, to measure that the checks catch
    /// it: drop-flush:N (one flush in N ignored), reorder-across-flush:N (a
    /// write held past one flush in N).
    #[arg(long, value_parser = parse_device_bug)]
    planted_device_bug: Option<blocklog::DeviceBug>,
    /// How strictly to read msync's promise.
    #[arg(long, value_enum, default_value = "linux")]
    profile: ProfileArg,
    /// Guest disk size. Default: 64M, or the filesystem's minimum (xfs 300M,
    /// btrfs 128M).
    #[arg(long, value_parser = config::parse_size_bytes)]
    disk_size: Option<u64>,
    #[arg(long, default_value_t = 512)]
    guest_memory_mib: u32,
    /// KVM or TCG; auto proves KVM with a sanity boot.
    #[arg(long, value_enum, default_value = "auto")]
    accel: Accel,
    #[arg(long, default_value_t = 60_000)]
    boot_timeout_ms: u64,
    #[arg(long, default_value_t = 30_000)]
    stall_timeout_ms: u64,
    #[arg(long, default_value_t = 300_000)]
    trial_timeout_ms: u64,
    /// Guest kernel and initramfs, as built by `cargo xtask images` (or
    /// `cargo xtask kernel --out DIR`, a kernel built from source).
    #[arg(long, env = "CRASHLAB_IMAGES_DIR", default_value = "vm-images/cache")]
    images_dir: PathBuf,
    /// The kernel build (the first digits of its build key, as campaign.json
    /// records it) that --images-dir must hold; a campaign on a built kernel
    /// records it in its rerun command. Default: whatever the images hold.
    #[arg(long, value_name = "KEY")]
    kernel_build: Option<String>,
    /// Where campaign directories are created.
    #[arg(long, default_value = "results")]
    results_dir: PathBuf,
    /// Also write JUnit XML here: the campaign as one test case, a failure
    /// carrying its first violation and the command that replays it.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Name of the campaign directory (default: timestamp, fs, mode, seed).
    #[arg(long)]
    campaign_id: Option<String>,
    /// Run only this trial of the campaign (its crash point is the same as
    /// in the full campaign).
    #[arg(long)]
    only_trial: Option<u64>,
    /// Continue the interrupted campaign in this directory (Ctrl-C, a kill,
    /// a reboot), with the configuration it recorded: finished trials are
    /// kept, the others run. The other flags, except --quiet and
    /// --images-dir, are not used.
    #[arg(long, value_name = "CAMPAIGN_DIR", conflicts_with_all = ["only_trial", "campaign_id"])]
    resume: Option<PathBuf>,
    /// Run only shard I of N (from 0): a share of the trials dealt by the
    /// seed; `crashlab merge` puts the N shards together.
    #[arg(long, value_name = "I/N")]
    shard: Option<config::Shard>,
    /// Run the campaign as K shards at once on this machine (each its own
    /// QEMU and results), then merge them.
    #[arg(long, value_name = "K", conflicts_with_all = ["shard", "only_trial", "resume"])]
    jobs: Option<u32>,
    /// Power loss: after the campaign, minimise its first failing state
    /// (as `crashlab minimise` does) and keep the result as minimised.json.
    #[arg(long)]
    minimise: bool,
    /// Keep every crashed disk image, not only those that broke a rule.
    #[arg(long)]
    keep_images: bool,
    /// Power loss: crash states verified over the whole campaign.
    #[arg(long, default_value_t = 1000)]
    state_budget: u64,
    /// Power loss: who recovers each state (kernel: a checker VM; host: ext4 via e2fsck/debugfs; both: compare).
    #[arg(long, value_enum, default_value = "kernel")]
    checker: Checker,
    /// Power loss, kernel checker: how the recovered files reach the host
    /// (extents: the guest maps them and the host reads the recovered disk,
    /// cross-checked against a copy on a sample of states; copy; both: every state).
    #[arg(long, value_enum, default_value = "extents")]
    read_files: config::FileRead,
    /// Power loss: also tear one write per state at 512-byte granularity.
    #[arg(long)]
    torn_writes: bool,
    /// Power loss: run the read-only fsck after every state's recovery.
    #[arg(long)]
    fsck_states: bool,
    /// Power loss: states checked in parallel (default: the number of cores,
    /// at most 4; under TCG each checker VM keeps one core busy).
    #[arg(long)]
    check_workers: Option<u32>,
    /// Kernel crash: fail the disk write that carries one seeded record
    /// (once) with this error, and see what the application is told.
    #[arg(long, value_enum)]
    inject_write_error: Option<config::WriteError>,
    /// Do not record the guest's msync calls with the kernel's tracepoints
    /// (trials keep workload.trace.log otherwise).
    #[arg(long)]
    no_msync_trace: bool,
    /// Test a program of your own instead of crashlab's record workload: a
    /// static x86-64 binary speaking the workload protocol
    /// (docs/workload-protocol.md); --records is how many items it writes.
    #[arg(long, requires = "checker_cmd")]
    workload: Option<PathBuf>,
    /// The program's checker, run after recovery in the guest (a static binary).
    #[arg(long, requires = "workload")]
    checker_cmd: Option<PathBuf>,
    /// An argument for the program (repeat for more; one word each).
    #[arg(long = "workload-arg", requires = "workload", allow_hyphen_values = true)]
    workload_args: Vec<String>,
    /// An argument for the checker (repeat for more; one word each).
    #[arg(long = "checker-arg", requires = "workload", allow_hyphen_values = true)]
    checker_args: Vec<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn parse_device_bug(text: &str) -> Result<blocklog::DeviceBug, String> {
    text.parse()
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProfileArg {
    Linux,
    Posix,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // What a SIGKILLed earlier run left behind (its guests died with it).
    for dir in controller::lifetime::clean_stale() {
        eprintln!("crashlab: removed {}, left by a run that was killed", dir.display());
    }
    // Ctrl-C and SIGTERM only set a flag, which every loop checks.
    if let Err(e) = controller::signals::install() {
        eprintln!("error: cannot install the Ctrl-C handler: {e}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Run(args) => run(args),
        Command::ReplayState(args) => replay(args),
        Command::Recheck(args) => recheck(args),
        Command::Compare(args) => compare(args),
        Command::ReplayLoop(args) => replay_loop(args),
        Command::WorkloadRate(args) => workload_rate(args),
        Command::Conformance(args) => conformance(args),
        Command::Matrix(args) => sweep(matrix_cells(&args), "matrix", &args.sweep),
        Command::IoErrors(args) => sweep(io_error_cells(&args), "io-errors", &args.sweep),
        Command::Doctor(args) => doctor(args),
        Command::Minimise(args) => minimise(args),
        Command::Slurm(args) => slurm(args),
        Command::Merge { out, shards } => match controller::merge::merge(&out, &shards) {
            Ok(summary) => {
                out!("{}", summary.render());
                ExitCode::from(u8::from(summary.violations > 0))
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Report { dir, junit } => report(&dir, junit.as_deref()),
        Command::Verify { dir } => match controller::verify::verify(&dir) {
            Ok(verification) => {
                out!("{}", verification.render());
                ExitCode::from(u8::from(!verification.problems.is_empty()))
            }
            Err(e) => exit_for(&e),
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "crashlab", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::ManPages { out } => match write_man_pages(&out) {
            Ok(n) => {
                outln!("{n} man pages in {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot write the man pages into {}: {e}", out.display());
                ExitCode::from(2)
            }
        },
    }
}

/// The exit code of a command that failed: 130 when the user interrupted
/// it, else 2 with the error (setup or usage) on stderr.
fn exit_for(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<controller::vm::Interrupted>().is_some() {
        return ExitCode::from(130);
    }
    eprintln!("error: {e:#}");
    ExitCode::from(2)
}

/// crashlab.1, and crashlab-SUB.1 for each visible subcommand.
fn write_man_pages(out: &std::path::Path) -> std::io::Result<usize> {
    use clap::CommandFactory;
    std::fs::create_dir_all(out)?;
    let top = Cli::command();
    let mut pages = vec![("crashlab.1".to_string(), top.clone())];
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("crashlab-{}", sub.get_name());
        pages.push((
            format!("{name}.1"),
            sub.clone()
                .display_name(name)
                .bin_name(format!("crashlab {}", sub.get_name())),
        ));
    }
    for (file, command) in &pages {
        let mut roff = Vec::new();
        clap_mangen::Man::new(command.clone()).render(&mut roff)?;
        std::fs::write(out.join(file), roff)?;
    }
    Ok(pages.len())
}

fn report(dir: &std::path::Path, junit: Option<&std::path::Path>) -> ExitCode {
    let result = controller::report::write_report(dir).and_then(|page| {
        if let Some(path) = junit {
            let dirs = controller::report::find_campaigns(dir)?;
            controller::junit::write(path, &dir.display().to_string(), &dirs)?;
        }
        Ok(page)
    });
    match result {
        Ok(page) => {
            outln!("{}", page.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `run --minimise`: the campaign's first failing power-loss state,
/// minimised; the outcome printed and kept as minimised.json. A failure
/// here is reported, not fatal: the campaign's results stand.
fn minimise_first_failure(dir: &std::path::Path) {
    let first = std::fs::read_to_string(dir.join("states.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|s| s["passed"] == false);
    let Some(first) = first else {
        eprintln!(
            "--minimise: no failing power-loss state to minimise (a kernel-crash campaign, or live findings only)"
        );
        return;
    };
    let request = controller::minimise::MinimiseRequest {
        campaign_dir: dir,
        trial: first["trial"].as_u64().unwrap_or(0),
        state: first["state"].as_u64().unwrap_or(0),
        checker: None,
        images_dir: None,
        interrupt: &controller::signals::INTERRUPTED,
    };
    match controller::minimise::minimise(&request) {
        Ok(outcome) => {
            out!(
                "\nminimised, the first failing state:\n{}",
                controller::minimise::render(&outcome)
            );
            let json = serde_json::to_string_pretty(&outcome).unwrap_or_default() + "\n";
            if let Err(e) = controller::durable::write_atomically(&dir.join("minimised.json"), json.as_bytes()) {
                eprintln!("--minimise: cannot write minimised.json: {e:#}");
            }
        }
        Err(e) => eprintln!("--minimise: the first failing state could not be minimised: {e:#}"),
    }
}

fn minimise(args: MinimiseArgs) -> ExitCode {
    let request = controller::minimise::MinimiseRequest {
        campaign_dir: &args.campaign,
        trial: args.trial,
        state: args.state,
        checker: args.checker,
        images_dir: args.images_dir,
        interrupt: &controller::signals::INTERRUPTED,
    };
    match controller::minimise::minimise(&request) {
        Ok(outcome) => {
            match args.json {
                true => outln!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default()),
                false => out!("{}", controller::minimise::render(&outcome)),
            }
            ExitCode::SUCCESS
        }
        Err(e) => exit_for(&e),
    }
}

fn doctor(args: DoctorArgs) -> ExitCode {
    let request = controller::doctor::DoctorRequest {
        images_dir: &args.images_dir,
        results_dir: &args.results_dir,
        boot: !args.no_boot,
        interrupt: &controller::signals::INTERRUPTED,
    };
    match controller::doctor::examine(&request) {
        Ok(findings) => {
            out!("{}", controller::doctor::render(&findings));
            let fails = findings.iter().any(|f| f.status == controller::doctor::Status::Fail);
            ExitCode::from(u8::from(fails))
        }
        Err(e) => exit_for(&e),
    }
}

/// A cell's configuration, from `crashlab run` flags: the same defaults and
/// validation as `run`.
fn cell_config(flags: &[String]) -> Result<CampaignConfig, String> {
    let argv = std::iter::once("crashlab".to_string()).chain(flags.iter().cloned());
    let cli = Cli::try_parse_from(argv).map_err(|e| format!("{}: {e}", flags.join(" ")))?;
    match cli.command {
        Command::Run(args) => config_from(&args),
        _ => unreachable!("cell flags start with run"),
    }
}

type Cells = Result<(String, Vec<controller::matrix::Cell>), String>;

fn matrix_cells(args: &MatrixArgs) -> Cells {
    let mut cells = Vec::new();
    for model in &args.crash_models {
        let model_name = match model {
            CrashModel::KernelCrash => "kernel-crash",
            CrashModel::PowerLoss => "power-loss",
        };
        for config in &args.configs {
            let (fs, opts) = config.split_once(':').unwrap_or((config.as_str(), ""));
            for pattern in &args.patterns {
                let mut flags = vec![
                    "run".to_string(),
                    format!("--fs={fs}"),
                    format!("--pattern={pattern}"),
                    format!("--crash-model={model_name}"),
                ];
                if !opts.is_empty() {
                    flags.push(format!("--mount-opts={opts}"));
                }
                flags.extend(args.sweep.run_flags.iter().cloned());
                cells.push(controller::matrix::Cell {
                    row: format!("{model_name}: {}", config.replace(':', " ")),
                    column: pattern.to_string(),
                    config: cell_config(&flags)?,
                });
            }
        }
    }
    Ok((
        "matrix: states checked / violations / observations per cell".into(),
        cells,
    ))
}

fn io_error_cells(args: &IoErrorsArgs) -> Cells {
    let mut cells = Vec::new();
    for fs in &args.fs {
        for error in ["eio", "enospc"] {
            for (column, points) in [("no crash", "end"), ("kernel crash", "acks")] {
                let mut flags = vec![
                    "run".to_string(),
                    format!("--fs={}", fs.name()),
                    format!("--inject-write-error={error}"),
                    format!("--crash-points={points}"),
                    "--crash-model=kernel-crash".into(),
                    "--trials=1".into(),
                ];
                flags.extend(args.sweep.run_flags.iter().cloned());
                cells.push(controller::matrix::Cell {
                    row: format!("{} {}", fs.name(), error.to_uppercase()),
                    column: column.into(),
                    config: cell_config(&flags)?,
                });
            }
        }
    }
    Ok(("injected write errors".into(), cells))
}

fn sweep(cells: Cells, name: &str, args: &SweepArgs) -> ExitCode {
    let (results_dir, id) = (&args.results_dir, args.id.as_deref());
    let (title, cells) = match cells {
        Ok(cells) => cells,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let out_dir = results_dir.join(id.map_or_else(|| format!("{}-{name}", campaign::utc_timestamp()), String::from));
    let interrupt = &controller::signals::INTERRUPTED;
    let result = controller::matrix::run_cells(&title, &cells, &out_dir, interrupt).and_then(|table| {
        let text = match name {
            "io-errors" => controller::matrix::write_io_errors_table(&table, &out_dir)?,
            _ => controller::matrix::write(&table, &out_dir, name)?,
        };
        if let Some(path) = &args.junit {
            let dirs: Vec<PathBuf> = table
                .rows
                .iter()
                .flat_map(|row| table.columns.iter().map(move |column| (row, column)))
                .filter_map(|(row, column)| table.cells.get(row)?.get(column))
                .map(|cell| cell.results_dir.clone())
                .collect();
            controller::junit::write(path, &format!("crashlab {name}"), &dirs)?;
        }
        Ok((table, text))
    });
    match result {
        Ok((table, text)) => {
            out!("{text}");
            outln!("\nresults: {}", out_dir.display());
            let failed = table.cells.values().flat_map(|r| r.values()).any(|c| c.violations > 0);
            ExitCode::from(u8::from(failed))
        }
        Err(e) if e.downcast_ref::<controller::vm::Interrupted>().is_some() => {
            eprintln!("interrupted: finished cells are kept in {}", out_dir.display());
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn conformance(args: ConformanceArgs) -> ExitCode {
    let id = args
        .id
        .unwrap_or_else(|| format!("{}-conformance", campaign::utc_timestamp()));
    let request = controller::conformance::ConformanceRequest {
        filesystems: args.fs,
        images_dir: args.images_dir,
        out_dir: args.results_dir.join(id),
        accel: args.accel,
        boot_timeout_ms: args.boot_timeout_ms,
        interrupt: &controller::signals::INTERRUPTED,
    };
    match controller::conformance::run_conformance(&request)
        .and_then(|table| controller::conformance::write(&table, &request.out_dir))
    {
        Ok(text) => {
            out!("{text}");
            outln!("\nresults: {}", request.out_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => exit_for(&e),
    }
}

fn replay(args: ReplayArgs) -> ExitCode {
    let request = controller::replay::ReplayRequest {
        campaign_dir: &args.campaign,
        trial: args.trial,
        state: args.state.unwrap_or(0),
        state_file: args.state_file,
        out: args.out,
        checker: args.checker,
        images_dir: args.images_dir,
        interrupt: &controller::signals::INTERRUPTED,
    };
    match controller::replay::replay_state(&request) {
        Ok(outcome) => {
            outln!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default());
            let failed = outcome.verdicts.iter().any(|(_, v)| !v.passed);
            ExitCode::from(u8::from(failed))
        }
        Err(e) => exit_for(&e),
    }
}

fn workload_rate(args: WorkloadRateArgs) -> ExitCode {
    let config = match config_from(&args.run) {
        Ok(config) => config,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let id = args
        .run
        .campaign_id
        .clone()
        .unwrap_or_else(|| format!("{}-workload-rate", campaign::utc_timestamp()).replace(':', ""));
    let dir = args.run.results_dir.join(id);
    match controller::rate::measure(&config, args.pairs, &dir, &controller::signals::INTERRUPTED) {
        Ok(report) => {
            outln!("{}", serde_json::to_string(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => exit_for(&e),
    }
}

fn replay_loop(args: ReplayLoopArgs) -> ExitCode {
    let outcome = controller::kept::KeptTrial::load(&args.campaign, args.trial, None).and_then(|kept| {
        let work = tempfile::Builder::new()
            .prefix("crashlab-replay-loop-")
            .tempdir_in(&kept.trial_dir)?;
        controller::replay_loop::replay_loop(&kept, args.states, work.path())
    });
    match outcome {
        Ok(outcome) => {
            outln!("{}", serde_json::to_string(&outcome).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn compare(args: CompareArgs) -> ExitCode {
    let request = controller::compare::CompareRequest {
        campaign_dir: &args.campaign,
        images_b: args.images_dir,
        images_a: args.baseline_images_dir,
        trials: args.trial,
        state_budget: args.state_budget,
        check_workers: args.check_workers,
        recapture: args.recapture,
        show_progress: !args.quiet,
        interrupt: &controller::signals::INTERRUPTED,
    };
    match controller::compare::compare(&request) {
        Ok((comparison, dir)) => {
            out!("{}", controller::compare::render(&comparison, &dir));
            ExitCode::from(comparison.exit_code())
        }
        Err(e) => exit_for(&e),
    }
}

fn recheck(args: RecheckArgs) -> ExitCode {
    let request = controller::recheck::RecheckRequest {
        campaign_dir: &args.campaign,
        trial: args.trial,
        state_budget: args.state_budget,
        checker: args.checker,
        check_workers: args.check_workers,
        read_files: args.read_files,
        images_dir: args.images_dir,
        interrupt: &controller::signals::INTERRUPTED,
    };
    let mut states_out = match args.states_out.as_deref().map(std::fs::File::create).transpose() {
        Ok(file) => file.map(std::io::BufWriter::new),
        Err(e) => {
            eprintln!(
                "error: cannot create {}: {e}",
                args.states_out.unwrap_or_default().display()
            );
            return ExitCode::from(2);
        }
    };
    let outcome = controller::recheck::recheck(&request, |line| {
        if let Some(out) = states_out.as_mut() {
            use std::io::Write;
            writeln!(out, "{}", serde_json::to_string(line)?)?;
        }
        Ok(())
    })
    .and_then(|record| {
        if let Some(mut out) = states_out.take() {
            use std::io::Write;
            out.flush()?;
        }
        Ok(record)
    });
    match outcome {
        Ok(record) => {
            let peak_rss_kib = controller::campaign::peak_rss_kib(nix::sys::resource::UsageWho::RUSAGE_SELF);
            if args.json {
                let out = serde_json::json!({ "record": record, "peak_rss_kib": peak_rss_kib });
                outln!("{out}");
            } else {
                let t = &record.timing_ms;
                let per_state_ms = (t.parse + t.plan + t.check_wall) as f64 / record.states_checked.max(1) as f64;
                outln!(
                    "trial {}: {} states checked, {} failed, {} violations; {per_state_ms:.1} ms per state \
                     (parse {} + plan {} + check {} ms, {} workers, checker boot {} ms); peak RSS {} MiB",
                    record.run.trial,
                    record.states_checked,
                    record.states_failed,
                    record.violation_count,
                    t.parse,
                    t.plan,
                    t.check_wall,
                    record.check_workers,
                    t.checker_boot,
                    peak_rss_kib / 1024
                );
                for v in record.violations.iter().take(5) {
                    outln!("  state {}: {}", v.state, v.finding.reason);
                }
            }
            ExitCode::from(u8::from(!record.passed))
        }
        Err(e) => exit_for(&e),
    }
}

/// A path as given, made absolute (a campaign records it for its rerun).
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The campaign configuration a `run` command line describes, validated.
fn config_from(args: &RunArgs) -> Result<CampaignConfig, String> {
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
        fsck_states: args.fsck_states,
        trace_msync: !args.no_msync_trace,
        inject_write_error: args.inject_write_error,
        program: match (&args.workload, &args.checker_cmd) {
            (Some(workload), Some(checker)) => Some(controller::program::ProgramSpec {
                workload: absolute(workload),
                checker: absolute(checker),
                workload_args: args.workload_args.clone(),
                checker_args: args.checker_args.clone(),
            }),
            _ => None,
        },
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
fn run_flag_kinds() -> std::collections::BTreeMap<String, controller::campaign_file::FlagKind> {
    use clap::CommandFactory;
    use controller::campaign_file::FlagKind;
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
fn parse_run_args(args: &[String]) -> Result<RunArgs, String> {
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
fn overrides_of_command_line() -> Vec<String> {
    let kinds = run_flag_kinds();
    let mut raw = std::env::args().skip_while(|a| a != "run").skip(1);
    let mut overrides = Vec::new();
    while let Some(arg) = raw.next() {
        let joined = match arg.strip_prefix("--") {
            Some(name)
                if !name.contains('=')
                    && kinds
                        .get(name)
                        .is_some_and(|k| *k != controller::campaign_file::FlagKind::Switch) =>
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

/// `crashlab run --config FILE [flags]`: one campaign, or the matrix of
/// the file's [sweep].
fn run_file(path: &std::path::Path) -> ExitCode {
    use controller::campaign_file;
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(2)
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return fail(format!("cannot read the campaign file {}: {e}", path.display())),
    };
    // One key's value, on its own: a flag that needs another one (the
    // checker's arguments need --workload) is checked with the whole cell.
    let validate = |args: &[String]| {
        let argv = ["crashlab", "run"]
            .into_iter()
            .map(String::from)
            .chain(args.iter().cloned());
        match Cli::try_parse_from(argv) {
            Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => Ok(()),
            _ => parse_run_args(args).map(|_| ()),
        }
    };
    let file = match campaign_file::parse(path, &text, &run_flag_kinds(), &validate) {
        Ok(file) => file,
        Err(msg) => return fail(msg),
    };
    let overrides = overrides_of_command_line();
    let cells = match campaign_file::expand(&file, &overrides) {
        Ok(cells) => cells,
        Err(msg) => return fail(msg),
    };
    // Where a configuration error comes from: the file's line for a flag it set.
    let locate = |msg: String| match file
        .settings
        .iter()
        .find(|s| msg.contains(&format!("--{}", s.key)) && !campaign_file::flags_in(&overrides).contains(&s.key))
    {
        Some(s) => format!("{msg} (set by {}:{})", path.display(), s.line),
        None => msg,
    };
    if cells.len() == 1 && cells[0].axes.is_empty() {
        let args = match parse_run_args(&cells[0].args) {
            Ok(args) => args,
            Err(msg) => return fail(locate(msg)),
        };
        if let Err(msg) = config_from(&args) {
            return fail(locate(msg));
        }
        return run(args);
    }
    // A sweep: each cell a campaign, as `crashlab matrix` runs them.
    let first = match parse_run_args(&cells[0].args) {
        Ok(args) => args,
        Err(msg) => return fail(locate(msg)),
    };
    const ROW_KEYS: [&str; 6] = ["crash-model", "fs", "mkfs-opts", "mount-opts", "images-dir", "seed"];
    let mut matrix_cells = Vec::new();
    for cell in &cells {
        let label = |row: bool| {
            let parts: Vec<String> = cell
                .axes
                .iter()
                .filter(|(k, _)| ROW_KEYS.contains(&k.as_str()) == row)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            match parts.is_empty() {
                true => "campaign".to_string(),
                false => parts.join(" "),
            }
        };
        let config = match parse_run_args(&cell.args).and_then(|a| config_from(&a)) {
            Ok(config) => config,
            Err(msg) => {
                return fail(format!(
                    "{} ({}): {}",
                    path.display(),
                    label(true) + " " + &label(false),
                    locate(msg)
                ))
            }
        };
        matrix_cells.push(controller::matrix::Cell {
            row: label(true),
            column: label(false),
            config,
        });
    }
    let id = first.campaign_id.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            campaign::utc_timestamp(),
            path.file_stem().map_or("campaign".into(), |s| s.to_string_lossy())
        )
    });
    // The sweep as resolved (settings with the command line's overrides
    // applied, the remaining axes): rerunnable with --config.
    let out_dir = first.results_dir.join(&id);
    let mut resolved = campaign_file::render(
        &campaign_file::expand(
            &controller::campaign_file::CampaignFile {
                sweep: vec![],
                ..file.clone()
            },
            &overrides,
        )
        .map(|c| c[0].args.clone())
        .unwrap_or_default(),
        &format!(
            "crashlab sweep {id}, resolved from {}; rerun with crashlab run --config sweep.toml",
            path.display()
        ),
    );
    resolved += "\n[sweep]\n";
    for axis in file
        .sweep
        .iter()
        .filter(|a| !campaign_file::flags_in(&overrides).contains(&a.key))
    {
        let values: Vec<String> = axis
            .values
            .iter()
            .map(|v| toml::Value::String(v.clone()).to_string())
            .collect();
        resolved += &format!("{} = [{}]\n", axis.key, values.join(", "));
    }
    if let Err(e) =
        std::fs::create_dir_all(&out_dir).and_then(|()| std::fs::write(out_dir.join("sweep.toml"), resolved))
    {
        return fail(format!("cannot write {}/sweep.toml: {e}", out_dir.display()));
    }
    let title = format!("{}: {} campaigns", path.display(), matrix_cells.len());
    sweep(
        Ok((title, matrix_cells)),
        "campaign-file",
        &SweepArgs {
            results_dir: first.results_dir.clone(),
            id: Some(id),
            junit: first.junit.clone(),
            run_flags: Vec::new(),
        },
    )
}

fn run(args: RunArgs) -> ExitCode {
    // A file's cells never hold --config (files cannot set it): no loop.
    if let Some(path) = &args.config {
        return run_file(path);
    }
    if let Some(jobs) = args.jobs {
        return run_jobs(&args, jobs);
    }
    if let Some(dir) = &args.resume {
        return match resume_request(dir, &args) {
            Ok((config, root, id)) => run_request(
                &CampaignRequest {
                    config: &config,
                    results_root: &root,
                    campaign_id: id,
                    only_trial: None,
                    resume: true,
                    show_progress: !args.quiet,
                    interrupt: &controller::signals::INTERRUPTED,
                },
                args.junit.as_deref(),
                args.minimise,
            ),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let config = match config_from(&args) {
        Ok(config) => config,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let campaign_id = args.campaign_id.unwrap_or_else(|| {
        format!(
            "{}-{}-{}-seed{}",
            campaign::utc_timestamp(),
            config.fs.name(),
            config.mode,
            config.seed
        )
        .replace(':', "")
    });
    let request = CampaignRequest {
        config: &config,
        results_root: &args.results_dir,
        campaign_id,
        only_trial: args.only_trial,
        resume: false,
        show_progress: !args.quiet,
        interrupt: &controller::signals::INTERRUPTED,
    };
    run_request(&request, args.junit.as_deref(), args.minimise)
}

/// `crashlab slurm`: the scripts of a sharded campaign, or (with
/// --resume DIR) the resubmission of its unfinished shards.
fn slurm(args: SlurmArgs) -> ExitCode {
    use controller::slurm;
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(2)
    };
    let (dir, array, merge, tasks) = match &args.run.resume {
        Some(dir) => {
            let state = match std::fs::read_to_string(dir.join("slurm/slurm.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            {
                Some(state) => state,
                None => {
                    return fail(format!(
                        "{} holds no slurm/slurm.json: was it written by `crashlab slurm`?",
                        dir.display()
                    ))
                }
            };
            let shards = state["shards"].as_u64().unwrap_or(0) as u32;
            let todo = slurm::unfinished_shards(dir, shards);
            if todo.is_empty() {
                outln!(
                    "every shard of {} has finished; the merge job (or `crashlab merge`) does the rest",
                    dir.display()
                );
            }
            (
                dir.clone(),
                dir.join("slurm/array.sbatch"),
                dir.join("slurm/merge.sbatch"),
                Some(todo),
            )
        }
        None => {
            let shards = args.shards.unwrap_or(1);
            if !(1..=controller::config::SHARDS_MAX).contains(&shards) {
                return fail(format!(
                    "--shards {shards}: give 1 to {}",
                    controller::config::SHARDS_MAX
                ));
            }
            let mut config = match config_from(&args.run) {
                Ok(config) => config,
                Err(msg) => return fail(msg),
            };
            // Tasks run elsewhere, in other directories: every path absolute.
            config.images_dir = std::path::absolute(&config.images_dir).unwrap_or(config.images_dir.clone());
            if let Err(e) = controller::images::locate(&config.images_dir) {
                return fail(format!(
                    "{e:#}: build the guest images once, before the array, into a directory every node reads \
                     (`cargo xtask images --out DIR`, then --images-dir DIR)"
                ));
            }
            let results = std::path::absolute(&args.run.results_dir).unwrap_or(args.run.results_dir.clone());
            let id = args.run.campaign_id.clone().unwrap_or_else(|| {
                format!("{}-slurm-{}", campaign::utc_timestamp(), config.fs.name()).replace(':', "")
            });
            let dir = results.join(&id);
            if dir.exists() {
                return fail(format!(
                    "{} exists: choose another --campaign-id, or --resume it",
                    dir.display()
                ));
            }
            let exe = match std::env::current_exe() {
                Ok(exe) => exe,
                Err(e) => return fail(format!("cannot find this program's own path: {e}")),
            };
            let run_args = config.full_run_args();
            let plan = slurm::SlurmPlan {
                crashlab: &exe,
                run_args: &run_args,
                shards,
                dir: &dir,
                sbatch_args: &args.sbatch_args,
                name: &id,
            };
            let (array, merge) = match slurm::write_scripts(&plan) {
                Ok(paths) => paths,
                Err(e) => return fail(format!("{e:#}")),
            };
            let state = serde_json::json!({ "shards": shards, "campaign_id": id, "config": config });
            if let Err(e) = std::fs::write(dir.join("slurm/slurm.json"), state.to_string() + "\n") {
                return fail(format!("cannot write {}/slurm/slurm.json: {e}", dir.display()));
            }
            (dir, array, merge, None)
        }
    };
    if tasks.as_ref().is_some_and(Vec::is_empty) {
        return ExitCode::SUCCESS;
    }
    let (first, second) = slurm::submit_commands(&array, &merge, tasks.as_deref());
    if !args.submit {
        outln!("scripts in {}/slurm; submit with:", dir.display());
        outln!("  jobid=$({})", controller::config::shell_join(&first));
        outln!(
            "  {}",
            controller::config::shell_join(&second).replace("ARRAY_JOB_ID", "$jobid")
        );
        outln!(
            "the merged campaign will be {}/campaign (report.html, junit.xml)",
            dir.display()
        );
        return ExitCode::SUCCESS;
    }
    match slurm::submit(&first, &second) {
        Ok((array_job, merge_job)) => {
            outln!("submitted: array job {array_job}, merge job {merge_job} (after the array)");
            outln!("the merged campaign will be {}/campaign", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{e:#}")),
    }
}

/// Upper bound on `--jobs`: guests at once on one machine.
const JOBS_MAX: u32 = 64;

/// `run --jobs K`: the campaign as K shards, each a `crashlab run --shard
/// i/K` child with its own QEMU and results under `<id>.shards/`, run at
/// once, then merged into `<id>/`. Ctrl-C reaches the children too (one
/// process group); each stops cleanly and the merge is not attempted.
fn run_jobs(args: &RunArgs, jobs: u32) -> ExitCode {
    if !(1..=JOBS_MAX).contains(&jobs) {
        eprintln!("error: --jobs {jobs}: give 1 to {JOBS_MAX}");
        return ExitCode::from(2);
    }
    let config = match config_from(args) {
        Ok(config) => config,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let id = args.campaign_id.clone().unwrap_or_else(|| {
        format!(
            "{}-{}-{}-seed{}",
            campaign::utc_timestamp(),
            config.fs.name(),
            config.mode,
            config.seed
        )
        .replace(':', "")
    });
    let shards_root = args.results_dir.join(format!("{id}.shards"));
    // The resolved configuration, every flag explicit (a campaign file's
    // too), then the shard's own flags.
    let mut base = config.full_run_args();
    if args.minimise {
        base.push("--minimise".into());
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: cannot find this program's own path to start the shards: {e}");
            return ExitCode::from(2);
        }
    };
    let mut children = Vec::new();
    for i in 0..jobs {
        let log = shards_root.join(format!("shard-{i}.log"));
        let spawned = std::fs::create_dir_all(&shards_root)
            .and_then(|()| std::fs::File::create(&log))
            .and_then(|log_file| {
                std::process::Command::new(&exe)
                    .arg("run")
                    .args(&base)
                    .arg(format!("--shard={i}/{jobs}"))
                    .arg(format!("--campaign-id=shard-{i}"))
                    .arg("--results-dir")
                    .arg(&shards_root)
                    .arg("--quiet")
                    .stdout(log_file.try_clone()?)
                    .stderr(log_file)
                    .spawn()
            });
        match spawned {
            Ok(child) => children.push((i, child)),
            Err(e) => {
                eprintln!("error: cannot start shard {i}/{jobs} (its log: {}): {e}", log.display());
                return ExitCode::from(2);
            }
        }
    }
    eprintln!(
        "{jobs} shards running; their logs: {}/shard-*.log",
        shards_root.display()
    );
    let mut failed = Vec::new();
    for (i, mut child) in children {
        match child.wait().map(|s| s.code()) {
            // 0: no violation, 1: violations; both finished.
            Ok(Some(0 | 1)) => {}
            Ok(code) => failed.push(format!("shard {i}/{jobs} ended with {code:?}")),
            Err(e) => failed.push(format!("shard {i}/{jobs}: {e}")),
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "error: {}; see {}/shard-*.log, continue each with `crashlab run --resume {}/shard-I`, then \
             `crashlab merge`",
            failed.join("; "),
            shards_root.display(),
            shards_root.display()
        );
        return ExitCode::from(
            if controller::signals::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                130
            } else {
                2
            },
        );
    }
    let dirs: Vec<PathBuf> = (0..jobs).map(|i| shards_root.join(format!("shard-{i}"))).collect();
    let out = args.results_dir.join(&id);
    match controller::merge::merge(&out, &dirs) {
        Ok(summary) => {
            out!("{}", summary.render());
            if let Some(path) = &args.junit {
                if let Err(e) = controller::junit::write(path, &id, std::slice::from_ref(&out)) {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            }
            ExitCode::from(u8::from(summary.violations > 0))
        }
        Err(e) => {
            eprintln!("error: merging the shards: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `--resume DIR`: the campaign's own configuration (validated), the
/// images directory given now (the old one may have moved), where it is.
fn resume_request(dir: &std::path::Path, args: &RunArgs) -> anyhow::Result<(CampaignConfig, PathBuf, String)> {
    use anyhow::Context;
    // Validated as read; the images directory does not enter validation.
    let (meta, mut config) = campaign::read_campaign_json(dir)?;
    anyhow::ensure!(
        meta["only_trial"].is_null(),
        "{} ran one trial (--only-trial): nothing to resume",
        dir.display()
    );
    config.images_dir = args.images_dir.clone();
    let id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable name", dir.display()))?
        .to_string();
    let root = dir.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    Ok((config, root, id))
}

fn run_request(request: &CampaignRequest, junit: Option<&std::path::Path>, minimise: bool) -> ExitCode {
    let result = campaign::run_campaign(request);
    if let (true, Ok(summary)) = (minimise, &result) {
        if summary.violations > 0 && !summary.interrupted {
            minimise_first_failure(&summary.results_dir);
        }
    }
    if let Some(path) = junit {
        let dir = request.results_root.join(&request.campaign_id);
        let written = match &result {
            Ok(_) => controller::junit::write(path, &request.campaign_id, &[dir]),
            Err(e) => controller::junit::write_cases(
                path,
                &request.campaign_id,
                &[controller::junit::error_case(&dir, &format!("{e:#}"))],
            ),
        };
        if let Err(e) = written {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    }
    match result {
        Ok(summary) => {
            out!("{}", summary.render());
            if summary.interrupted {
                eprintln!(
                    "interrupted: {} finished trials kept in {}",
                    summary.trials_run,
                    summary.results_dir.display()
                );
                ExitCode::from(130)
            } else if summary.violations > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
