//! Locating the guest images (kernel + initramfs) that `cargo xtask images`
//! builds, and the disk images the controller formats itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use config::Filesystem;

/// `manifest.json` as written by the image builder.
#[derive(Clone, Debug, Deserialize)]
struct Manifest {
    kernel: String,
    initramfs: String,
    kernel_release: String,
    #[serde(default)]
    kernel_choice: String,
    #[serde(default)]
    kernel_digest: String,
    #[serde(default)]
    kernel_build: Option<KernelBuild>,
    #[serde(default)]
    modules_missing: Vec<String>,
}

/// Which kernel the guest runs, as results record it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelIdentity {
    pub release: String,
    /// blake3 of the kernel image (images built before it was recorded
    /// have none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// How it was chosen: the distro's default, an installed one, or
    /// built from source.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub choice: String,
    /// What a kernel built from source was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<KernelBuild>,
}

/// A kernel built by `cargo xtask kernel` (its `kernel.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelBuild {
    /// The digest of every input: source, patches, fragments, toolchain.
    pub build_key: String,
    pub source: NamedDigest,
    #[serde(default)]
    pub patches: Vec<NamedDigest>,
    #[serde(default)]
    pub config_base: String,
    #[serde(default)]
    pub config_fragments: Vec<NamedDigest>,
    /// Of the `.config` it was built with.
    pub config_digest: String,
    #[serde(default)]
    pub toolchain: String,
    /// The command that builds it again (or finds it in the cache).
    #[serde(default)]
    pub rebuild: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NamedDigest {
    pub name: String,
    pub digest: String,
}

impl KernelIdentity {
    /// One line for summaries and tables: the release and, for a built
    /// kernel, what it was built from.
    pub fn summary_line(&self) -> String {
        let Some(build) = &self.build else {
            return match self.digest.is_empty() {
                true => self.release.clone(),
                false => format!("{} ({})", self.release, short(&self.digest)),
            };
        };
        let name = |n: &NamedDigest| {
            let file = Path::new(&n.name)
                .file_name()
                .map_or(n.name.clone(), |f| f.to_string_lossy().to_string());
            format!("{file} {}", short(&n.digest))
        };
        let patches: Vec<String> = build.patches.iter().map(name).collect();
        format!(
            "{} built from {}, patches: {}, config {}",
            self.release,
            name(&build.source),
            if patches.is_empty() {
                "none".into()
            } else {
                patches.join(", ")
            },
            short(&build.config_digest)
        )
    }

    /// The build key's first hex digits: how a rerun names the build.
    pub fn build_key_short(&self) -> Option<String> {
        self.build
            .as_ref()
            .map(|b| short(&b.build_key).trim_start_matches("blake3:").to_string())
    }
}

/// "blake3:0123456789ab" from a full digest.
pub fn short(digest: &str) -> String {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("", digest));
    let hex = &hex[..hex.len().min(12)];
    match algorithm {
        "" => hex.to_string(),
        a => format!("{a}:{hex}"),
    }
}

#[derive(Clone, Debug)]
pub struct GuestImages {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub identity: KernelIdentity,
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
                self.identity.release
            );
        }
        Ok(())
    }
}

/// Where guest images are looked for when `--images-dir` and
/// `CRASHLAB_IMAGES_DIR` do not say, and why: the per-user cache
/// ([`user_images_dir`], which `cargo xtask images` points at the images
/// it builds) when it holds images, else `vm-images/cache` under the
/// current directory (a checkout). An installed `crashlab` run from
/// anywhere thus finds the images the last `cargo xtask images` built.
pub fn default_images_dir() -> (PathBuf, &'static str) {
    match user_images_dir() {
        Some(dir) if dir.join("manifest.json").is_file() => (dir, "the per-user cache"),
        _ => (
            PathBuf::from(CHECKOUT_IMAGES_DIR),
            "the checkout's cache, relative to the current directory",
        ),
    }
}

/// The images directory of a checkout, relative to its root.
pub const CHECKOUT_IMAGES_DIR: &str = "vm-images/cache";

/// `$XDG_CACHE_HOME/crashlab/images`, else `$HOME/.cache/crashlab/images`
/// (`None` without either variable).
pub fn user_images_dir() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("crashlab/images"))
}

pub fn locate(dir: &Path) -> Result<GuestImages> {
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!(
            "no guest images at {}: build them with `cargo xtask images` in a crashlab checkout (it also \
             links them as the per-user cache {}, found from any directory), or point --images-dir or \
             CRASHLAB_IMAGES_DIR at a built cache",
            dir.display(),
            user_images_dir().map_or("(no HOME)".to_string(), |d| d.display().to_string())
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
        identity: KernelIdentity {
            release: m.kernel_release,
            digest: m.kernel_digest,
            choice: m.kernel_choice,
            build: m.kernel_build,
        },
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

/// The guest images in `dir`, which must hold kernel build `wanted` when
/// one is named (a campaign on a kernel built from source, rerun or
/// resumed): never another kernel under the same directory name.
pub fn locate_build(dir: &Path, wanted: Option<&str>) -> Result<GuestImages> {
    let rebuild = "rebuild it with the command under kernel.build.rebuild in the campaign's campaign.json \
                   (`cargo xtask kernel ...`: the same inputs find it in the kernel cache), or point --images-dir \
                   at the images it wrote";
    let images = match (locate(dir), wanted) {
        (Ok(images), _) => images,
        (Err(e), None) => return Err(e),
        (Err(e), Some(key)) => bail!("{e:#}; the campaign ran on kernel build {key}: {rebuild}"),
    };
    let Some(key) = wanted else {
        return Ok(images);
    };
    let found = images.identity.build_key_short();
    if found.as_deref() != Some(key) {
        bail!(
            "the campaign ran on kernel build {key}, but {} holds {}: {rebuild}",
            dir.display(),
            match found {
                Some(other) => format!("kernel build {other} ({})", images.identity.summary_line()),
                None => format!("{} ({})", images.identity.release, images.identity.choice),
            }
        );
    }
    Ok(images)
}

/// Formats a fresh raw disk image on the host (mkfs works on a plain file, no
/// root and no loop device), with crashlab's fixed options
/// (`Filesystem::mkfs_command`) and then the user's `mkfs_words`.
pub fn make_filesystem(fs: Filesystem, mkfs_words: &[String], path: &Path, size_bytes: u64) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len(size_bytes)
        .with_context(|| format!("cannot size {} (disk full?)", path.display()))?;
    drop(file);
    let (tool, fixed) = fs.mkfs_command();
    let out = Command::new(tool)
        .args(fixed)
        .args(mkfs_words)
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool}: install it (`cargo xtask deps` installs every tool)"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = match said.trim() {
            "" => String::from_utf8_lossy(&out.stdout).trim().to_string(),
            s => s.to_string(),
        };
        bail!(
            "{tool} refused the options {:?} ({}): {said}. Check --mkfs-opts against `man {tool}` \
             and the mkfs tool's version (`{tool} -V`)",
            mkfs_words.join(" "),
            out.status
        );
    }
    Ok(())
}

/// The filesystem a campaign made, as its results record it: the mkfs
/// command line and what the filesystem's own tools say of the result
/// (block size, inode size, journal, features).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MadeFilesystem {
    pub mkfs_command: String,
    /// Selected fields, named as the tool names them; empty where no tool
    /// reads the filesystem's parameters (f2fs) or the tool failed.
    pub parameters: std::collections::BTreeMap<String, String>,
}

impl MadeFilesystem {
    /// Whether the filesystem was made with `feature` (ext4: as dumpe2fs
    /// lists its features).
    pub fn has_feature(&self, feature: &str) -> bool {
        self.parameters
            .get("filesystem_features")
            .is_some_and(|f| f.split_whitespace().any(|w| w == feature))
    }

    /// One line for the campaign's summary.
    pub fn summary_line(&self) -> String {
        let facts: Vec<String> = self.parameters.iter().map(|(k, v)| format!("{k} {v}")).collect();
        match facts.is_empty() {
            true => self.mkfs_command.clone(),
            false => format!("{} ({})", self.mkfs_command, facts.join(", ")),
        }
    }
}

/// Formats the disk and describes what was made.
pub fn make_and_describe(
    fs: Filesystem,
    mkfs_words: &[String],
    path: &Path,
    size_bytes: u64,
) -> Result<MadeFilesystem> {
    make_filesystem(fs, mkfs_words, path, size_bytes)?;
    let (tool, fixed) = fs.mkfs_command();
    let mut words: Vec<String> = std::iter::once(tool)
        .chain(fixed.iter().copied())
        .map(String::from)
        .collect();
    words.extend(mkfs_words.iter().cloned());
    words.push("DISK".into());
    Ok(MadeFilesystem {
        mkfs_command: config::shell_join(&words),
        parameters: describe_filesystem(fs, path),
    })
}

/// What the filesystem's own tool reports of a fresh image (best effort: a
/// missing tool leaves the map empty rather than failing the campaign).
fn describe_filesystem(fs: Filesystem, path: &Path) -> std::collections::BTreeMap<String, String> {
    let run = |tool: &str, args: &[&str]| -> Option<String> {
        let out = Command::new(tool).args(args).arg(path).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    match fs {
        Filesystem::Ext4 => run("dumpe2fs", &["-h"]).map_or_else(Default::default, |t| parse_dumpe2fs(&t)),
        Filesystem::Xfs => run("xfs_db", &["-r", "-c", "info"]).map_or_else(Default::default, |t| parse_xfs_info(&t)),
        Filesystem::Btrfs => {
            run("btrfs", &["inspect-internal", "dump-super"]).map_or_else(Default::default, |t| parse_btrfs_super(&t))
        }
        Filesystem::F2fs => Default::default(),
    }
}

fn parse_dumpe2fs(text: &str) -> std::collections::BTreeMap<String, String> {
    const KEYS: [&str; 7] = [
        "Block size",
        "Inode size",
        "Journal size",
        "Total journal size",
        "Filesystem features",
        "Block count",
        "Inode count",
    ];
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| KEYS.contains(&k.trim()))
        .map(|(k, v)| (k.trim().to_lowercase().replace(' ', "_"), v.trim().to_string()))
        .collect()
}

/// `xfs_db -c info`: sections (`meta-data=`, `data`, `log`, ...) of
/// `name=value` fields; a continuation line starts with `=`.
fn parse_xfs_info(text: &str) -> std::collections::BTreeMap<String, String> {
    const KEYS: [&str; 6] = [
        "meta-data.isize",
        "meta-data.crc",
        "meta-data.reflink",
        "data.bsize",
        "log.bsize",
        "log.blocks",
    ];
    let mut section = String::new();
    let mut found = std::collections::BTreeMap::new();
    for line in text.lines() {
        let head = line.split('=').next().unwrap_or("").trim();
        if !head.is_empty() && !line.starts_with(' ') {
            section = head.to_string();
        }
        for field in line.split_whitespace().skip(1) {
            if let Some((k, v)) = field.trim_end_matches(',').split_once('=') {
                let key = format!("{section}.{k}");
                if KEYS.contains(&key.as_str()) {
                    found.entry(key).or_insert_with(|| v.to_string());
                }
            }
        }
    }
    found
}

fn parse_btrfs_super(text: &str) -> std::collections::BTreeMap<String, String> {
    const KEYS: [&str; 3] = ["sectorsize", "nodesize", "csum_type"];
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(k, _)| KEYS.contains(&k.trim()))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
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
    fn filesystem_tools_outputs_give_their_parameters() {
        let ext4 = parse_dumpe2fs("Block count:              16384\nBlock size:               4096\nInode size:\t          256\nTotal journal size:       4096k\nMount count: 0\n");
        assert_eq!(ext4["block_size"], "4096");
        assert_eq!(ext4["inode_size"], "256");
        assert_eq!(ext4["total_journal_size"], "4096k");
        assert!(!ext4.contains_key("mount_count"));
        let xfs = parse_xfs_info(
            "meta-data=t.img                  isize=512    agcount=4, agsize=19200 blks\n         =                       crc=1        finobt=1, sparse=1, rmapbt=0\ndata     =                       bsize=4096   blocks=76800, imaxpct=25\nnaming   =version 2              bsize=4096   ascii-ci=0, ftype=1\nlog      =internal log           bsize=4096   blocks=16384, version=2\n",
        );
        assert_eq!(xfs["meta-data.isize"], "512");
        assert_eq!(xfs["meta-data.crc"], "1");
        assert_eq!(xfs["data.bsize"], "4096");
        assert_eq!(xfs["log.blocks"], "16384");
        let btrfs = parse_btrfs_super("csum_type\t\t0 (crc32c)\nsectorsize\t\t4096\nnodesize\t\t16384\n");
        assert_eq!(btrfs["nodesize"], "16384");
        assert_eq!(btrfs["csum_type"], "0 (crc32c)");
    }

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
