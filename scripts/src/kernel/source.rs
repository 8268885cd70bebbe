//! The kernel source a build starts from: a tarball (Debian's
//! linux-source-*, kernel.org's) or a tree (a git checkout, an unpacked
//! tarball). Its digest keys the cache; it is copied once into the cache's
//! working tree, never changed where the user keeps it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

#[derive(Clone, Debug)]
pub enum Source {
    Tarball(PathBuf),
    Tree(PathBuf),
}

impl Source {
    pub fn of(path: &Path) -> Result<Source> {
        let path = std::path::absolute(path)?;
        if path.is_dir() {
            is_kernel_tree(&path)?;
            Ok(Source::Tree(path))
        } else if path.is_file() {
            Ok(Source::Tarball(path))
        } else {
            bail!(
                "--source {}: no such file or directory (give a kernel tree or a tarball of one, \
                 e.g. /usr/src/linux-source-6.12.tar.xz from `apt-get install linux-source-6.12`)",
                path.display()
            )
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Source::Tarball(p) | Source::Tree(p) => p,
        }
    }

    /// blake3 of the tarball's bytes, or of the tree's files (relative
    /// path, mode and bytes of each, in path order; `.git` left out).
    pub fn digest(&self) -> Result<String> {
        match self {
            Source::Tarball(path) => file_digest(path),
            Source::Tree(path) => tree_digest(path),
        }
    }

    /// Copies the source into `dest` (absent), unpacked.
    pub fn copy_to(&self, dest: &Path) -> Result<()> {
        let staging = dest.with_extension("unpacking");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        let status = match self {
            Source::Tarball(path) => Command::new("tar")
                .arg("-xf")
                .arg(path)
                .arg("-C")
                .arg(&staging)
                .status(),
            Source::Tree(path) => Command::new("sh")
                .arg("-c")
                .arg("tar -C \"$1\" --exclude=./.git -cf - . | tar -C \"$2\" -xf -")
                .arg("copy")
                .arg(path)
                .arg(&staging)
                .status(),
        }
        .context("cannot run tar: install it")?;
        anyhow::ensure!(
            status.success(),
            "cannot unpack {} into {} ({status}): is it a tarball, and is there room?",
            self.path().display(),
            staging.display()
        );
        // A tarball holds one top directory (linux-source-6.12/, linux-6.12.1/).
        let root = single_top_dir(&staging)?.unwrap_or(staging.clone());
        is_kernel_tree(&root).with_context(|| format!("--source {}", self.path().display()))?;
        std::fs::rename(&root, dest)?;
        let _ = std::fs::remove_dir_all(&staging);
        Ok(())
    }
}

fn single_top_dir(dir: &Path) -> Result<Option<PathBuf>> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    Ok(match entries.as_slice() {
        [one] if one.is_dir() => Some(one.clone()),
        _ => None,
    })
}

/// A Linux source tree has a top Makefile with VERSION and PATCHLEVEL, a
/// Kconfig, and the x86 architecture.
pub fn is_kernel_tree(dir: &Path) -> Result<()> {
    let makefile = std::fs::read_to_string(dir.join("Makefile")).unwrap_or_default();
    let has = |key: &str| makefile.lines().any(|l| l.starts_with(key) && l.contains('='));
    let looks_like = has("VERSION") && has("PATCHLEVEL") && dir.join("Kconfig").is_file();
    if !looks_like {
        bail!(
            "{} is not a Linux source tree (no top Makefile with VERSION and PATCHLEVEL, or no Kconfig): \
             give the top directory of a kernel tree, or a tarball of one",
            dir.display()
        );
    }
    anyhow::ensure!(
        dir.join("arch/x86/Kconfig").is_file(),
        "{} has no arch/x86: crashlab's guests are x86-64",
        dir.display()
    );
    Ok(())
}

/// "6.12.118" from a tree's top Makefile.
pub fn version(tree: &Path) -> String {
    let makefile = std::fs::read_to_string(tree.join("Makefile")).unwrap_or_default();
    let get = |key: &str| {
        makefile
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim_start()
                    .strip_prefix('=')
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let mut version = format!("{}.{}", get("VERSION"), get("PATCHLEVEL"));
    match get("SUBLEVEL").as_str() {
        "" | "0" => {}
        sub => version.push_str(&format!(".{sub}")),
    }
    version + &get("EXTRAVERSION")
}

pub fn file_digest(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hasher.finalize().to_hex().to_string())
}

pub fn bytes_digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Every file's relative path, mode (executable or not, symlink target)
/// and bytes, in path order.
fn tree_digest(root: &Path) -> Result<String> {
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    files.sort();
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    for rel in files {
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path)?;
        hasher.update(rel.as_bytes());
        hasher.update(&[0]);
        if meta.file_type().is_symlink() {
            hasher.update(b"link ");
            hasher.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else {
            let executable = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0;
            hasher.update(if executable { b"exec " } else { b"file " });
            hasher.update(&meta.len().to_le_bytes());
            let mut file = std::fs::File::open(&path)?;
            loop {
                let n = file.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
            }
        }
        hasher.update(&[0]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if dir == root && entry.file_name() == ".git" {
                continue;
            }
            walk(root, &path, files)?;
        } else {
            let rel = path.strip_prefix(root).expect("under the root");
            files.push(rel.to_str().context("a file name that is not UTF-8")?.to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_tree(dir: &Path) {
        std::fs::create_dir_all(dir.join("arch/x86")).unwrap();
        std::fs::write(
            dir.join("Makefile"),
            "VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 3\nEXTRAVERSION = -rc1\n",
        )
        .unwrap();
        std::fs::write(dir.join("Kconfig"), "").unwrap();
        std::fs::write(dir.join("arch/x86/Kconfig"), "").unwrap();
    }

    #[test]
    fn a_tree_is_known_by_its_makefile_and_kconfig() {
        let dir = tempfile::tempdir().unwrap();
        let err = is_kernel_tree(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not a Linux source tree"), "{err}");
        tiny_tree(dir.path());
        is_kernel_tree(dir.path()).unwrap();
        assert_eq!(version(dir.path()), "6.12.3-rc1");
        std::fs::remove_file(dir.path().join("arch/x86/Kconfig")).unwrap();
        assert!(is_kernel_tree(dir.path()).unwrap_err().to_string().contains("x86-64"));
    }

    #[test]
    fn a_trees_digest_follows_its_bytes_names_and_modes_but_not_git() {
        let dir = tempfile::tempdir().unwrap();
        tiny_tree(dir.path());
        let source = Source::of(dir.path()).unwrap();
        let first = source.digest().unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "x").unwrap();
        assert_eq!(source.digest().unwrap(), first, ".git is not the source");
        std::fs::write(dir.path().join("Kconfig"), "# one byte more").unwrap();
        let edited = source.digest().unwrap();
        assert_ne!(edited, first);
        let kconfig = dir.path().join("Kconfig");
        std::fs::set_permissions(&kconfig, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert_ne!(source.digest().unwrap(), edited, "the mode counts");
    }

    #[test]
    fn a_tarball_unpacks_to_its_one_top_directory_and_must_hold_a_kernel() {
        let dir = tempfile::tempdir().unwrap();
        tiny_tree(&dir.path().join("linux-9.9"));
        let tarball = dir.path().join("linux-9.9.tar.xz");
        let ok = Command::new("tar")
            .arg("-cJf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir.path())
            .arg("linux-9.9")
            .status()
            .unwrap();
        assert!(ok.success());
        let dest = dir.path().join("copy");
        Source::of(&tarball).unwrap().copy_to(&dest).unwrap();
        assert_eq!(version(&dest), "6.12.3-rc1");

        let not_kernel = dir.path().join("docs.tar");
        std::fs::create_dir_all(dir.path().join("docs")).unwrap();
        std::fs::write(dir.path().join("docs/README"), "hello").unwrap();
        Command::new("tar")
            .arg("-cf")
            .arg(&not_kernel)
            .arg("-C")
            .arg(dir.path())
            .arg("docs")
            .status()
            .unwrap();
        let err = format!(
            "{:#}",
            Source::of(&not_kernel)
                .unwrap()
                .copy_to(&dir.path().join("c2"))
                .unwrap_err()
        );
        assert!(err.contains("is not a Linux source tree"), "{err}");
        let err = format!("{:#}", Source::of(&dir.path().join("nothing")).unwrap_err());
        assert!(err.contains("no such file or directory"), "{err}");
    }
}
