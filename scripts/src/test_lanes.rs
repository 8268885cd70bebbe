//! `cargo xtask test [--lanes N] [FILTER...]`: every test of the workspace,
//! the VM tests included, run in lanes.
//!
//! The VM tests are CPU-bound (TCG) and each boots one guest at a time, so
//! one test uses about one core. Cargo runs test binaries one after
//! another; here they are built once (`cargo test --no-run`), then run in
//! `lanes` threads (default: one more than the cores).
//! The unit of work is one VM test (a binary with `#[ignore]`d tests is
//! split into its tests, each run alone with `--exact`), or a whole binary
//! of quick unit tests. Units start longest first, by the times of the last
//! run (`target/xtask-test-times.json`) or else by `EXPECTED_SECONDS`, so
//! the lanes end close together. A unit's output is kept and printed whole
//! when it fails, so lanes never interleave lines. Every unit runs in a
//! guarded process group (`children`), so Ctrl-C or a killed task leaves no
//! guest behind.
//!
//! Why not cargo-nextest: it would have to be built on every new machine
//! (minutes of the CI budget) for what these hundred lines do.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::children;

/// Lanes by default: one more than the cores. A VM test is not always on
/// the CPU (boots wait on the disk, the host judges and writes results):
/// measured on two cores, three lanes ran the suite in 1,032 s of wall time
/// for 2,936 s of tests, two lanes in 1,150 s for 2,297 s.
fn lanes_default() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get() + 1)
        .min(LANES_MAX)
}
/// More lanes than this would only make the guests time each other out.
const LANES_MAX: usize = 16;

/// Seconds each long test binary took in CI, serially (`test result:
/// ... finished in`): the order to start them in, longest first, so that
/// the lanes end close together. A binary not named here is short.
const EXPECTED_SECONDS: &[(&str, u32)] = &[
    ("campaign", 600),
    ("examples", 400),
    ("power_loss", 290),
    ("patterns", 220),
    ("program", 450),
    ("minimise", 75),
    ("compare", 120),
    ("report", 45),
    ("recovery", 20),
    ("doctor", 10),
    ("corpus", 17),
    ("blocklog", 12),
    ("conformance", 10),
    ("against_e2fsprogs", 8),
    ("task_lifetime", 5),
];

/// One test binary, as cargo built it.
#[derive(Debug, Clone)]
pub struct TestBinary {
    /// `package/target` (target: `lib`, `bin NAME` or the test file's name).
    pub name: String,
    /// The file's stem the table above knows it by.
    pub target: String,
    pub executable: PathBuf,
    /// Cargo runs a test in its package's directory; so do we.
    pub package_dir: PathBuf,
}

pub struct Options {
    pub lanes: usize,
    pub filters: Vec<String>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            lanes: lanes_default(),
            filters: Vec::new(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--lanes" => {
                    let value = args.next().context("--lanes needs a number: --lanes 2")?;
                    options.lanes = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=LANES_MAX).contains(n))
                        .with_context(|| format!("--lanes {value:?}: give a number from 1 to {LANES_MAX}"))?;
                }
                "--serial" => options.lanes = 1,
                other if other.starts_with('-') => anyhow::bail!(
                    "unknown option {other:?} for `cargo xtask test`: use --lanes N, --serial, or test-name filters"
                ),
                filter => options.filters.push(filter.to_string()),
            }
        }
        Ok(options)
    }
}

/// The test binaries of `cargo test --no-run --message-format=json`'s
/// output.
pub fn parse_artifacts(json_lines: &str) -> Result<Vec<TestBinary>> {
    let mut binaries = Vec::new();
    for line in json_lines.lines().filter(|l| l.starts_with('{')) {
        let message: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("cargo printed a line that is not JSON: {line:?}"))?;
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let manifest = message["manifest_path"]
            .as_str()
            .context("a compiler-artifact message without manifest_path")?;
        let package = message["package_id"].as_str().unwrap_or("?");
        let package = package_name(package);
        let target = message["target"]["name"].as_str().unwrap_or("?").to_string();
        let kind = message["target"]["kind"][0].as_str().unwrap_or("?");
        binaries.push(TestBinary {
            name: format!("{package}/{kind} {target}"),
            target,
            executable: PathBuf::from(executable),
            package_dir: Path::new(manifest)
                .parent()
                .context("a manifest path without a directory")?
                .to_path_buf(),
        });
    }
    Ok(binaries)
}

/// The package's name from cargo's package id (`path+file:///...#name@0.1.0`
/// or, older, `name 0.1.0 (path+file://...)`).
fn package_name(id: &str) -> String {
    if let Some((_, tail)) = id.rsplit_once('#') {
        let name = tail.split('@').next().unwrap_or(tail);
        // `#0.1.0` alone: the name is the directory's.
        if name.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            let path = id.split('#').next().unwrap_or(id);
            return path.rsplit('/').next().unwrap_or(path).to_string();
        }
        return name.to_string();
    }
    id.split_whitespace().next().unwrap_or(id).to_string()
}

fn expected_seconds(binary: &TestBinary) -> u32 {
    EXPECTED_SECONDS
        .iter()
        .find(|(name, _)| *name == binary.target)
        .map_or(1, |(_, s)| *s)
}

/// Longest first: with a shared queue, the longest-processing-time rule.
pub fn schedule(mut binaries: Vec<TestBinary>) -> Vec<TestBinary> {
    binaries.sort_by(|a, b| expected_seconds(b).cmp(&expected_seconds(a)).then(a.name.cmp(&b.name)));
    binaries
}

struct Finished {
    name: String,
    passed: bool,
    seconds: f64,
    summary: String,
}

/// One thing a lane runs: a whole binary, or one test of it.
#[derive(Clone, Debug)]
pub struct Unit {
    pub binary: TestBinary,
    /// `Some(test)`: only this test (`--exact`).
    pub test: Option<String>,
}

impl Unit {
    pub fn name(&self) -> String {
        match &self.test {
            Some(test) => format!("{}::{test}", self.binary.target),
            None => self.binary.name.clone(),
        }
    }
}

/// The tests a binary holds and which of them are `#[ignore]`d, from
/// `--list` (lines `name: test`).
fn list_tests(binary: &TestBinary, ignored_only: bool) -> Result<Vec<String>> {
    let mut command = Command::new(&binary.executable);
    command
        .args(["--list", "--format=terse"])
        .current_dir(&binary.package_dir);
    if ignored_only {
        command.arg("--ignored");
    }
    let out = command
        .output()
        .with_context(|| format!("cannot list the tests of {}", binary.executable.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(String::from)
        .collect())
}

/// Units: each `#[ignore]`d (VM) test alone, the rest of its binary as one
/// more unit; a binary without VM tests whole.
pub fn units(binaries: Vec<TestBinary>) -> Result<Vec<Unit>> {
    let mut units = Vec::new();
    for binary in binaries {
        let ignored = list_tests(&binary, true)?;
        if ignored.is_empty() {
            units.push(Unit { binary, test: None });
            continue;
        }
        for test in list_tests(&binary, false)? {
            units.push(Unit {
                binary: binary.clone(),
                test: Some(test),
            });
        }
    }
    Ok(units)
}

/// Seconds each unit took in the last run, by name.
type Times = std::collections::BTreeMap<String, f64>;

fn times_path(target_dir: &Path) -> PathBuf {
    target_dir.join("xtask-test-times.json")
}

fn read_times(target_dir: &Path) -> Times {
    std::fs::read_to_string(times_path(target_dir))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Longest first: the last run's time, or the binary's expected time shared
/// among its units.
pub fn order_units(mut units: Vec<Unit>, times: &Times) -> Vec<Unit> {
    let per_binary = |b: &TestBinary| {
        units
            .iter()
            .filter(|u| u.binary.executable == b.executable)
            .count()
            .max(1)
    };
    let weights: Vec<f64> = units
        .iter()
        .map(|u| {
            times
                .get(&u.name())
                .copied()
                .unwrap_or_else(|| f64::from(expected_seconds(&u.binary)) / per_binary(&u.binary) as f64)
        })
        .collect();
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by(|&a, &b| {
        weights[b]
            .total_cmp(&weights[a])
            .then(units[a].name().cmp(&units[b].name()))
    });
    let mut slots: Vec<Option<Unit>> = units.drain(..).map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

pub fn run(sh: &Shell, images: &Path, args: &[String]) -> Result<i32> {
    let options = Options::parse(args)?;
    // The whole suite keeps the code's habits too; a filtered run is for
    // the tests it names.
    let lints_passed = !options.filters.is_empty() || lints(sh)?;
    // Doctests have no executable of their own: cargo runs them (few, quick).
    let filters = &options.filters;
    let doc = children::status(cmd!(sh, "cargo test --workspace --doc --quiet -- {filters...}"))?;
    let json = children::read(cmd!(
        sh,
        "cargo test --workspace --no-run --message-format=json-render-diagnostics"
    ))?;
    let binaries = schedule(parse_artifacts(&json)?);
    anyhow::ensure!(!binaries.is_empty(), "cargo built no test binary");
    let target_dir = crate::target_dir(sh);
    let mut units = units(binaries)?;
    // A filter picks units by name (a whole binary's unit always runs, with
    // the filter passed on to it).
    if !options.filters.is_empty() {
        units.retain(|u| {
            u.test
                .as_ref()
                .is_none_or(|t| options.filters.iter().any(|f| t.contains(f.as_str())))
        });
    }
    let queue = order_units(units, &read_times(&target_dir));
    let total = queue.len();
    eprintln!(
        "xtask test: {total} units (VM tests one by one, other binaries whole) in {} lane(s), longest first",
        options.lanes
    );
    let start = Instant::now();
    let mut finished = run_lanes(queue, images, &options);
    // Remembered for the next run's order (best effort).
    let times: Times = finished.iter().map(|f| (f.name.clone(), f.seconds)).collect();
    let _ = std::fs::write(times_path(&target_dir), serde_json::to_string_pretty(&times)? + "\n");
    finished.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let failed: Vec<&Finished> = finished.iter().filter(|f| !f.passed).collect();
    eprintln!("xtask test: the slowest units:");
    for f in finished.iter().take(12) {
        eprintln!("  {:>6.0} s  {}", f.seconds, f.name);
    }
    eprintln!(
        "xtask test: {} of {total} units passed in {:.0} s wall ({} lane(s), {:.0} s of tests){}",
        total - failed.len(),
        start.elapsed().as_secs_f64(),
        options.lanes,
        finished.iter().map(|f| f.seconds).sum::<f64>(),
        if doc == 0 { "" } else { "; the doctests FAILED" }
    );
    for f in &failed {
        eprintln!("xtask test: FAILED {}", f.name);
    }
    if !lints_passed {
        eprintln!("xtask test: FAILED the lints (cargo fmt --check, cargo clippy -D warnings): see above");
    }
    Ok(if failed.is_empty() && doc == 0 && lints_passed {
        0
    } else {
        1
    })
}

/// Runs the units in `options.lanes` threads, each taking the next unit off
/// the shared queue (longest first) until none is left; each unit's outcome
/// is printed as it ends. The outcomes, in the order they ended.
fn run_lanes(queue: Vec<Unit>, images: &Path, options: &Options) -> Vec<Finished> {
    let queue = Mutex::new(VecDeque::from(queue));
    let finished = Mutex::new(Vec::<Finished>::new());
    std::thread::scope(|scope| {
        for lane in 0..options.lanes {
            let (queue, finished) = (&queue, &finished);
            scope.spawn(move || loop {
                let Some(unit) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                let outcome = run_unit(&unit, images, &options.filters).unwrap_or_else(|e| Finished {
                    name: unit.name(),
                    passed: false,
                    seconds: 0.0,
                    summary: format!("could not run {}: {e:#}", unit.binary.executable.display()),
                });
                eprintln!(
                    "xtask test: [lane {lane}] {} {} ({:.0} s) {}",
                    if outcome.passed { "PASS" } else { "FAIL" },
                    outcome.name,
                    outcome.seconds,
                    outcome.summary
                );
                finished.lock().unwrap().push(outcome);
            });
        }
    });
    finished.into_inner().unwrap()
}

/// `cargo fmt --check` and `cargo clippy --all-targets -D warnings` on the
/// workspace (the lints chosen are `[workspace.lints]` in Cargo.toml).
/// Both run even when the first fails, so one run names every problem.
fn lints(sh: &Shell) -> Result<bool> {
    ensure_component(sh, "rustfmt")?;
    ensure_component(sh, "clippy")?;
    let fmt = children::status(cmd!(sh, "cargo fmt --all --check"))?;
    if fmt != 0 {
        eprintln!("xtask test: the code is not formatted as rustfmt.toml says: run `cargo fmt --all`");
    }
    let clippy = children::status(cmd!(
        sh,
        "cargo clippy --quiet --workspace --all-targets -- -D warnings"
    ))?;
    if clippy != 0 {
        eprintln!("xtask test: clippy warned (denied here): fix each, or allow it where it is wrong, saying why");
    }
    eprintln!(
        "xtask test: lints: fmt {}, clippy {}",
        if fmt == 0 { "clean" } else { "FAILED" },
        if clippy == 0 { "clean" } else { "FAILED" }
    );
    Ok(fmt == 0 && clippy == 0)
}

/// rustup's minimal profile leaves out rustfmt and clippy.
fn ensure_component(sh: &Shell, component: &str) -> Result<()> {
    let present = cmd!(sh, "rustup component list --installed")
        .quiet()
        .read()
        .map(|list| list.lines().any(|l| l.starts_with(component)))
        .unwrap_or(true);
    if !present {
        cmd!(sh, "rustup component add {component}")
            .run()
            .with_context(|| format!("installing the {component} component (rustup component add {component})"))?;
    }
    Ok(())
}

fn run_unit(unit: &Unit, images: &Path, filters: &[String]) -> Result<Finished> {
    let binary = &unit.binary;
    let mut command = Command::new(&binary.executable);
    command.args(["--test-threads=1", "--include-ignored"]);
    match &unit.test {
        Some(test) => {
            command.args(["--exact", test]);
        }
        None => {
            command.args(filters);
        }
    }
    command
        .current_dir(&binary.package_dir)
        .env("CARGO_MANIFEST_DIR", &binary.package_dir)
        .env("CRASHLAB_IMAGES_DIR", images);
    let start = Instant::now();
    let out = children::output(command)?;
    let seconds = start.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A unit that ran no test passed nothing: a name that matched nothing.
    let summary = stdout
        .lines()
        .rfind(|l| l.starts_with("test result:"))
        .unwrap_or("")
        .to_string();
    let ran_none = unit.test.is_some() && summary.contains(" 0 passed; 0 failed");
    let passed = out.status.success() && !ran_none;
    if passed {
        // libtest's own lines ("running 1 test", "test x ... ok", "test
        // result: ...") as `cargo test` prints them, so that readers and
        // tools that look for them find every test that ran. One write: the
        // lanes' outputs do not interleave.
        use std::io::Write as _;
        let _ = std::io::stdout().lock().write_all(stdout.as_bytes());
    } else {
        // The whole output, in one piece, so the failure reads as cargo's would.
        eprintln!(
            "---- {} ({}) ----\n{stdout}{stderr}---- end of {} ----",
            unit.name(),
            out.status,
            unit.name()
        );
    }
    Ok(Finished {
        name: unit.name(),
        passed,
        seconds,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARGO_JSON: &str = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/controller#crashlab-controller@0.1.0","manifest_path":"/w/controller/Cargo.toml","target":{"kind":["test"],"name":"campaign"},"profile":{"test":true},"executable":"/w/target/debug/deps/campaign-1"}
{"reason":"compiler-artifact","package_id":"path+file:///w/record#0.1.0","manifest_path":"/w/record/Cargo.toml","target":{"kind":["lib"],"name":"record"},"profile":{"test":true},"executable":"/w/target/debug/deps/record-2"}
{"reason":"compiler-artifact","package_id":"path+file:///w/record#0.1.0","manifest_path":"/w/record/Cargo.toml","target":{"kind":["lib"],"name":"record"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","package_id":"registry+x#serde@1.0.0","manifest_path":"/r/serde/Cargo.toml","target":{"kind":["lib"],"name":"serde"},"profile":{"test":false},"executable":null}
{"reason":"build-finished","success":true}
"#;

    #[test]
    fn only_test_executables_are_taken_with_their_package_directory() {
        let binaries = parse_artifacts(CARGO_JSON).unwrap();
        let names: Vec<&str> = binaries.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["crashlab-controller/test campaign", "record/lib record"]);
        assert_eq!(binaries[0].package_dir, Path::new("/w/controller"));
        assert_eq!(binaries[1].executable, Path::new("/w/target/debug/deps/record-2"));
    }

    #[test]
    fn the_longest_binaries_start_first() {
        let binaries = parse_artifacts(CARGO_JSON).unwrap();
        let order: Vec<String> = schedule(binaries.into_iter().rev().collect())
            .into_iter()
            .map(|b| b.target)
            .collect();
        assert_eq!(order, ["campaign", "record"]);
    }

    #[test]
    fn units_are_ordered_by_the_last_runs_times_else_by_their_binarys() {
        let binaries = parse_artifacts(CARGO_JSON).unwrap();
        let unit = |b: usize, test: Option<&str>| Unit {
            binary: binaries[b].clone(),
            test: test.map(String::from),
        };
        let units = vec![unit(1, None), unit(0, Some("a")), unit(0, Some("b"))];
        // No times: campaign's 550 s shared by its two tests beat record's 1 s.
        let names: Vec<String> = order_units(units.clone(), &Times::new())
            .iter()
            .map(Unit::name)
            .collect();
        assert_eq!(names, ["campaign::a", "campaign::b", "record/lib record"]);
        let times: Times = [("campaign::b".to_string(), 90.0), ("campaign::a".to_string(), 5.0)].into();
        let names: Vec<String> = order_units(units, &times).iter().map(Unit::name).collect();
        assert_eq!(names[0], "campaign::b");
    }

    #[test]
    fn options_name_what_is_wrong() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Options::parse(&args(&["--serial"])).unwrap().lanes, 1);
        let o = Options::parse(&args(&["--lanes", "3", "ack"])).unwrap();
        assert_eq!((o.lanes, o.filters), (3, vec!["ack".to_string()]));
        let e = Options::parse(&args(&["--lanes", "0"])).err().unwrap().to_string();
        assert!(e.contains("from 1 to 16"), "{e}");
        let e = Options::parse(&args(&["--fast"])).err().unwrap().to_string();
        assert!(e.contains("--fast"), "{e}");
    }
}
