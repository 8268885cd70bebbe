//! The builder against a fixture tree with the kernel's build interface
//! (`scripts/tests/fixtures/fake-kernel`: tinyconfig, olddefconfig that
//! drops unknown options, bzImage, kernelrelease), so caching, patches and
//! configuration checks run in CI in seconds. A real build is `cargo
//! xtask kernel-check`'s.

use std::path::{Path, PathBuf};

use super::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake-kernel");

struct Setup {
    dir: tempfile::TempDir,
    source: PathBuf,
    crashlab_fragment: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("linux");
        let copied = std::process::Command::new("cp")
            .arg("-r")
            .arg(FIXTURE)
            .arg(&source)
            .status()
            .unwrap();
        assert!(copied.success());
        let crashlab_fragment = dir.path().join("crashlab.config");
        std::fs::write(
            &crashlab_fragment,
            "CONFIG_64BIT=y\nCONFIG_EXT4_FS=y\nCONFIG_LOCALVERSION=\"-crashlab\"\n",
        )
        .unwrap();
        Setup {
            dir,
            source,
            crashlab_fragment,
        }
    }

    fn request(&self, patches: &[&Path], fragments: &[&Path]) -> KernelRequest {
        KernelRequest {
            source: self.source.clone(),
            patches: patches.iter().map(|p| p.to_path_buf()).collect(),
            fragments: fragments.iter().map(|p| p.to_path_buf()).collect(),
            out: None,
            jobs: 1,
            cache: self.dir.path().join("cache"),
            no_boot: true,
        }
    }

    fn build(&self, patches: &[&Path], fragments: &[&Path]) -> Result<BuiltKernel> {
        build_kernel(&self.request(patches, fragments), &self.crashlab_fragment)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Every `make bzImage` so far, by build directory.
    fn make_runs(&self) -> Vec<(String, usize)> {
        let trees = self.dir.path().join("cache/trees");
        let mut runs = Vec::new();
        for source in std::fs::read_dir(trees).unwrap() {
            for entry in std::fs::read_dir(source.unwrap().path()).unwrap() {
                let path = entry.unwrap().path().join("make-runs");
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let name = path
                        .parent()
                        .unwrap()
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .to_string();
                    runs.push((name, text.lines().count()));
                }
            }
        }
        runs.sort();
        runs
    }
}

const SRC_PATCH: &str =
    "--- a/src.c\n+++ b/src.c\n@@ -1 +1 @@\n-int main(void) { return 0; }\n+int main(void) { return 1; }\n";
const OTHER_PATCH: &str =
    "--- a/src.c\n+++ b/src.c\n@@ -1 +1 @@\n-int main(void) { return 0; }\n+int main(void) { return 2; }\n";

#[test]
fn the_same_inputs_never_build_twice_and_patches_reuse_one_build_directory() {
    let setup = Setup::new();
    let first = setup.build(&[], &[]).unwrap();
    assert!(!first.cached);
    assert_eq!(first.release, "9.9.0-crashlab");
    let image = std::fs::read_to_string(&first.image).unwrap();
    assert!(
        image.contains("CONFIG_64BIT=y") && image.contains("return 0"),
        "{image}"
    );
    assert_eq!(first.identity["patches"], serde_json::json!([]));
    assert_eq!(first.identity["config_base"], "tinyconfig");
    assert!(first.identity["source"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("blake3:"));

    let again = setup.build(&[], &[]).unwrap();
    assert!(again.cached, "the same inputs: found, not built");
    assert_eq!(again.identity["build_key"], first.identity["build_key"]);
    assert_eq!(setup.make_runs().iter().map(|r| r.1).sum::<usize>(), 1);

    let one = setup.file("one.patch", SRC_PATCH);
    let patched = setup.build(&[&one], &[]).unwrap();
    assert!(!patched.cached);
    assert_ne!(patched.identity["build_key"], first.identity["build_key"]);
    assert_eq!(patched.identity["config_digest"], first.identity["config_digest"]);
    assert!(std::fs::read_to_string(&patched.image).unwrap().contains("return 1"));
    assert_eq!(patched.identity["patches"][0]["name"], one.display().to_string());
    let runs = setup.make_runs();
    assert_eq!(runs.len(), 1, "one build directory for both: {runs:?}");
    assert_eq!(runs[0].1, 2);

    // Another patch instead: the first is taken off before it goes on.
    let other = setup.file("other.patch", OTHER_PATCH);
    let swapped = setup.build(&[&other], &[]).unwrap();
    assert!(std::fs::read_to_string(&swapped.image).unwrap().contains("return 2"));
    // Back to a set built before: from the cache, bytes as they were.
    let back = setup.build(&[&one], &[]).unwrap();
    assert!(back.cached);
    assert!(std::fs::read_to_string(&back.image).unwrap().contains("return 1"));
    assert_eq!(setup.make_runs()[0].1, 3);

    // The user's source changed: another source digest, another tree.
    std::fs::write(setup.source.join("src.c"), "int main(void) { return 3; }\n").unwrap();
    let edited = setup.build(&[], &[]).unwrap();
    assert_ne!(edited.identity["source"]["digest"], first.identity["source"]["digest"]);
    assert_eq!(setup.make_runs().len(), 2);
}

#[test]
fn a_fragment_changes_the_configuration_and_a_line_that_did_not_take_is_named() {
    let setup = Setup::new();
    let xfs = setup.file("xfs.config", "CONFIG_XFS_FS=y\n# CONFIG_EXT4_FS is not set\n");
    let built = setup.build(&[], &[&xfs]).unwrap();
    let config = std::fs::read_to_string(&built.config).unwrap();
    assert!(
        config.contains("CONFIG_XFS_FS=y") && config.contains("# CONFIG_EXT4_FS is not set"),
        "{config}"
    );
    assert_eq!(built.identity["config_fragments"].as_array().unwrap().len(), 2);

    let unknown = setup.file("btrfs.config", "CONFIG_BTRFS_FS=y\n");
    let err = format!("{:#}", setup.build(&[], &[&unknown]).err().unwrap());
    assert!(err.contains("CONFIG_BTRFS_FS=y (from "), "{err}");
    assert!(err.contains("btrfs.config) came out as n"), "{err}");
    assert!(err.contains("make menuconfig"), "{err}");

    let typo = setup.file("typo.config", "CONFIG_XFS_FS=y\nBTRFS_FS=y\n");
    let err = format!("{:#}", setup.build(&[], &[&typo]).err().unwrap());
    assert!(
        err.contains("typo.config:2: \"BTRFS_FS=y\" is not a configuration line"),
        "{err}"
    );
}

#[test]
fn a_failed_build_quotes_the_logs_tail_and_a_stale_patch_is_refused_before_make() {
    let setup = Setup::new();
    let broken = setup.file("broken.patch", "--- /dev/null\n+++ b/BROKEN\n@@ -0,0 +1 @@\n+yes\n");
    let err = format!("{:#}", setup.build(&[&broken], &[]).err().unwrap());
    assert!(err.contains("make bzImage failed"), "{err}");
    assert!(err.contains("error: this tree does not build"), "the log's tail: {err}");
    assert!(err.contains("the whole log: "), "{err}");
    let log = err.rsplit("the whole log: ").next().unwrap().trim();
    assert!(Path::new(log).is_file(), "{log}");

    let stale = setup.file(
        "stale.patch",
        "--- a/src.c\n+++ b/src.c\n@@ -1 +1 @@\n-int main(void) { return 7; }\n+int main(void) { return 8; }\n",
    );
    let err = format!("{:#}", setup.build(&[&stale], &[]).err().unwrap());
    assert!(err.contains("does not apply to this tree"), "{err}");
    assert!(err.contains("Hunk #1 FAILED"), "{err}");
    assert!(err.contains("-int main(void) { return 7; }"), "the hunk: {err}");
    // The failed attempts left nothing that a good build would trip on.
    let good = setup.build(&[], &[]).unwrap();
    assert!(std::fs::read_to_string(&good.image).unwrap().contains("return 0"));
}

#[test]
fn bad_requests_are_refused_with_their_fix() {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let err = KernelRequest::parse(&args(&["--out", "x"])).unwrap_err().to_string();
    assert!(err.contains("--source is required"), "{err}");
    let err = KernelRequest::parse(&args(&["--source", "s", "--jobs", "0"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("from 1 to 256"), "{err}");
    let req = KernelRequest::parse(&args(&["--source", "s", "--patch", "a", "--patch", "b", "--jobs", "3"])).unwrap();
    assert_eq!(req.patches.len(), 2);
    assert_eq!(req.jobs, 3);

    let setup = Setup::new();
    let not_kernel = setup.dir.path().join("notes");
    std::fs::create_dir_all(&not_kernel).unwrap();
    let req = KernelRequest {
        source: not_kernel,
        ..setup.request(&[], &[])
    };
    let err = format!("{:#}", build_kernel(&req, &setup.crashlab_fragment).err().unwrap());
    assert!(err.contains("is not a Linux source tree"), "{err}");
    let missing = setup.dir.path().join("nope.patch");
    let err = format!("{:#}", setup.build(&[&missing], &[]).err().unwrap());
    assert!(err.contains("nope.patch: cannot read it"), "{err}");
}

#[test]
fn a_tree_built_in_place_is_cleaned_and_a_moved_cache_starts_its_build_directory_afresh() {
    let setup = Setup::new();
    std::fs::write(setup.source.join(".config"), "CONFIG_STALE=y\n").unwrap();
    let built = setup.build(&[], &[]).unwrap();
    assert!(!std::fs::read_to_string(&built.image).unwrap().contains("STALE"));
    assert!(
        setup.source.join(".config").exists(),
        "the user's tree is never touched"
    );

    let moved = setup.dir.path().join("moved");
    std::fs::rename(setup.dir.path().join("cache"), &moved).unwrap();
    let one = setup.file("one.patch", SRC_PATCH);
    let req = KernelRequest {
        cache: moved.clone(),
        ..setup.request(&[&one], &[])
    };
    let patched = build_kernel(&req, &setup.crashlab_fragment).unwrap();
    assert!(std::fs::read_to_string(&patched.image).unwrap().contains("return 1"));
    let marker = std::fs::read_dir(moved.join("trees"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path().join("crashlab-source-tree"))
        .find(|p| p.is_file())
        .unwrap();
    assert!(std::fs::read_to_string(marker)
        .unwrap()
        .starts_with(&moved.display().to_string()));
}
