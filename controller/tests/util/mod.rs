#![allow(dead_code)]
//! Shared setup of the integration tests: the `crashlab` binary, the guest
//! images, a results directory per test, and one VM test at a time.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Harness {
    pub images_dir: PathBuf,
    pub results: tempfile::TempDir,
    _guard: MutexGuard<'static, ()>,
}

/// The images built by `cargo xtask images`. The VM tests are `#[ignore]`d
/// so that a bare `cargo test` reports them as not run; asked for (by
/// `cargo xtask test`, or `-- --include-ignored`), they need the images and
/// fail without them.
pub fn vm_harness(test: &str) -> Harness {
    let images_dir = std::env::var_os("CRASHLAB_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vm-images/cache"));
    assert!(
        images_dir.join("manifest.json").is_file(),
        "{test}: no guest images at {}: run `cargo xtask images` (or the whole suite with `cargo xtask test`)",
        images_dir.display()
    );
    let guard = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let results = tempfile::Builder::new()
        .prefix(&format!("crashlab-{test}-"))
        .tempdir()
        .unwrap();
    Harness {
        images_dir,
        results,
        _guard: guard,
    }
}

impl Harness {
    /// The same harness on other guest images (a kernel built from source).
    pub fn with_images(self, images_dir: PathBuf) -> Harness {
        Harness { images_dir, ..self }
    }
}

pub fn crashlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crashlab"))
}

impl Harness {
    /// Runs `crashlab run` with `args`, plus a small, fast record count
    /// unless `args` sets one.
    pub fn run(&self, id: &str, args: &[&str]) -> Output {
        let records = match args.iter().any(|a| a.starts_with("--records")) {
            true => None,
            false => Some("--records=600"),
        };
        let out = crashlab()
            .args(["run", "--quiet", "--campaign-id", id])
            .args(records)
            .arg("--images-dir")
            .arg(&self.images_dir)
            .arg("--results-dir")
            .arg(self.results.path())
            .args(args)
            .output()
            .expect("crashlab runs");
        eprintln!(
            "--- crashlab {id}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn campaign_json(&self, id: &str) -> serde_json::Value {
        let path = self.results.path().join(id).join("campaign.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("campaign.json is JSON")
    }

    pub fn trials(&self, id: &str) -> Vec<serde_json::Value> {
        let path = self.results.path().join(id).join("trials.jsonl");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .map(|l| serde_json::from_str(l).expect("trials.jsonl lines are JSON"))
            .collect()
    }
}

/// `out`'s stdout, after checking its exit code is `code`; otherwise the
/// failure shows both streams.
pub fn expect_exit(out: &Output, code: i32) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
