//! Locating the guest images (kernel + initramfs) that `cargo xtask images`
//! builds, and the disk images the controller formats itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::config::Filesystem;

/// `manifest.json` as written by the image builder.
#[derive(Clone, Debug, Deserialize)]
struct Manifest {
    kernel: String,
    initramfs: String,
    kernel_release: String,
    #[serde(default)]
    modules_missing: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct GuestImages {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_release: String,
    /// Modules crashlab wants that the kernel lacks, each as
    /// "name (CONFIG_OPTION)".
    pub modules_missing: Vec<String>,
}

impl GuestImages {
    /// Refuses a filesystem the guest kernel lacks, naming the option that
    /// adds it, before any VM starts.
    pub fn check_supports(&self, fs: Filesystem) -> Result<()> {
        let name = fs.name();
        if let Some(missing) = self.modules_missing.iter().find(|m| m.split(' ').next() == Some(name)) {
            bail!(
                "the guest kernel {} has no {missing}: build the kernel with it (=y, or =m and \
                 `cargo xtask images --kernel PATH --modules DIR` again), or test another filesystem",
                self.kernel_release
            );
        }
        Ok(())
    }
}

pub fn locate(dir: &Path) -> Result<GuestImages> {
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!(
            "no guest images at {}: build them with `cargo xtask images` (or point --images-dir at a built cache)",
            dir.display()
        )
    })?;
    let m: Manifest = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is corrupt: rebuild it with `cargo xtask images`",
            manifest_path.display()
        )
    })?;
    let images = GuestImages {
        kernel: dir.join(&m.kernel),
        initramfs: dir.join(&m.initramfs),
        kernel_release: m.kernel_release,
        modules_missing: m.modules_missing,
    };
    for p in [&images.kernel, &images.initramfs] {
        if !p.is_file() {
            bail!(
                "{} is missing: rebuild the guest images with `cargo xtask images`",
                p.display()
            );
        }
    }
    Ok(images)
}

/// Formats a fresh raw disk image on the host (mkfs works on a plain file, no
/// root and no loop device). Lazy initialisation is off so that no background
/// metadata writes run during the workload.
pub fn make_filesystem(fs: Filesystem, path: &Path, size_bytes: u64) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len(size_bytes)
        .with_context(|| format!("cannot size {} (disk full?)", path.display()))?;
    drop(file);
    let (tool, args): (&str, &[&str]) = match fs {
        Filesystem::Ext4 => (
            "mkfs.ext4",
            &["-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
        ),
        Filesystem::Xfs => ("mkfs.xfs", &["-f", "-q"]),
        Filesystem::Btrfs => ("mkfs.btrfs", &["-f", "-q"]),
        Filesystem::F2fs => ("mkfs.f2fs", &["-f", "-q"]),
    };
    let out = Command::new(tool)
        .args(args)
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool}: install it (`cargo xtask deps` installs every tool)"))?;
    if !out.status.success() {
        bail!(
            "{tool} failed on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Copies a disk image, leaving holes where the source has zeros, so that a
/// 64 MiB image with a few MiB of data costs a few MiB per trial.
pub fn copy_sparse(from: &Path, to: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    const CHUNK_BYTES: usize = 64 * 1024;
    let mut src = std::fs::File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let len = src.metadata()?.len();
    let mut dst = std::fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(CHUNK_BYTES as u64) as usize;
        src.read_exact(&mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(offset))?;
            dst.write_all(&buf[..n])
                .with_context(|| format!("cannot write {} (disk full?)", to.display()))?;
        }
        offset += n as u64;
    }
    dst.set_len(len)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let mut data = vec![0u8; 300 * 1024];
        data[70_000] = 7;
        data[299 * 1024] = 9;
        std::fs::write(&a, &data).unwrap();
        let b = dir.path().join("b");
        copy_sparse(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), data);
    }

    #[test]
    fn missing_images_name_the_fix() {
        let err = locate(Path::new("/nonexistent")).unwrap_err().to_string();
        assert!(err.contains("cargo xtask images"), "{err}");
    }
}
