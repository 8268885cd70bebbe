//! Patches on the working copy of a kernel tree, with GNU patch (`-p1`,
//! what `git format-patch` and `diff -u a/ b/` make).
//!
//! The working copy is reused across patch sets, so that a build after a
//! one-line change recompiles one file: before a patch touches a file, its
//! pristine bytes go to `orig/` (once); changing the patch set first puts
//! every touched file back (a fresh mtime, so make rebuilds it) and removes
//! the files patches created. `applied.json` records what is applied and
//! what was touched, and is written before each patch goes on: a run killed
//! midway is put right by the next.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;

/// A `--patch FILE`: its name as given, and its digest.
#[derive(Clone, Debug)]
pub struct Patch {
    pub path: PathBuf,
    pub name: String,
    pub digest: String,
}

/// A working copy and its bookkeeping, side by side.
pub struct WorkTree {
    pub tree: PathBuf,
    pub orig: PathBuf,
    pub state: PathBuf,
}

#[derive(Default, Debug, PartialEq)]
struct Applied {
    /// Digests of the patches on the tree, in order.
    patches: Vec<String>,
    /// Every file a patch touched since the tree was pristine.
    touched: Vec<String>,
    /// Files that a patch created (no pristine copy: removed on revert).
    created: Vec<String>,
    /// False while a patch is going on.
    complete: bool,
}

impl Applied {
    fn read(path: &Path) -> Result<Applied> {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(Applied {
                complete: true,
                ..Applied::default()
            });
        };
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is corrupt: remove its kernel tree's directory", path.display()))?;
        let list = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        Ok(Applied {
            patches: list("patches"),
            touched: list("touched"),
            created: list("created"),
            complete: v["complete"].as_bool().unwrap_or(false),
        })
    }

    fn write(&self, path: &Path) -> Result<()> {
        let text = json!({
            "patches": self.patches,
            "touched": self.touched,
            "created": self.created,
            "complete": self.complete,
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text.to_string() + "\n")
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write {} (disk full?)", path.display()))
    }
}

/// Puts exactly `patches` on the working copy, in order. Returns whether
/// the tree changed.
pub fn set_patches(work: &WorkTree, patches: &[Patch]) -> Result<bool> {
    let mut applied = Applied::read(&work.state)?;
    let wanted: Vec<String> = patches.iter().map(|p| p.digest.clone()).collect();
    if applied.complete && applied.patches == wanted {
        return Ok(false);
    }
    revert(work, &mut applied)?;
    for patch in patches {
        apply(work, &mut applied, patch)?;
    }
    applied.complete = true;
    applied.patches = wanted;
    applied.write(&work.state)?;
    Ok(true)
}

/// Back to the pristine tree: touched files restored, created ones removed.
fn revert(work: &WorkTree, applied: &mut Applied) -> Result<()> {
    for rel in &applied.touched {
        let (orig, target) = (work.orig.join(rel), work.tree.join(rel));
        if orig.is_file() {
            // A copy, not a rename: the pristine bytes stay for next time,
            // and the file gets a new mtime, so make rebuilds what uses it.
            let _ = std::fs::remove_file(&target);
            std::fs::copy(&orig, &target).with_context(|| format!("cannot restore {}", target.display()))?;
        } else if let Err(e) = std::fs::remove_file(&target) {
            anyhow::ensure!(
                e.kind() == std::io::ErrorKind::NotFound,
                "cannot remove {}: {e}",
                target.display()
            );
        }
    }
    *applied = Applied {
        touched: applied.touched.clone(),
        created: applied.created.clone(),
        ..Applied::default()
    };
    applied.write(&work.state)
}

fn apply(work: &WorkTree, applied: &mut Applied, patch: &Patch) -> Result<()> {
    let text = std::fs::read_to_string(&patch.path)
        .with_context(|| format!("--patch {}: cannot read it", patch.path.display()))?;
    let dry = run_patch(&work.tree, &patch.path, true)?;
    if !dry.status.success() {
        bail!("{}", refusal(&patch.name, &text, &dry.said));
    }
    let files = checked_files(&dry.said);
    anyhow::ensure!(
        !files.is_empty(),
        "--patch {}: patch found no file to change in it ({}): is it a unified diff?",
        patch.name,
        dry.said.trim()
    );
    for rel in &files {
        keep_pristine(work, applied, rel)?;
    }
    applied.complete = false;
    applied.write(&work.state)?;
    let real = run_patch(&work.tree, &patch.path, false)?;
    if !real.status.success() {
        bail!("{}", refusal(&patch.name, &text, &real.said));
    }
    Ok(())
}

/// Saves a file's pristine bytes before its first change (a file that does
/// not exist yet is recorded as created).
fn keep_pristine(work: &WorkTree, applied: &mut Applied, rel: &str) -> Result<()> {
    anyhow::ensure!(
        !rel.starts_with('/') && !rel.split('/').any(|c| c == ".."),
        "a patch names {rel:?}, outside the tree"
    );
    if applied.touched.iter().any(|t| t == rel) {
        return Ok(());
    }
    let (source, orig) = (work.tree.join(rel), work.orig.join(rel));
    if source.is_file() {
        std::fs::create_dir_all(orig.parent().expect("a file has a parent"))?;
        std::fs::copy(&source, &orig).with_context(|| format!("cannot keep {} (disk full?)", orig.display()))?;
    } else {
        applied.created.push(rel.to_string());
    }
    applied.touched.push(rel.to_string());
    Ok(())
}

struct PatchRun {
    status: std::process::ExitStatus,
    /// stdout and stderr, as patch printed them.
    said: String,
}

fn run_patch(tree: &Path, patch: &Path, dry_run: bool) -> Result<PatchRun> {
    let mut command = Command::new("patch");
    command
        .args(["-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-r", "-"])
        .arg("-d")
        .arg(tree)
        .arg("-i")
        .arg(std::path::absolute(patch)?);
    if dry_run {
        command.arg("--dry-run");
    }
    let out = command
        .output()
        .context("cannot run `patch`: install it (apt-get install patch)")?;
    Ok(PatchRun {
        status: out.status,
        said: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// The files GNU patch says it checks or patches, in order.
pub fn checked_files(said: &str) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    for line in said.lines() {
        let name = line
            .strip_prefix("checking file ")
            .or_else(|| line.strip_prefix("patching file "));
        if let Some(name) = name.map(|n| n.trim().trim_matches('\'').to_string()) {
            if !files.contains(&name) {
                files.push(name);
            }
        }
    }
    files
}

/// The error for a patch that does not apply: patch's own words, and the
/// text of each hunk it failed.
pub fn refusal(name: &str, patch_text: &str, said: &str) -> String {
    let mut message = format!(
        "--patch {name} does not apply to this tree (patch -p1 said):\n{}",
        indent(said.trim())
    );
    for (file, number) in failed_hunks(said) {
        if let Some(hunk) = hunk(patch_text, &file, number) {
            message.push_str(&format!("\nhunk #{number} of {file}:\n{}", indent(hunk.trim_end())));
        }
    }
    message.push_str(
        "\nrebase the patch on this source (the version is in the tree's Makefile), or give the \
         source it was made for",
    );
    message
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// (file, hunk number) of each "Hunk #N FAILED" in patch's output.
pub fn failed_hunks(said: &str) -> Vec<(String, usize)> {
    let mut file = String::new();
    let mut failed = Vec::new();
    for line in said.lines() {
        if let Some(name) = checked_files(line).pop() {
            file = name;
        } else if let Some(rest) = line.strip_prefix("Hunk #") {
            let (number, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if tail.starts_with("FAILED") {
                if let Ok(n) = number.parse() {
                    failed.push((file.clone(), n));
                }
            }
        }
    }
    failed
}

/// Hunk `number` (from 1) of `file` in a unified diff, with its `@@` line;
/// its length comes from the `@@` line's counts.
pub fn hunk(patch_text: &str, file: &str, number: usize) -> Option<String> {
    let mut lines = patch_text.lines();
    let mut seen = 0;
    let mut in_file = false;
    while let Some(line) = lines.next() {
        if let Some(target) = line.strip_prefix("+++ ") {
            let target = target.split('\t').next().unwrap_or(target).trim();
            in_file = target.split_once('/').map(|(_, rest)| rest) == Some(file);
        } else if in_file && line.starts_with("@@ ") {
            seen += 1;
            if seen == number {
                let (mut old, mut new) = hunk_counts(line)?;
                let mut out = format!("{line}\n");
                for body in lines.by_ref() {
                    if old == 0 && new == 0 && !body.starts_with('\\') {
                        break;
                    }
                    match body.chars().next() {
                        Some('-') => old = old.checked_sub(1)?,
                        Some('+') => new = new.checked_sub(1)?,
                        Some('\\') => {}
                        _ => {
                            old = old.checked_sub(1)?;
                            new = new.checked_sub(1)?;
                        }
                    }
                    out.push_str(body);
                    out.push('\n');
                }
                return Some(out);
            }
        }
    }
    None
}

/// The old and new line counts of "@@ -a[,b] +c[,d] @@".
fn hunk_counts(header: &str) -> Option<(usize, usize)> {
    let mut words = header.split_whitespace().skip(1);
    let count = |word: Option<&str>, sign: char| -> Option<usize> {
        let range = word?.strip_prefix(sign)?;
        match range.split_once(',') {
            Some((_, n)) => n.parse().ok(),
            None => Some(1),
        }
    };
    Some((count(words.next(), '-')?, count(words.next(), '+')?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_FILES: &str = "\
From: someone
Subject: [PATCH] two files

diff --git a/fs/a.c b/fs/a.c
--- a/fs/a.c
+++ b/fs/a.c
@@ -1,3 +1,3 @@
 one
-two
+TWO
 three
@@ -10,2 +10,2 @@ fn
-ten
+TEN
 eleven
diff --git a/fs/b.c b/fs/b.c
--- a/fs/b.c
+++ b/fs/b.c
@@ -1 +1 @@
-b
+B
-- 
2.39.5
";

    #[test]
    fn a_hunk_is_found_by_file_and_number() {
        assert_eq!(
            hunk(TWO_FILES, "fs/a.c", 2).unwrap(),
            "@@ -10,2 +10,2 @@ fn\n-ten\n+TEN\n eleven\n"
        );
        assert_eq!(hunk(TWO_FILES, "fs/b.c", 1).unwrap(), "@@ -1 +1 @@\n-b\n+B\n");
        assert!(hunk(TWO_FILES, "fs/a.c", 3).is_none());
        assert!(hunk(TWO_FILES, "fs/c.c", 1).is_none());
    }

    #[test]
    fn patchs_output_names_files_and_failed_hunks() {
        let said = "checking file fs/a.c\nHunk #2 FAILED at 10.\n1 out of 2 hunks FAILED\nchecking file fs/b.c\n";
        assert_eq!(checked_files(said), vec!["fs/a.c", "fs/b.c"]);
        assert_eq!(failed_hunks(said), vec![("fs/a.c".to_string(), 2)]);
        let message = refusal("fix.patch", TWO_FILES, said);
        assert!(message.contains("Hunk #2 FAILED at 10."), "{message}");
        assert!(
            message.contains("hunk #2 of fs/a.c:\n  @@ -10,2 +10,2 @@ fn\n  -ten"),
            "{message}"
        );
    }

    /// A tree of two files, its bookkeeping beside it.
    fn work_tree(dir: &Path) -> WorkTree {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("fs")).unwrap();
        std::fs::write(tree.join("fs/a.c"), "one\ntwo\nthree\n").unwrap();
        std::fs::write(tree.join("fs/b.c"), "b\n").unwrap();
        WorkTree {
            tree,
            orig: dir.join("orig"),
            state: dir.join("applied.json"),
        }
    }

    fn patch_file(dir: &Path, name: &str, text: &str) -> Patch {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Patch {
            path,
            name: name.into(),
            digest: format!("{:x}", text.len() * 31 + name.len()),
        }
    }

    const A_TWO: &str = "--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n";
    const NEW_FILE: &str = "--- /dev/null\n+++ b/fs/new.c\n@@ -0,0 +1 @@\n+new\n";
    const A_STALE: &str = "--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1,3 +1,3 @@\n one\n-zwei\n+TWO\n three\n";

    #[test]
    fn patch_sets_change_and_revert_on_the_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        let work = work_tree(dir.path());
        let read = |rel: &str| std::fs::read_to_string(work.tree.join(rel)).ok();
        let two = patch_file(dir.path(), "two.patch", A_TWO);
        let new = patch_file(dir.path(), "new.patch", NEW_FILE);

        assert!(set_patches(&work, &[two.clone(), new.clone()]).unwrap());
        assert_eq!(read("fs/a.c").unwrap(), "one\nTWO\nthree\n");
        assert_eq!(read("fs/new.c").unwrap(), "new\n");
        assert!(
            !set_patches(&work, &[two.clone(), new.clone()]).unwrap(),
            "same set: nothing to do"
        );

        assert!(set_patches(&work, std::slice::from_ref(&new)).unwrap());
        assert_eq!(read("fs/a.c").unwrap(), "one\ntwo\nthree\n", "restored");
        assert_eq!(read("fs/new.c").unwrap(), "new\n");

        assert!(set_patches(&work, &[]).unwrap());
        assert_eq!(read("fs/new.c"), None, "a created file is removed");
        assert_eq!(read("fs/b.c").unwrap(), "b\n", "untouched");
        assert_eq!(
            std::fs::read_dir(work.tree.join("fs")).unwrap().count(),
            2,
            "no .orig or .rej left behind"
        );
    }

    #[test]
    fn a_patch_that_does_not_apply_leaves_the_tree_pristine_and_quotes_the_hunk() {
        let dir = tempfile::tempdir().unwrap();
        let work = work_tree(dir.path());
        let new = patch_file(dir.path(), "new.patch", NEW_FILE);
        let stale = patch_file(dir.path(), "stale.patch", A_STALE);
        let err = set_patches(&work, &[new, stale.clone()]).unwrap_err().to_string();
        assert!(err.contains("--patch stale.patch does not apply"), "{err}");
        assert!(err.contains("Hunk #1 FAILED"), "patch's own words: {err}");
        assert!(err.contains("-zwei"), "the hunk: {err}");
        assert_eq!(
            std::fs::read_to_string(work.tree.join("fs/a.c")).unwrap(),
            "one\ntwo\nthree\n"
        );
        // The next run starts from the half-applied set and puts it right.
        assert!(set_patches(&work, &[]).unwrap());
        assert!(!work.tree.join("fs/new.c").exists());
        // A patch already applied (or reversed) is refused too, not skipped.
        let two = patch_file(dir.path(), "two.patch", A_TWO);
        set_patches(&work, std::slice::from_ref(&two)).unwrap();
        let again = Patch {
            digest: "other".into(),
            ..two.clone()
        };
        let err = set_patches(&work, &[two, again]).unwrap_err().to_string();
        assert!(err.contains("previously applied"), "{err}");
    }
}
