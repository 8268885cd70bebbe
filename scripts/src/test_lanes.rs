//! `cargo xtask test [--lanes N] [FILTER...]`: every test of the workspace,
//! the VM tests included, run in lanes.
//!
//! The VM tests are CPU-bound (TCG) and each boots one guest at a time, so
//! one test binary uses about one core. Cargo runs test binaries one after
//! another; here they are built once (`cargo test --no-run`), then run in
//! `lanes` threads (default 2, one per core of the machines this runs on),
//! longest first, each binary with `--test-threads=1` as before. A binary's
//! output is kept and printed whole when it ends (all of it when it failed),
//! so lanes never interleave lines. Every binary runs in a guarded process
//! group (`children`), so Ctrl-C or a killed task leaves no guest behind.
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

/// Lanes by default: the machines CI runs on have two cores.
const LANES_DEFAULT: usize = 2;
/// More lanes than this would only make the guests time each other out.
const LANES_MAX: usize = 16;

/// Seconds each long test binary took in CI, serially (`test result:
/// ... finished in`): the order to start them in, longest first, so that
/// the lanes end close together. A binary not named here is short.
const EXPECTED_SECONDS: &[(&str, u32)] = &[
    ("campaign", 550),
    ("power_loss", 235),
    ("patterns", 220),
    ("program", 160),
    ("recovery", 20),
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
            lanes: LANES_DEFAULT,
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

pub fn run(sh: &Shell, images: &Path, args: &[String]) -> Result<i32> {
    let options = Options::parse(args)?;
    // Doctests have no executable of their own: cargo runs them (few, quick).
    let filters = &options.filters;
    let doc = children::status(cmd!(sh, "cargo test --workspace --doc --quiet -- {filters...}"))?;
    let json = children::read(cmd!(
        sh,
        "cargo test --workspace --no-run --message-format=json-render-diagnostics"
    ))?;
    let queue = schedule(parse_artifacts(&json)?);
    anyhow::ensure!(!queue.is_empty(), "cargo built no test binary");
    let total = queue.len();
    eprintln!(
        "xtask test: {total} test binaries in {} lane(s), longest first",
        options.lanes
    );
    let queue = Mutex::new(VecDeque::from(queue));
    let finished = Mutex::new(Vec::<Finished>::new());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for lane in 0..options.lanes {
            let (queue, finished, options) = (&queue, &finished, &options);
            scope.spawn(move || loop {
                let Some(binary) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                let result = run_binary(&binary, images, &options.filters);
                let outcome = match result {
                    Ok(outcome) => outcome,
                    Err(e) => Finished {
                        name: binary.name.clone(),
                        passed: false,
                        seconds: 0.0,
                        summary: format!("could not run {}: {e:#}", binary.executable.display()),
                    },
                };
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
    let mut finished = finished.into_inner().unwrap();
    finished.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let failed: Vec<&Finished> = finished.iter().filter(|f| !f.passed).collect();
    eprintln!("xtask test: the slowest binaries:");
    for f in finished.iter().take(8) {
        eprintln!("  {:>6.0} s  {}", f.seconds, f.name);
    }
    eprintln!(
        "xtask test: {} of {total} binaries passed in {:.0} s wall ({} lane(s)){}",
        total - failed.len(),
        start.elapsed().as_secs_f64(),
        options.lanes,
        if doc == 0 { "" } else { "; the doctests FAILED" }
    );
    for f in &failed {
        eprintln!("xtask test: FAILED {}", f.name);
    }
    Ok(if failed.is_empty() && doc == 0 { 0 } else { 1 })
}

fn run_binary(binary: &TestBinary, images: &Path, filters: &[String]) -> Result<Finished> {
    let mut command = Command::new(&binary.executable);
    command
        .args(["--test-threads=1", "--include-ignored"])
        .args(filters)
        .current_dir(&binary.package_dir)
        .env("CARGO_MANIFEST_DIR", &binary.package_dir)
        .env("CRASHLAB_IMAGES_DIR", images);
    let start = Instant::now();
    let out = children::output(command)?;
    let seconds = start.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let passed = out.status.success();
    let summary = stdout
        .lines()
        .rfind(|l| l.starts_with("test result:"))
        .unwrap_or("")
        .to_string();
    if !passed {
        // The whole output, in one piece, so the failure reads as cargo's would.
        eprintln!(
            "---- {} ({}) ----\n{stdout}{stderr}---- end of {} ----",
            binary.name, out.status, binary.name
        );
    }
    Ok(Finished {
        name: binary.name.clone(),
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
