//! Results that survive a crash of the controller or of the machine.
//!
//! A campaign's files are written so that a kill, or a reboot, at any
//! moment leaves either the old contents or the new ones: whole files by
//! write-to-temporary, fsync, rename, fsync of the directory; result lines
//! by appending and `fdatasync` (a torn last line is what a reader drops,
//! `campaign::read_jsonl`); a trial's evidence synced before its line says
//! the trial finished.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Replaces `path` with `bytes` so that a crash leaves the old file or the
/// new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let written = (|| -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot write {} (a full or read-only disk?)", path.display()))
}

/// Makes a directory's entries (files created, renamed, removed) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Entries visited by `sync_tree`, at most: a trial's directory holds a
/// handful of files; this bounds a walk into something unexpected.
const SYNC_TREE_ENTRIES_MAX: usize = 10_000;

/// Makes every file under `dir` (and the directories themselves) durable.
pub fn sync_tree(dir: &Path) -> Result<()> {
    let mut pending = vec![dir.to_path_buf()];
    let mut visited = 0usize;
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            visited += 1;
            anyhow::ensure!(
                visited <= SYNC_TREE_ENTRIES_MAX,
                "{} holds more than {SYNC_TREE_ENTRIES_MAX} entries",
                dir.display()
            );
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                File::open(entry.path())
                    .and_then(|f| f.sync_data())
                    .with_context(|| format!("cannot sync {}", entry.path().display()))?;
            }
        }
        sync_dir(&d).with_context(|| format!("cannot sync {}", d.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("campaign.json");
        write_atomically(&path, b"old\n").unwrap();
        write_atomically(&path, b"new\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["campaign.json"]);
    }

    #[test]
    fn a_failed_atomic_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trials.jsonl");
        write_atomically(&path, b"kept\n").unwrap();
        // The temporary's name taken by a directory: the write fails.
        std::fs::create_dir(dir.path().join(".trials.jsonl.tmp")).unwrap();
        let err = format!("{:#}", write_atomically(&path, b"lost\n").unwrap_err());
        assert!(err.contains("cannot write"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"kept\n");
    }

    #[test]
    fn sync_tree_visits_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        sync_tree(dir.path()).unwrap();
        assert!(sync_tree(&dir.path().join("missing")).is_err());
    }
}
