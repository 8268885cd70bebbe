//! The steps of one kernel build in the cache: configure (tinyconfig, the
//! fragments, olddefconfig, every fragment line checked), make bzImage,
//! read the release. Each step's output goes to the build's log; a failure
//! quotes the log's tail and names the whole log.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::config;

/// Lines of the log quoted when a step fails.
const LOG_TAIL_LINES: usize = 25;
/// How often a long step says it is still going.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// One build: the tree (`make -C`), its output directory (`O=`) and log.
pub struct Make<'a> {
    pub tree: &'a Path,
    pub build: &'a Path,
    pub log: &'a Path,
    pub jobs: usize,
}

impl Make<'_> {
    fn command(&self, targets: &[&str]) -> Command {
        let mut command = Command::new("make");
        command
            .arg("-C")
            .arg(self.tree)
            .arg(format!("O={}", self.build.display()))
            .args([
                "ARCH=x86_64",
                "KBUILD_BUILD_USER=crashlab",
                "KBUILD_BUILD_HOST=crashlab",
            ])
            .arg(format!("-j{}", self.jobs))
            .args(targets)
            .stdin(Stdio::null());
        command
    }

    /// Runs make with its output appended to the log; a failure is an
    /// error quoting the log's tail.
    pub fn run(&self, what: &str, targets: &[&str]) -> Result<()> {
        self.run_command(what, self.command(targets), targets)
    }

    /// `make mrproper` in the tree itself: a tree built in place (a
    /// `.config` in it) is one that `make O=` refuses.
    pub fn clean_source_tree(&self) -> Result<()> {
        let mut command = Command::new("make");
        command.arg("-C").arg(self.tree).arg("mrproper").stdin(Stdio::null());
        self.run_command("make mrproper (the source was built in place)", command, &["mrproper"])
    }

    fn run_command(&self, what: &str, mut command: Command, targets: &[&str]) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log)
            .with_context(|| format!("cannot write {} (disk full?)", self.log.display()))?;
        command.stdout(log.try_clone()?).stderr(log);
        let status = with_progress(what, self.log, || crate::children::status(command))?;
        if status != 0 {
            bail!(
                "{what} failed (make {} exited with {status}); the last lines of the log:\n{}\nthe whole log: {}",
                targets.join(" "),
                tail(self.log, LOG_TAIL_LINES),
                self.log.display()
            );
        }
        Ok(())
    }

    /// What `make kernelrelease` prints: the guest's `uname -r`.
    pub fn release(&self) -> Result<String> {
        let mut command = self.command(&["-s", "kernelrelease"]);
        command.stderr(Stdio::null());
        let out = crate::children::output(command)?;
        let release = String::from_utf8_lossy(&out.stdout).trim().to_string();
        anyhow::ensure!(
            out.status.success() && !release.is_empty(),
            "make kernelrelease said nothing"
        );
        Ok(release)
    }

    /// The configuration: the base, then the fragments (crashlab's, then
    /// the user's), `make olddefconfig`; every fragment line must hold.
    pub fn configure(&self, fragments: &[(String, String)]) -> Result<()> {
        std::fs::create_dir_all(self.build)?;
        self.run("make tinyconfig", &[config::BASE_TARGET])?;
        let dot_config = self.build.join(".config");
        let base = std::fs::read_to_string(&dot_config).context("make tinyconfig wrote no .config")?;
        std::fs::write(&dot_config, config::merge(&base, fragments))?;
        self.run("make olddefconfig", &["olddefconfig"])?;
        let result = std::fs::read_to_string(&dot_config)?;
        let mismatches = config::mismatches(fragments, &result);
        if !mismatches.is_empty() {
            bail!("{}", config::describe_mismatches(&mismatches));
        }
        Ok(())
    }

    pub fn image(&self) -> PathBuf {
        self.build.join("arch/x86/boot/bzImage")
    }
}

/// Runs `step`, saying every `PROGRESS_EVERY` how long it has run and the
/// log's last line, so a 15-minute build does not look hung.
fn with_progress<T>(what: &str, log: &Path, step: impl FnOnce() -> T) -> T {
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (done, what, log) = (done.clone(), what.to_string(), log.to_path_buf());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut next = PROGRESS_EVERY;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if start.elapsed() >= next {
                    next += PROGRESS_EVERY;
                    let last = tail(&log, 1);
                    eprintln!("xtask kernel: {what}: {} s, {}", start.elapsed().as_secs(), last.trim());
                }
            }
        })
    };
    let result = step();
    done.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    result
}

/// The last `lines` lines of a file (lossy UTF-8).
pub fn tail(path: &Path, lines: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
